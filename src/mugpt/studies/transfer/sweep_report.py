"""The sweep report in one call: read the runs, write the CSV, the figures and the analysis' JSON."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mugpt.studies.transfer.analysis import AXIS_WORDS, analyse, axis_value, format_report, seed_curves, series_of
from mugpt.studies.transfer.figures import plot, plot_transfer
from mugpt.studies.transfer.runs import _as_dirs, read_summaries, write_csv

log = logging.getLogger(__package__)  # the package's logger: its lines keep the name they always had


def _json_ready(value: Any) -> Any:
    """JSON keys must be text or numbers: an axis value read as a list (a tuple here) is written as its text."""
    if isinstance(value, Mapping):
        return {k if isinstance(k, (str, int, float, bool)) or k is None else str(k): _json_ready(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def report(sweep_dir: str | Path | Sequence[str | Path], out_dir: str | Path | None = None, title: str = "",
           keys: Sequence[str] = (), select: Mapping[str, Mapping[str, Any]] | None = None,
           axis: str = "width", group: Sequence[str] = ()) -> dict:
    """Read the sweep (one folder or several), write mutransfer.csv, mutransfer.png (loss vs lr),
    mutransfer_transfer.png (best lr vs the axis) and mutransfer.json; return the analysis.
    `axis`: `width` (the summary's) or a dotted config key, along which transfer is measured. `group`: config
    keys splitting each parametrization's runs into series. `keys`: config keys added to the CSV (the axis and
    groups are added anyway). `select`: parametrization -> {key: value}; the curves and the analysis then use
    only that parametrization's runs with those values (the CSV keeps every run). Several folders need
    `out_dir`: none of them is the report's obvious home."""
    dirs = _as_dirs(sweep_dir)
    if out_dir is None and len(dirs) > 1:
        raise ValueError(f"{len(dirs)} sweep directories: say where the report goes (--out DIR)")
    columns = [k for k in dict.fromkeys([*([axis] if axis != "width" else []), *group, *keys])]
    rows = read_summaries(dirs, [*columns, *{k for chosen in (select or {}).values() for k in chosen}])
    out = Path(out_dir or dirs[0])
    write_csv(rows, out / "mutransfer.csv", columns)
    placed = [r for r in rows if r.get(axis) is not None]
    if len(placed) < len(rows):
        for r in rows:  # a completed run off the axis is a wrong --axis: refused, naming the run
            if r["status"] == "completed":
                axis_value(r, axis)
        log.warning("%d failed runs have no config with %s: left out of the curves (the CSV keeps them)",
                    len(rows) - len(placed), axis)
        rows = placed
    if select:
        rows = [r for r in rows if all(r[k] == v for k, v in select.get(r["parametrization"], {}).items())]
    runs = [(series_of(r, group), axis_value(r, axis), r["lr"], r["seed"]) for r in rows]
    if len(set(runs)) < len(runs):
        log.warning("several runs share a series, %s, lr and seed: the curves average them; report one setting "
                    "per folder or split them with --group (the CSV keeps every run)", axis)
    analysis = analyse(rows, axis, group)
    plot(rows, out / "mutransfer.png", title=title, axis=axis, group=group)
    log2_lrs = [math.log2(r["lr"]) for r in rows]
    plot_transfer(analysis, out / "mutransfer_transfer.png", axis=axis, lr_range=(min(log2_lrs), max(log2_lrs)))
    (out / "mutransfer.json").write_text(json.dumps(_json_ready(analysis), indent=2, default=str))
    return {"rows": rows, "analysis": analysis, "text": format_report(analysis), "output_dir": out,
            "axis": axis, "group": list(group),
            # the figure's curves per seed, for W&B (mugpt.training.loggers.publish_to_wandb)
            "curves": {"axis": AXIS_WORDS.get(axis, axis), "by_seed": seed_curves(rows, axis, group)},
            "files": [out / "mutransfer.csv", out / "mutransfer.png", out / "mutransfer_transfer.png",
                      out / "mutransfer.json"]}
