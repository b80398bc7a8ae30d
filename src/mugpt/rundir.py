"""A run directory's layout and its readers: the one place that knows where a run keeps what.

One training run writes, into its output directory:
    summary.json                     the outcome (status, val_loss, lr, width, seed, timings), written at the end
    summary.refused.json             a relaunch into this directory that was refused, beside the first summary
    config.yaml                      the resolved config training ran with
    .hydra/config.yaml               Hydra's unresolved copy, written before the job starts (also when refused)
    .hydra/overrides.yaml            the job's command-line overrides (a sweep's job folder)
    checkpoints/last.ckpt            the newest checkpoint (resume=auto continues from it)
    csv/version_0/metrics.csv        the CSV logger's per-step metrics (logger=csv, the default)
Everything that reads runs (reports, sweeps, inspection, benchmarks) goes through here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

SUMMARY_FILE = "summary.json"
REFUSED_SUMMARY_FILE = "summary.refused.json"
CONFIG_FILE = "config.yaml"
HYDRA_DIR = ".hydra"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
METRICS_CSV = Path("csv") / "version_0" / "metrics.csv"


def summary_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / SUMMARY_FILE


def config_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / CONFIG_FILE


def hydra_config_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / HYDRA_DIR / "config.yaml"


def overrides_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / HYDRA_DIR / "overrides.yaml"


def last_checkpoint(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT


def metrics_csv(run_dir: str | Path) -> Path:
    return Path(run_dir) / METRICS_CSV


def read_summary(run_dir: str | Path, missing: Any = None) -> dict | Any:
    """The run's summary.json as a dict; `missing` when it is absent or unreadable (a run still going, or one
    whose writer was killed between its temporary file and the rename)."""
    try:
        return json.loads(summary_path(run_dir).read_text())
    except (OSError, ValueError):
        return missing


def write_summary(run_dir: str | Path, summary: dict, name: str = SUMMARY_FILE) -> None:
    """Write a summary atomically: a reader (a sweep's progress line) never sees half a file."""
    path = Path(run_dir) / name
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    os.replace(tmp, path)


def read_config(run_dir: str | Path) -> Any:
    """The run's config: config.yaml (resolved, written by training), else Hydra's .hydra/config.yaml (written
    before the job starts, so a run refused before training still has one; its interpolations read as None).
    None when neither exists."""
    from omegaconf import OmegaConf

    for path in (config_path(run_dir), hydra_config_path(run_dir)):
        if path.is_file():
            return OmegaConf.load(path)
    return None


def summaries_under(folders: str | Path | Sequence[str | Path]) -> Iterator[Path]:
    """Every summary.json under `folders` (any depth), folder by folder, each in sorted order."""
    for folder in [folders] if isinstance(folders, (str, Path)) else folders:
        yield from sorted(Path(folder).rglob(SUMMARY_FILE))
