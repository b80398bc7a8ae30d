"""A multirun from launch to answer: every job checked before the first trains, a progress line as each job ends,
and at the end the answer (the best learning rate per value of whatever else was swept).

- `sweep_jobs(args)`: the jobs a `-m` command line expands to, as Hydra's basic sweeper will run them.
- `check_launch(args)`: compose and check every job of a launch (one job for a single run) before Hydra creates
  any folder; the first refused job stops the launch whole, named in its one-line error.
- `SweepProgress`: a Hydra callback (conf/config.yaml registers it) printing `sweep 3/8: ...` as each job ends,
  with the done/failed/diverged counts and the time left, and the answer when the multirun ends. It counts the
  jobs' summary.json files, so it reads the same under the basic, Ray and SLURM launchers (jobs in other
  processes or on other machines, one shared sweep folder).
- `sweep_result(sweep_dir)`: the answer, printed and written as sweep_result.md / sweep_result.json.
The studies' own grids of trainings (donors, targets, optimizer sweeps) run through `mugpt.studies.grid`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mugpt.rundir import overrides_path, read_summary

log = logging.getLogger(__name__)

PROGRESS_FILE = ".sweep_progress.json"  # the job count and start time, for jobs in other processes
RESULT_STEM = "sweep_result"
LR_KEYS = ("lr_log2", "optim.lr")  # how a sweep names the learning rate; the summary's `lr` is its value
SEED_KEY = "seed"  # averaged over: seeds are repeats, not settings
MULTIRUN_FLAGS = ("-m", "--multirun")


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def sweep_jobs(args: Sequence[str]) -> list[list[str]] | None:
    """The jobs of a basic-sweeper multirun, each its list of overrides, in Hydra's order; None when another
    sweeper (hydra/sweeper=...) chooses the jobs itself."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in args if not a.startswith("-")]
    if any(_key(o) == "hydra/sweeper" for o in overrides):
        return None
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def fixed_overrides(overrides: Sequence[str]) -> list[str]:
    """The overrides that are not sweeps (`a,b`, `range(...)`, `interval(...)`, `choice(...)`...)."""
    from mugpt.training.loggers import sweep_keys

    swept = sweep_keys(overrides)
    return [o for o in overrides if _key(o) not in swept]


def _preflight_config(overrides: list[str]) -> tuple[DictConfig, DictConfig]:
    """(the job's training config without Hydra's node, Hydra's node), composed as Hydra is about to."""
    from omegaconf import open_dict

    from mugpt.config import check_overrides

    cfg = check_overrides(overrides)
    hydra_node = cfg.hydra
    with open_dict(cfg):
        cfg.pop("hydra")
        # the run directory is Hydra's to make; the checks only need a value where `${hydra:...}` stood
        cfg.output_dir = "."
    return cfg, hydra_node


def check_launch(args: Sequence[str]) -> None:
    """Compose and check every job of this launch (training's `preflight`) and the folder it will write into,
    before Hydra runs anything: a ConfigError naming the option, and in a sweep the job (`job 5 of 8
    (model.width=65 lr_log2=-9): ...`). Hydra's own flags (--help, --cfg, ...) are left to Hydra."""
    from mugpt.errors import ConfigError
    from mugpt.training.run import check_writable_dir
    from mugpt.training.train import preflight

    multirun = any(a in MULTIRUN_FLAGS for a in args)
    if any(a.startswith("-") and a not in MULTIRUN_FLAGS for a in args):
        return
    overrides = [a for a in args if not a.startswith("-")]
    if multirun:
        try:
            jobs = sweep_jobs(overrides)
        except Exception as exc:  # noqa: BLE001 - Hydra's override grammar reports many ways
            raise ConfigError(f"sweep: {str(exc).strip().splitlines()[0]}") from exc
        if jobs is None:  # another sweeper picks the values: check the launch's fixed part
            jobs = [fixed_overrides(overrides)]
    else:
        jobs = [overrides]
    hydra_node = None
    for i, job in enumerate(jobs):
        try:
            cfg, hydra_node = _preflight_config(job)
            processes = preflight(cfg)
            if multirun and processes > 1 and "ray" in str(hydra_node.launcher.get("_target_", "")).lower():
                # Lightning starts ranks 1.. by re-running the command line, which in a Ray worker is Ray's own
                raise ConfigError(f"trainer.devices={cfg.trainer.get('devices')}: a job of {processes} processes "
                                  f"cannot start its other ranks inside a Ray worker; give each job one device "
                                  f"(hydra.launcher.ray.remote.num_gpus=1), or use hydra/launcher=slurm")
        except ConfigError as exc:
            if not multirun:
                raise
            raise ConfigError(f"job {i + 1} of {len(jobs)} ({' '.join(job)}) is refused, so the sweep is not "
                              f"started: {exc}") from exc
    if hydra_node is not None:
        folder = hydra_node.sweep.dir if multirun else hydra_node.run.dir
        check_writable_dir(folder, "hydra.sweep.dir" if multirun else "hydra.run.dir")


