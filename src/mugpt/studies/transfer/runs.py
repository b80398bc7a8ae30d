"""Reading a sweep's runs: one row per job's summary.json (with asked config keys), and the CSV of them."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mugpt.rundir import read_config, summaries_under

CSV_COLUMNS = ("parametrization", "width", "lr", "seed", "val_loss", "status", "output_dir")


def _as_dirs(sweep_dirs: str | Path | Sequence[str | Path]) -> list[Path]:
    return [Path(sweep_dirs)] if isinstance(sweep_dirs, (str, Path)) else [Path(d) for d in sweep_dirs]


def _plain(value: Any) -> Any:
    """A config list or mapping as plain Python (a value, a group or an axis must compare and print as one)."""
    if not OmegaConf.is_config(value):
        return value
    try:
        return OmegaConf.to_container(value, resolve=True)
    except Exception:  # an interpolation of Hydra's own (.hydra/config.yaml): the text stands
        return OmegaConf.to_container(value, resolve=False)


def read_summaries(sweep_dir: str | Path | Sequence[str | Path], keys: Sequence[str] = ()) -> list[dict]:
    """One row per job under sweep_dir (any depth; one folder or several, as an experiment run as several
    multiruns is) that left a summary.json; `keys` (dotted config keys, e.g. model.init_std) are added as
    columns from the job's config.yaml (None where the key or the file is absent)."""
    dirs = _as_dirs(sweep_dir)
    rows = []
    for folder in dirs:
        if not folder.is_dir():
            raise FileNotFoundError(f"sweep directory not found: {folder}")
        for path in summaries_under(folder):
            s = json.loads(path.read_text())
            if s.get("lr") is None or s.get("width") is None:
                continue
            loss = s.get("val_loss")
            row = {"parametrization": s.get("parametrization", "?"), "width": int(s["width"]),
                   "lr": float(s["lr"]), "seed": int(s.get("seed", 0)),
                   "val_loss": float(loss) if loss is not None else math.nan,
                   "status": s.get("status", "failed"), "output_dir": str(path.parent)}
            if keys:
                config = read_config(path.parent)
                # training saves config.yaml resolved; an unresolvable value still must not stop the report
                row.update({key: _plain(OmegaConf.select(config, key, throw_on_resolution_failure=False))
                            if config is not None else None for key in keys})
            rows.append(row)
    if not rows:
        raise FileNotFoundError(f"no summary.json with an lr and a width under {', '.join(map(str, dirs))}")
    return rows


def write_csv(rows: Iterable[Mapping[str, Any]], path: Path, keys: Sequence[str] = ()) -> None:
    """One row per run: the summary's columns with `keys` (axis, groups, asked config keys) after the seed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = [k for k in dict.fromkeys(keys) if k not in CSV_COLUMNS]
    columns = [*CSV_COLUMNS[:4], *keys, *CSV_COLUMNS[4:]]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in sorted(rows, key=lambda r: (r["parametrization"], r["width"], *(str(r[k]) for k in keys),
                                              r["lr"], r["seed"])):
            writer.writerow({c: r[c] for c in columns})
