"""The one way the studies run a grid of trainings: `run_grid(jobs, launcher=None|"ray", ...)`.

Single runs train in turn here or side by side as Ray tasks (`ray_run_many`, with the shares and cluster address
of conf/hydra/launcher/ray.yaml); whole Hydra multiruns (`multirun=True`) run as `src/train.py -m` processes,
several at once, each optionally followed by the next stage it decides (`then`). Its partial
`lambda jobs: run_grid(jobs, "ray", launcher_overrides=...)` is a µTransfer pipeline's `run_many`.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from mugpt.rundir import SUMMARY_FILE
from mugpt.studies.sweep import sweep_jobs


# ------------------------------------------------------------------------------ a batch of runs on Ray
def train_job(overrides: Sequence[str], output_dir: str | Path) -> dict[str, Any]:
    """One training run as `python src/train.py OVERRIDES` composes it, into output_dir; a failure is a summary
    (the batch goes on), as in a sweep."""
    from mugpt.config import compose_training_config
    from mugpt.errors import one_line
    from mugpt.training.train import train

    try:
        return dict(train(compose_training_config([*overrides, f"output_dir={output_dir}"])))
    except Exception as exc:  # noqa: BLE001 - recorded in the run's summary.json too
        return {"status": "failed", "val_loss": math.nan, "error": one_line(exc)}


def ray_launcher_settings(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """conf/hydra/launcher/ray.yaml's `ray` section ({"init": ..., "remote": ...}) with overrides written as on a
    sweep's command line (`hydra.launcher.ray.remote.num_gpus=0.25`)."""
    from omegaconf import OmegaConf

    from mugpt.config import CONF_DIR
    from mugpt.errors import ConfigError

    settings = OmegaConf.load(CONF_DIR / "hydra" / "launcher" / "ray.yaml")
    for override in overrides:
        key, sep, value = override.partition("=")
        key = key.lstrip("+").removeprefix("hydra.launcher.")
        if not sep or not key.startswith(("ray.init.", "ray.remote.")):
            raise ConfigError(f"launcher_overrides: {override}: give hydra.launcher.ray.init.KEY=VALUE or "
                              f"hydra.launcher.ray.remote.KEY=VALUE")
        OmegaConf.update(settings, key, yaml.safe_load(value), force_add=True)
    return OmegaConf.to_container(settings.ray, resolve=True)


def ray_run_many(overrides: Sequence[str] = ()):
    """A `run_many(jobs) -> summaries` that trains each batch of (overrides, output_dir) jobs side by side as Ray
    tasks, each with the share ray.remote gives it, on a Ray started for it or the cluster ray.init.address names;
    the summaries come back in the jobs' order."""
    settings = ray_launcher_settings(overrides)

    def run_many(jobs: Sequence[tuple[list[str], Path]]) -> list[dict[str, Any]]:
        import ray

        if not ray.is_initialized():
            ray.init(**{k: v for k, v in settings["init"].items() if v is not None})
        task = ray.remote(**{k: v for k, v in settings["remote"].items() if v is not None})(train_job)
        return ray.get([task.remote(list(o), str(folder)) for o, folder in jobs])

    return run_many


# ------------------------------------------------------------------------------------------- a grid of runs
ROOT = Path(__file__).resolve().parents[3]
Job = tuple[Sequence[str], Path]  # (training overrides, output folder: output_dir, or hydra.sweep.dir with multirun)


def finished_runs(folder: Path) -> int:
    """How many runs under `folder` wrote their summary.json."""
    return sum(1 for _ in Path(folder).rglob(SUMMARY_FILE)) if Path(folder).is_dir() else 0


def multirun_command(overrides: Sequence[str], folder: Path, launcher: str | None = None) -> list[str]:
    """`python src/train.py -m OVERRIDES [hydra/launcher=NAME] hydra.sweep.dir=FOLDER`, as a user types it."""
    return [sys.executable, str(ROOT / "src" / "train.py"), "-m", *overrides,
            *([f"hydra/launcher={launcher}"] if launcher else []), f"hydra.sweep.dir={folder}"]


