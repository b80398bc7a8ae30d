"""Train a GPT-2 (SP or µP) with the config in conf/: `python src/train.py [overrides]`, `-m` for sweeps."""

import logging
import math
import sys
from pathlib import Path

from mugpt.runtime import reexec_with_heap_reuse

if __name__ == "__main__":
    reexec_with_heap_reuse()  # before torch is imported: the restart then costs milliseconds

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from mugpt.config import register_configs  # noqa: E402
from mugpt.errors import ConfigError, OneLineError  # noqa: E402
from mugpt.studies.sweep import check_launch  # noqa: E402
from mugpt.training.checkpointing import after_interruption  # noqa: E402
from mugpt.training.run import remove_refused_launch  # noqa: E402
from mugpt.training.train import train  # noqa: E402

log = logging.getLogger("mugpt")

# Hydra parses `precision=32` as an integer, which cannot name a config option; accept Lightning's short
# names on the command line and map them to the option files (conf/precision/32-true.yaml, ...).
PRECISION_ALIASES = {"32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed"}


def normalise_precision_override(arg: str) -> str:
    key, sep, value = arg.partition("=")
    if key.lstrip("+~") != "precision" or not sep:
        return arg
    return key + "=" + ",".join(PRECISION_ALIASES.get(v, v) for v in value.split(","))


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    register_configs()  # again here: a launcher (submitit, Ray) can run this function in a process of its own
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        summary = train(cfg)
    except KeyboardInterrupt as exc:
        # Ctrl-C before training started, or a second Ctrl-C: recorded as interrupted; a sweep stops here too
        print(f"interrupted: {exc}" if str(exc) else "interrupted (Ctrl-C)", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as exc:
        # A refused option or path, a checkpoint that could not be written: its one-line message, no traceback.
        # In a sweep a failed job is recorded (summary.json says failed) and the others go on.
        if isinstance(exc, OneLineError):
            if multirun:
                log.error("job %s, the sweep goes on: %s", "refused" if isinstance(exc, ConfigError) else "failed",
                          exc)
                return None
            if isinstance(exc, ConfigError):
                remove_refused_launch(Path(HydraConfig.get().runtime.output_dir))
            sys.exit(f"error: {exc}")
        if multirun:
            log.exception("job failed; the sweep goes on")
            return None
        raise
    if summary["status"] == "interrupted":
        after_interruption(summary, multirun, HydraConfig.get().job.num if multirun else None)
    # The objective for Hydra sweepers such as Optuna. A diverged run ranks last (its val_loss is NaN, or was
    # measured on diverging weights); a missing or non-finite loss is no result (Optuna records a failed trial).
    if summary["status"] == "diverged":
        return float("inf")
    val_loss = summary["val_loss"]
    return val_loss if val_loss is not None and math.isfinite(val_loss) else None


if __name__ == "__main__":
    sys.argv = [normalise_precision_override(a) for a in sys.argv]
    register_configs()  # before Hydra composes: the schemas conf/optim/, conf/data/ start from; ${pow2:...}
    try:
        # every job of the launch composed and checked (a misspelt key, a refused option) before Hydra makes a
        # folder: a refused launch leaves outputs/ as it was, and a sweep with a bad job does not start
        check_launch(sys.argv[1:])
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    main()
