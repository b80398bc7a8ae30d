"""µTransfer in one command: `python scripts/mutransfer.py [overrides]` (config: conf/mutransfer.yaml).

Sweeps the donor over `search` under each parametrization, trains the target (wider, deeper, longer or with
another batch: target_width, target_depth, target_steps, target_batch_size) with the donor's best
hyperparameters, optionally tunes the target itself over `target_search` for the regret, prints the comparison
and writes transfer.json plus the µTransfer report (mutransfer.csv, mutransfer.png, mutransfer_transfer.png) of
all runs into the output directory.
Examples: python scripts/mutransfer.py donor_width=64 target_width=256 "search.lr_log2=[-10,-8,-6]"
          python scripts/mutransfer.py target_width=null target_depth=8 "seeds=[0,1,2]" \
              "overrides=['++parametrization.depth_alpha=1']" "+target_search.lr_log2=[-9,-8,-7,-6,-5]"
(overrides: each one quoted, since `=` cannot stand bare in a Hydra list; `++` as SP's config has no depth_alpha)
"""

import logging
import sys
from pathlib import Path

from mugpt.runtime import reexec_with_heap_reuse

if __name__ == "__main__":
    reexec_with_heap_reuse()

import hydra  # noqa: E402
from hydra import compose  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from mugpt.config import register_configs  # noqa: E402
from mugpt.mutransfer import (  # noqa: E402
    chosen_settings,
    format_pipeline,
    report,
    report_axis,
    run_pipeline,
    transfer_text,
)
from mugpt.training import check_config, train  # noqa: E402

log = logging.getLogger("mugpt")


def train_one(overrides: list[str], output_dir: Path) -> dict:
    """One training run, composed exactly as `python src/train.py OVERRIDES` would compose it."""
    cfg = compose(config_name="config", overrides=[*overrides, f"output_dir={output_dir}"])
    log.info("run: %s", " ".join(overrides))
    try:
        return train(cfg)
    except Exception as exc:  # recorded as failed in its summary.json; the pipeline goes on
        log.error("run failed: %s", exc)
        return {"status": "failed", "val_loss": float("nan")}


def check_one(overrides: list[str]) -> None:
    """Refuse a run's config before anything trains; the error names the run and the option."""
    try:
        check_config(compose(config_name="config", overrides=[*overrides, "output_dir=unused"]))
    except Exception as exc:
        raise ValueError(f"run `{' '.join(overrides)}` cannot start: {exc}") from exc


def compose_one(overrides: list[str]):
    """The training config of `overrides` (the donor's depth, steps or batch are read from it), inside this app."""
    try:
        return compose(config_name="config", overrides=[*overrides, "output_dir=unused"])
    except Exception as exc:
        raise ValueError(f"`{' '.join(overrides)}` cannot be composed: {exc}") from exc


@hydra.main(version_base="1.3", config_path="../conf", config_name="mutransfer")
def main(cfg: DictConfig) -> None:
    try:
        result = run_pipeline(cfg, train_one, check=check_one, compose=compose_one)
    except ValueError as exc:  # a refused option or run, before any training (train_one records its own failures)
        sys.exit(f"error: {exc}")
    out = Path(cfg.output_dir)
    # the figure: each parametrization's runs at the non-lr settings its donor chose; the CSV keeps all runs
    keys, chosen = chosen_settings(result)
    # the report's axis is the first on which the target differs (width, depth, steps, batch)
    written = report(out, out, title=f"µTransfer: {transfer_text(result)}", keys=keys, select=chosen,
                     axis=report_axis(result))
    print("\n" + format_pipeline(result))
    print(f"\nwrote {out / 'transfer.json'}, " + ", ".join(str(f) for f in written["files"]))


if __name__ == "__main__":
    register_configs()  # the typed schemas conf/optim/ and conf/data/ start from
    sys.exit(main())
