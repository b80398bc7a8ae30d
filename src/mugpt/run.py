"""The run context: what a training run needs around the training itself.

- `task_wrapper`: the bookkeeping of one run. Whatever happens inside, summary.json records the status, the
  error and its traceback, and the wall time (on rank 0), and W&B is finished; refused input leaves as a
  ConfigError.
- Hydra introspection (`hydra_overrides_and_root`, `run_name`, `sweep_group`): what resume=auto and the W&B run
  name and group are read from, when Hydra is running.
- Loggers (`logger_configs`, `check_loggers`, `build_logger`, `wandb_run_id`), `.env` (`load_env`), and
  `publish_to_wandb` for the scripts that log figures.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import string
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mugpt.errors import INPUT_ERRORS, ConfigError, as_config_error

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
REFUSED_SUMMARY_FILE = "summary.refused.json"  # a relaunch refused before training, beside the run's own summary


def check_writable_dir(path: str | Path, option: str) -> None:
    """Refuse a folder the run cannot create or write into, in one line naming the option, before any work."""
    path = Path(path).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{option}={path}: cannot create it, {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{option}={path}: cannot write into {existing} (permission denied or read-only)")


def load_env() -> None:
    """Load .env if present and keep W&B offline and silent when there is no API key."""
    try:
        from dotenv import load_dotenv

        load_dotenv(override=False)
    except ImportError:
        pass
    if not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
        os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")


def publish_to_wandb(job_type: str, out_dir: Path, images: list[Path], tables: list[Path],
                     config: dict | None = None) -> Path:
    """Log a script's result (the coordinate check, the µTransfer report) to W&B as one run of `job_type`: each
    PNG as an image and each CSV as a table, so the figures sit beside the training runs in the dashboard.
    Offline without an API key, like the training runs. Returns the W&B run's local directory."""
    import csv

    load_env()
    import wandb

    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "mugpt"), entity=os.environ.get("WANDB_ENTITY"),
                     job_type=job_type, name=f"{job_type}-{out_dir.resolve().name}", dir=str(out_dir),
                     config=config or {}, reinit="finish_previous")
    payload: dict[str, Any] = {path.stem: wandb.Image(str(path)) for path in images}
    for path in tables:
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
        payload[path.stem] = wandb.Table(columns=rows[0], data=rows[1:])
    run.log(payload)
    local = Path(run.dir).parent
    run.finish()
    return local


# ---- Hydra introspection


