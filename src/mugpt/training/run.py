"""The run context: what a training run needs around the training itself.

`task_wrapper` is the bookkeeping of one run. Whatever happens inside, summary.json records the status, the error
and its traceback, and the wall time (on rank 0), and W&B is finished; refused input leaves as a ConfigError.
A launch refused before any work leaves no folder behind (`remove_refused_launch`). The loggers and the run's
names in the dashboard: `mugpt.training.loggers`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mugpt.errors import INPUT_ERRORS, ConfigError, RunInterrupted, as_config_error
from mugpt.rundir import HYDRA_DIR, REFUSED_SUMMARY_FILE, SUMMARY_FILE, last_checkpoint, write_summary
from mugpt.training.loggers import finish_wandb, load_env

log = logging.getLogger(__name__)


def check_writable_dir(path: str | Path, option: str) -> None:
    """Refuse a folder the run cannot create or write into, in one line naming the option, before any work."""
    path = Path(path).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{option}={path}: cannot create it, {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{option}={path}: cannot write into {existing} (permission denied or read-only)")


# ---- summary.json and the run's bookkeeping


def _trained_summary(path: Path) -> bool:
    """Does `path` hold a summary worth keeping (any but that of a launch refused before training)?"""
    try:
        return not json.loads(path.read_text()).get("refused", False)
    except (OSError, ValueError):
        return False


# What Hydra writes into a run directory before the task runs (its config, src/train.py's log), and what a refused
# task adds: a launch refused before any work leaves nothing else there, so its folder can go.
LAUNCH_ONLY = {HYDRA_DIR, "train.log", SUMMARY_FILE, REFUSED_SUMMARY_FILE}


def remove_refused_launch(run_dir: Path) -> None:
    """Remove the run directory of a launch refused before any work, when it holds nothing but what the launch
    itself wrote (an explicit hydra.run.dir with an earlier run's files in it is left as it is), and the empty
    folders above it that the launch made, up to the current folder."""
    if not run_dir.is_dir() or any(p.name not in LAUNCH_ONLY for p in run_dir.iterdir()):
        return
    if (run_dir / SUMMARY_FILE).is_file() and _trained_summary(run_dir / SUMMARY_FILE):
        return
    logging.shutdown()  # Hydra's file handler holds train.log open
    shutil.rmtree(run_dir, ignore_errors=True)
    cwd = Path.cwd().resolve()
    for parent in run_dir.resolve().parents:  # outputs/DATE/ and outputs/ when this launch made them
        if parent == cwd or cwd not in parent.parents or any(parent.iterdir()):
            break
        parent.rmdir()


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


def _ctrl_c(exc: BaseException) -> bool:
    """A KeyboardInterrupt, or the SystemExit Lightning raises after catching one."""
    return isinstance(exc, KeyboardInterrupt) or (
        isinstance(exc, SystemExit) and isinstance(exc.__context__, KeyboardInterrupt))


def _stopped_at_once(run: Run) -> str:
    if not run.training:
        return "interrupted (Ctrl-C) before training started; nothing to resume"
    kept = last_checkpoint(run.output_dir)
    return (f"stopped at once (Ctrl-C); the last checkpoint, {kept}, continues with resume=auto" if kept.is_file()
            else "stopped at once (Ctrl-C) before any checkpoint was saved")


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
                if _ctrl_c(exc):  # Lightning turns a KeyboardInterrupt inside fit into sys.exit(1)
                    run.summary["status"] = "interrupted"
                    run.summary["signal"] = "SIGINT"
                    raise RunInterrupted(_stopped_at_once(run)) from exc
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
                finish_wandb(run.loggers, run.summary)

        return wrapped

    return decorate