# ---------------------------------------------------------------------------------------------- the answer
def _job_overrides(job_dir: Path) -> list[str]:
    path = overrides_path(job_dir)
    try:
        return [str(o) for o in yaml.safe_load(path.read_text()) or []]
    except (OSError, yaml.YAMLError):
        return []


def read_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """One entry per job folder of a sweep (a folder with .hydra/overrides.yaml): its overrides as a dict,
    and its summary (None while it runs or when it never ran)."""
    jobs = []
    for hydra_dir in sorted(sweep_dir.glob("*/.hydra"), key=lambda p: (len(p.parent.name), p.parent.name)):
        folder = hydra_dir.parent
        summary = read_summary(folder)
        overrides = dict(o.split("=", 1) for o in _job_overrides(folder) if "=" in o)
        jobs.append({"dir": folder, "overrides": {_key(k): v for k, v in overrides.items()}, "summary": summary})
    return jobs


def _status(job: dict[str, Any]) -> str:
    summary = job["summary"]
    return "running" if summary is None else str(summary.get("status", "failed"))


def _loss(job: dict[str, Any]) -> float:
    """The job's validation loss; +inf for a job that did not complete (one bad seed rules a setting out)."""
    summary = job["summary"] or {}
    loss = summary.get("val_loss")
    ok = summary.get("status") == "completed" and isinstance(loss, (int, float)) and math.isfinite(loss)
    return float(loss) if ok else math.inf


def _lr_text(lr: float) -> str:
    exponent = math.log2(lr) if lr > 0 else math.nan
    return f"2^{exponent:g}" if math.isfinite(exponent) and exponent == round(exponent) else f"{lr:g}"