def _run_multirun(overrides: Sequence[str], folder: Path, launcher: str | None, keep_going: bool,
                  resume: bool) -> dict[str, Any]:
    """One Hydra multirun into `folder`, its output into FOLDER.log beside it: one torch thread per job unless a
    launcher gives each job its threads itself (Ray: OMP_NUM_THREADS = the job's num_cpus). With `resume`, a folder
    holding every run is kept and skipped, a partial one set aside whole (FOLDER.partial.TIME) and run again."""
    cmd = multirun_command(overrides, folder, launcher)
    env = os.environ if launcher else {**os.environ, "OMP_NUM_THREADS": "1"}
    folder = Path(folder)
    expected = len(sweep_jobs(list(overrides)) or [])
    if resume and expected and finished_runs(folder) >= expected:
        return {"folder": folder, "command": cmd, "returncode": 0, "finished": finished_runs(folder),
                "expected": expected, "seconds": 0.0, "skipped": True}
    if resume and folder.exists():  # a partial sweep is set aside whole, not mixed with a new one
        folder.rename(folder.with_name(f"{folder.name}.partial.{int(time.time())}"))
    folder.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(folder.parent / f"{folder.name}.log", "w") as log_file:
        rc = subprocess.run(cmd, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT, env=env).returncode
    if rc and not keep_going:
        raise subprocess.CalledProcessError(rc, cmd)
    return {"folder": folder, "command": cmd, "returncode": rc, "finished": finished_runs(folder),
            "expected": expected, "seconds": time.time() - start, "skipped": False}


def run_grid(jobs: Sequence[Job], launcher: str | None = None, *, multirun: bool = False, workers: int = 1,
             launcher_overrides: Sequence[str] = (), keep_going: bool = True, resume: bool = False,
             then: Callable[[Job, dict[str, Any]], Job | None] | None = None) -> list[dict[str, Any]]:
    """Every job of a grid, each a (overrides, folder), and their summaries in the jobs' order.

    Single runs (multirun=False): launcher None trains them here in turn (`train_job`; keep_going=False lets a
    crash propagate), launcher "ray" side by side as Ray tasks (`ray_run_many`, with `launcher_overrides`).
    Multiruns (multirun=True): each job is one `src/train.py -m` into its folder (`hydra.sweep.dir`), `workers` of
    them at once, under hydra/launcher=LAUNCHER when given; a job's summary is its return code, runs finished
    (and expected) and seconds (keep_going=False: a failed multirun raises; resume: see `_run_multirun`).
    `then(job, summary)` may name the next job of the same chain (a target sweep after its
    donor), run by the same worker as soon as the job ends; its summary follows."""
    if not multirun:
        if launcher == "ray":
            summaries = ray_run_many(launcher_overrides)(list(jobs))
        elif launcher is None:
            summaries = [train_job(o, f) if keep_going else _train_strict(o, f) for o, f in jobs]
        else:
            raise ValueError(f"launcher={launcher}: unknown (null: one run after another; ray: side by side)")
        return summaries

    def chain(job: Job) -> list[dict[str, Any]]:
        done = []
        while job is not None:
            done.append(_run_multirun(job[0], job[1], launcher, keep_going, resume))
            job = then(job, done[-1]) if then else None
        return done

    with ThreadPoolExecutor(max(1, workers)) as pool:
        futures = [pool.submit(chain, job) for job in jobs]
        return [summary for future in futures for summary in future.result()]


def _train_strict(overrides: Sequence[str], output_dir: str | Path) -> dict[str, Any]:
    from mugpt.config import compose_training_config
    from mugpt.training.train import train

    return dict(train(compose_training_config([*overrides, f"output_dir={output_dir}"])))