def hydra_overrides_and_root(output_dir: Path) -> tuple[list[str] | None, Path | None]:
    """This job's command-line overrides and the folder its siblings live in (outputs/ or multirun/), when
    Hydra is running: what resume=auto needs to find an earlier run of the same command."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except ValueError:
        return None, None
    try:
        top = Path.cwd() / output_dir.resolve().relative_to(Path.cwd()).parts[0]
    except (ValueError, IndexError):
        top = output_dir.parent
    return list(hc.overrides.task), top


def run_name(cfg: DictConfig) -> str | None:
    """Name a run from its command-line overrides (Hydra's override_dirname), when Hydra is running."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except ValueError:
        return None
    return hc.job.override_dirname or hc.job.name


def sweep_group() -> str | None:
    """Group runs of one multirun together: the sweep directory names the group."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ValueError, ImportError):
        return None
    if hc.mode != RunMode.MULTIRUN:
        return None
    return Path(hc.sweep.dir).name


# ---- loggers


def wandb_run_id(output_dir: Path) -> str:
    """One W&B run id per run directory, kept in a file so that a resumed run logs into the same W&B run."""
    path = output_dir / "wandb_run_id"
    if path.is_file():
        return path.read_text().strip()
    # W&B ids are short lowercase alphanumerics; its own generator moved between releases, so make one here.
    alphabet = string.ascii_lowercase + string.digits
    run_id = "".join(secrets.choice(alphabet) for _ in range(8))
    path.write_text(run_id)
    return run_id


def logger_configs(cfg: DictConfig) -> dict[str, DictConfig]:
    """The selected loggers by name: `logger=csv` gives one, `logger=[wandb,tensorboard]` two, `logger=none` none
    (each conf/logger/*.yaml is packaged under logger.<name>, so a list of them composes without collisions)."""
    return {name: c for name, c in (cfg.get("logger") or {}).items()
            if isinstance(c, DictConfig) and c.get("_target_")}


def check_loggers(cfg: DictConfig) -> None:
    """Fail fast on a logger whose package is missing, before any data is read."""
    import importlib.util

    for name, c in logger_configs(cfg).items():
        if c._target_.endswith("TensorBoardLogger") and not any(
                importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
            raise ConfigError(f"logger={name}: needs the tensorboard package (pip install -e '.[tb]')")


def build_logger(cfg: DictConfig, output_dir: Path) -> list:
    """Lightning loggers for this run, all writing into its output directory (empty when there are none)."""
    loggers = []
    for c in logger_configs(cfg).values():
        kwargs: dict[str, Any] = {}
        if c._target_.endswith("WandbLogger"):
            kwargs = {"save_dir": str(output_dir), "name": run_name(cfg), "group": sweep_group(),
                      "config": OmegaConf.to_container(cfg, resolve=True), "id": wandb_run_id(output_dir),
                      "resume": "allow"}
        elif c._target_.endswith(("CSVLogger", "TensorBoardLogger")):
            kwargs = {"save_dir": str(output_dir)}
        # through a partial: WandbLogger's `config` keyword would collide with instantiate's own `config`
        loggers.append(instantiate(c, _partial_=True)(**kwargs))
    return loggers


def finish_wandb(loggers: list) -> None:
    """Close this run's W&B run: each multirun job must end its own, or the next job logs into it."""
    if any(type(one).__name__ == "WandbLogger" for one in loggers):
        import wandb

        wandb.finish()


# ---- summary.json and the run's bookkeeping


def write_summary(output_dir: Path, summary: dict, name: str = SUMMARY_FILE) -> None:
    path = output_dir / name
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    os.replace(tmp, path)


def _trained_summary(path: Path) -> bool:
    """Does `path` hold a summary worth keeping (any but that of a launch refused before training)?"""
    try:
        return not json.loads(path.read_text()).get("refused", False)
    except (OSError, ValueError):
        return False


@dataclass
class Run:
    """What a task and its wrapper share: where the run's files go (resume can move it), the summary being
    filled in, whether this process writes files (global rank 0), the loggers to close, and whether training
    has started (before that, a ValueError is refused input)."""

    output_dir: Path
    summary: dict[str, Any]
    is_main: bool = True
    loggers: list = field(default_factory=list)
    training: bool = False

    def move_to(self, output_dir: Path) -> None:
        self.output_dir = output_dir
        self.summary["output_dir"] = str(output_dir)


def task_wrapper(describe: Callable[[DictConfig], dict]) -> Callable:
    """Decorate `task(cfg, run)` into `task(cfg) -> summary`: the summary starts as status `failed` with
    describe(cfg)'s keys; on any exception it gets `error` and `traceback`, and a ValueError, FileNotFoundError
    or ImportError raised before training started leaves as a ConfigError. In every case it gets
    `wall_seconds`, is written to OUTPUT/summary.json on rank 0, and W&B is finished."""

    def decorate(task: Callable[[DictConfig, Run], None]) -> Callable[[DictConfig], dict]:
        @functools.wraps(task)
        def wrapped(cfg: DictConfig) -> dict:
            from lightning.pytorch.utilities.rank_zero import rank_zero_only

            load_env()
            output_dir = Path(cfg.output_dir)
            check_writable_dir(output_dir, "output_dir")  # no summary can be written: refused, one line
            output_dir.mkdir(parents=True, exist_ok=True)
            # Under DDP/FSDP every rank runs the task; the launcher's environment names rank 0 until the
            # task's Trainer knows better (it sets run.is_main).
            run = Run(output_dir, {"status": "failed", **describe(cfg), "output_dir": str(output_dir)},
                      is_main=rank_zero_only.rank == 0)
            started = time.time()
            try:
                task(cfg, run)
                return run.summary
            except BaseException as exc:
                run.summary["error"] = f"{type(exc).__name__}: {exc}"
                run.summary["traceback"] = traceback.format_exc()
                if not run.training and isinstance(exc, INPUT_ERRORS):
                    run.summary["refused"] = True
                    if not isinstance(exc, ConfigError):
                        raise as_config_error(exc) from exc
                raise
            finally:
                run.summary["wall_seconds"] = round(time.time() - started, 2)
                # A run that never trained leaves its summary where it was launched: a refused resume must not
                # overwrite the summary of the run it meant to continue.
                where, name = (run.output_dir if run.training else output_dir), SUMMARY_FILE
                if not run.training and _trained_summary(where / SUMMARY_FILE):
                    name = REFUSED_SUMMARY_FILE  # the same directory relaunched and refused: keep what it had
                if run.is_main:
                    write_summary(where, {**run.summary, "output_dir": str(where)}, name)
                finish_wandb(run.loggers)

        return wrapped

    return decorate