def sweep_result(sweep_dir: str | Path, by_setting: bool = True) -> dict[str, Any]:
    """The answer of a finished (or partly finished) sweep: job counts by status; per setting of the keys swept
    beside the learning rate and the seed, the best learning rate on the seed-mean curve, its loss, the number of
    seeds, and `edge` ('lowest'/'highest') when that rate is at the edge of the grid tried. by_setting=False (a
    search such as Optuna's, where every trial is a setting of its own): the best job overall."""
    sweep_dir = Path(sweep_dir)
    jobs = read_jobs(sweep_dir)
    counts: dict[str, int] = defaultdict(int)
    for job in jobs:
        counts[_status(job)] += 1
    values: dict[str, set] = defaultdict(set)
    for job in jobs:
        for k, v in job["overrides"].items():
            values[k].add(v)
    swept = [k for k, v in values.items() if len(v) > 1 or any(k not in j["overrides"] for j in jobs)]
    setting_keys = [k for k in swept if k not in LR_KEYS and k != SEED_KEY] if by_setting else []
    curves: dict[tuple, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for job in jobs:
        lr = (job["summary"] or {}).get("lr")
        if job["summary"] is None or lr is None:
            continue
        setting = tuple((k, job["overrides"].get(k)) for k in setting_keys)
        curves[setting][float(lr)].append(_loss(job))
    settings = []
    for setting, curve in curves.items():
        # a grid's repeats at one lr are seeds (their mean counts); a search's trials at one lr are not
        pool = (lambda v: sum(v) / len(v) if all(math.isfinite(x) for x in v) else math.inf) if by_setting else min
        mean = {lr: pool(v) for lr, v in sorted(curve.items())}
        grid = list(mean)
        finite = [lr for lr in grid if math.isfinite(mean[lr])]
        entry: dict[str, Any] = {"setting": dict(setting), "lrs_tried": len(grid),
                                 "seeds": max(len(v) for v in curve.values()) if by_setting else 1,
                                 "best_lr": None,
                                 "best_loss": None, "edge": None}
        if finite:
            best = min(finite, key=mean.__getitem__)
            entry.update(best_lr=best, best_loss=mean[best], edge=grid_edge(grid, best))
        settings.append(entry)
    settings.sort(key=lambda e: tuple(_sort_key(v) for v in e["setting"].values()))
    return {"sweep_dir": str(sweep_dir), "jobs": len(jobs), "counts": dict(counts), "setting_keys": setting_keys,
            "settings": settings}


def _sort_key(value: Any) -> tuple:
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def grid_edge(grid: Sequence[float], best: float | None) -> str | None:
    """'lowest' or 'highest' when `best` is at that end of a grid of two or more learning rates, else None: the
    optimum may then lie outside what was tried."""
    grid = sorted(grid)
    if best is None or len(grid) < 2 or not math.isfinite(best):
        return None
    return "lowest" if best == grid[0] else "highest" if best == grid[-1] else None


def edge_warning(edge: str | None, lr: float | None) -> str:
    """The advice for a best learning rate at the grid's edge ('' when it is inside the grid)."""
    if edge is None or lr is None:
        return ""
    way = "smaller" if edge == "lowest" else "larger"
    return (f"best lr {_lr_text(lr)} is the {edge} tried: the optimum may lie beyond it, widen the grid towards "
            f"{way} learning rates")


def format_sweep_result(result: dict[str, Any]) -> str:
    counts = result["counts"]
    order = ("completed", "diverged", "failed", "interrupted", "running")
    status = ", ".join(f"{counts[s]} {s}" for s in order if counts.get(s)) or "none finished"
    lines = [f"sweep {result['sweep_dir']}: {result['jobs']} jobs: {status}"]
    keys = result["setting_keys"]
    if result["settings"]:
        lines.append("")
        lines.append("| " + " | ".join([*keys, "best lr", "val loss", "seeds", "lrs tried"]) + " |")
        lines.append("|" + "---|" * (len(keys) + 4))
    warnings = []
    for e in result["settings"]:
        cells = [str(e["setting"].get(k)) for k in keys]
        if e["best_lr"] is None:
            cells += ["none finished", "", str(e["seeds"]), str(e["lrs_tried"])]
        else:
            mark = " (edge)" if e["edge"] else ""
            cells += [_lr_text(e["best_lr"]) + mark, f"{e['best_loss']:.4f}", str(e["seeds"]), str(e["lrs_tried"])]
        lines.append("| " + " | ".join(cells) + " |")
        if e["edge"]:
            where = " ".join(f"{k}={v}" for k, v in e["setting"].items())
            warnings.append(f"warning: {where + ': ' if where else ''}{edge_warning(e['edge'], e['best_lr'])}")
    if warnings:
        lines += ["", *warnings]
    return "\n".join(lines)


def write_sweep_result(sweep_dir: str | Path, by_setting: bool = True) -> tuple[dict[str, Any], str]:
    """The answer into the sweep folder (sweep_result.md, sweep_result.json); returns it and its text."""
    sweep_dir = Path(sweep_dir)
    result = sweep_result(sweep_dir, by_setting)
    text = format_sweep_result(result)
    (sweep_dir / f"{RESULT_STEM}.md").write_text(text + "\n")
    (sweep_dir / f"{RESULT_STEM}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result, text


# --------------------------------------------------------------------------------------- the Hydra callback
def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress_line(sweep_dir: Path, job_dir: Path | None = None, now: float | None = None) -> str:
    """`sweep 3/8: job 2 (model.width=128 lr_log2=-9) completed, val_loss 2.3456 | 2 completed, 1 failed,
    0 diverged | about 1m20s left`, from the job folders and the progress file."""
    try:
        progress = json.loads((sweep_dir / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        progress = {}
    jobs = read_jobs(sweep_dir)
    ended = [j for j in jobs if j["summary"] is not None]
    total = int(progress.get("jobs") or len(jobs))
    counts: dict[str, int] = defaultdict(int)
    for job in ended:
        counts[_status(job)] += 1
    line = f"sweep {len(ended)}/{total}"
    this = next((j for j in jobs if job_dir is not None and j["dir"].resolve() == job_dir.resolve()), None)
    if this is not None and this["summary"] is not None:
        s = this["summary"]
        loss = s.get("val_loss")
        loss_text = f", val_loss {loss:.4f}" if isinstance(loss, (int, float)) and math.isfinite(loss) else ""
        swept = progress.get("swept")
        named = [o for o in _job_overrides(this["dir"]) if not swept or _key(o) in swept]
        line += f": job {this['dir'].name} ({' '.join(named)}) {s.get('status')}{loss_text}"
    line += " | " + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("completed", "failed", "diverged"))
    if counts.get("interrupted"):
        line += f", {counts['interrupted']} interrupted"
    started = progress.get("started")
    left = total - len(ended)
    if started and ended and left > 0:
        elapsed = (now or time.time()) - float(started)
        line += f" | about {_duration(elapsed / len(ended) * left)} left"
    return line


class SweepProgress(Callback):
    """Progress while a multirun runs, and its answer when it ends (see the module's docstring). The job count,
    start time and swept keys are taken when the multirun starts and written into the sweep folder by the first
    job (a launch the sweeper refuses before any job leaves no folder); launchers that run jobs in other
    processes carry this object, and so those values, with each job."""

    def __init__(self) -> None:
        self.progress: dict[str, Any] = {}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from mugpt.training.loggers import sweep_keys

        sweeper = config.hydra.sweeper
        launched = list(config.hydra.overrides.task)
        total = sweeper.get("n_trials") if "n_trials" in sweeper else None
        jobs = sweep_jobs(launched)
        if total is None and jobs is not None:
            total = len(jobs)
        # a progress line names a job by the swept keys alone, as its W&B run name does (loggers.run_name)
        swept = sweep_keys(launched) | set((sweeper.get("params") or {}).keys())
        self.progress = {"jobs": total, "started": time.time(), "swept": sorted(swept)}

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.types import RunMode

        path = Path(config.hydra.sweep.dir) / PROGRESS_FILE
        if config.hydra.mode == RunMode.MULTIRUN and self.progress and not path.exists():
            tmp = path.with_name(f"{path.name}.{os.getpid()}")  # several workers may start at once
            tmp.write_text(json.dumps(self.progress))
            os.replace(tmp, path)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.types import RunMode

        if config.hydra.mode != RunMode.MULTIRUN:
            return
        try:
            log.info(progress_line(Path(config.hydra.sweep.dir), Path(config.hydra.runtime.output_dir)))
        except Exception as exc:  # noqa: BLE001 - a progress line must never fail a job
            log.debug("no progress line: %s", exc)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        try:
            grid = sweep_jobs(list(config.hydra.overrides.task)) is not None
            _, text = write_sweep_result(sweep_dir, by_setting=grid)
        except Exception as exc:  # noqa: BLE001 - the jobs' own results stand whatever happens here
            log.warning("no sweep result: %s", exc)
            return
        log.info("%s\n(written to %s)", text, sweep_dir / f"{RESULT_STEM}.md")
