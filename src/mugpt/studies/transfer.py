"""µTransfer analysis: read a sweep's summary.json files, find the best learning rate at each value of an axis
(width by default; any config key: depth, run length, batch), and measure how well the smallest (donor)
value's best learning rate transfers to the largest (target).

Three numbers per series (a parametrization, split further by `group` config keys), as in Tensor Programs V
(figure 1):
- best log2 lr per axis value, from a parabola through the grid minimum and its two neighbours (loss against
  log2 lr is close to a parabola near its minimum; a bare argmin jumps between grid points on flat curves),
- shift: how many octaves the best lr moves along the axis (µP across widths: ~0; SP: drifts down),
- transfer regret: the target's loss at the donor's best grid lr minus the target's best loss.
Each comes from the seed-mean curves (what a practitioner tunes on) and, for error bars, from every seed's
own curve: mean and Student-t 95% confidence interval over seeds, since a shift of a third of an octave means
nothing when the seeds disagree by half an octave.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import textwrap
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from omegaconf import OmegaConf

from mugpt.studies.sweep import edge_warning, grid_edge

log = logging.getLogger(__name__)

CSV_COLUMNS = ("parametrization", "width", "lr", "seed", "val_loss", "status", "output_dir")
PARAM_TITLES = {"sp": "SP (standard parametrization)", "mup": "µP (maximal update parametrization)",
                "umup": "u-µP (unit-scaled µP)"}
AXIS_WORDS = {"width": "width", "model.width": "width", "model.n_layer": "depth", "trainer.max_steps": "steps",
              "data.batch_size": "batch"}
AXIS_TITLES = {"width": "width (model.width)", "model.width": "width (model.width)",
               "model.n_layer": "depth (model.n_layer)", "trainer.max_steps": "training steps (trainer.max_steps)",
               "data.batch_size": "batch size (data.batch_size)"}
CI_LEVEL = 0.95

Curve = dict[float, float]  # lr -> validation loss


# --------------------------------------------------------------------------- statistics over seeds
def _t_two_sided_mass(t: float, dof: int) -> float:
    """P(|T| < t) for Student's t with an integer number of degrees of freedom: the closed-form series of
    Abramowitz & Stegun 26.7.3-4 (so the report needs no scipy, which the project does not depend on)."""
    theta = math.atan(t / math.sqrt(dof))
    c2 = math.cos(theta) ** 2
    term = total = 1.0
    if dof % 2:
        if dof == 1:
            return 2.0 * theta / math.pi
        for k in range(1, (dof - 3) // 2 + 1):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return 2.0 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
    for k in range(1, (dof - 2) // 2 + 1):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return math.sin(theta) * total


def t_quantile(level: float, dof: int) -> float:
    """The t with P(|T| < t) = level (two-sided), by bisection on the series above: t(0.95, 2) = 4.303."""
    if dof < 1:
        return math.nan
    lo, hi = 0.0, 1.0
    while _t_two_sided_mass(hi, dof) < level:
        lo, hi = hi, 2.0 * hi
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _t_two_sided_mass(mid, dof) < level else (lo, mid)
    return 0.5 * (lo + hi)


def mean_ci(values: Iterable[float], level: float = CI_LEVEL) -> dict[str, float]:
    """Mean, sample sd and confidence-interval half-width (Student t, n-1 dof) of per-seed numbers. A missing
    number (nan) is left out of n; an infinite one (a diverged seed) makes the mean infinite and the spread
    undefined, instead of being quietly dropped. One seed: sd and half-width are nan (no interval)."""
    x = [float(v) for v in values if not math.isnan(v)]
    n = len(x)
    if n == 0:
        return {"mean": math.nan, "sd": math.nan, "half_width": math.nan, "n": 0}
    mean = float(np.mean(x))
    if n == 1 or not all(math.isfinite(v) for v in x):
        return {"mean": mean, "sd": math.nan, "half_width": math.nan, "n": n}
    sd = float(np.std(x, ddof=1))
    return {"mean": mean, "sd": sd, "half_width": t_quantile(level, n - 1) * sd / math.sqrt(n), "n": n}


def format_ci(stats: Mapping[str, float], fmt: str = "+.2f", unit: str = "", count: bool = True) -> str:
    """`-7.12 ± 0.21 (95% CI, 3 seeds)`; with one seed (or a diverged one) no interval: `-7.12 (1 seed)`.
    count=False leaves the parenthesis out (for a line that says it once)."""
    n, unit = stats["n"], f" {unit}" if unit else ""
    if n == 0:
        return "n/a (no seed in common)"
    seeds = f"{n} seed{'s' if n != 1 else ''}"
    if math.isfinite(stats["half_width"]):
        text = f"{stats['mean']:{fmt}} ± {stats['half_width']:.{_decimals(fmt)}f}{unit}"
        return text + (f" ({CI_LEVEL:.0%} CI, {seeds})" if count else "")
    return f"{stats['mean']:{fmt}}{unit}" + (f" ({seeds})" if count else "")


def format_sd(stats: Mapping[str, float], fmt: str = ".4f", count: bool = True) -> str:
    """`2.4581 ± 0.0040 (sd, 3 seeds)`: the seeds' spread, for losses (how far one run may land from another).
    count=False leaves the parenthesis out (for a table that says it once)."""
    n = stats["n"]
    seeds = f"{n} seed{'s' if n != 1 else ''}"
    if math.isfinite(stats["sd"]):
        return f"{stats['mean']:{fmt}} ± {stats['sd']:.{_decimals(fmt)}f}" + (f" (sd, {seeds})" if count else "")
    return f"{stats['mean']:{fmt}}" + (f" ({seeds})" if count else "")


def _decimals(fmt: str) -> int:
    return int(fmt.rsplit(".", 1)[1].rstrip("fge")) if "." in fmt else 2


# --------------------------------------------------------------------------- reading runs
def _as_dirs(sweep_dirs: str | Path | Sequence[str | Path]) -> list[Path]:
    return [Path(sweep_dirs)] if isinstance(sweep_dirs, (str, Path)) else [Path(d) for d in sweep_dirs]


def _run_config(folder: Path) -> Any:
    """The run's config: config.yaml (resolved, written by training), else Hydra's .hydra/config.yaml (written
    before the job starts, so a run refused before training still has one; its interpolations read as None)."""
    for path in (folder / "config.yaml", folder / ".hydra" / "config.yaml"):
        if path.is_file():
            return OmegaConf.load(path)
    return None


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
        for path in sorted(folder.rglob("summary.json")):
            s = json.loads(path.read_text())
            if s.get("lr") is None or s.get("width") is None:
                continue
            loss = s.get("val_loss")
            row = {"parametrization": s.get("parametrization", "?"), "width": int(s["width"]),
                   "lr": float(s["lr"]), "seed": int(s.get("seed", 0)),
                   "val_loss": float(loss) if loss is not None else math.nan,
                   "status": s.get("status", "failed"), "output_dir": str(path.parent)}
            if keys:
                config = _run_config(path.parent)
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


# --------------------------------------------------------------------------- curves and the analysis
def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, (list, tuple)) else value


def series_of(row: Mapping[str, Any], group: Sequence[str] = ()) -> str:
    """The series a run belongs to: its parametrization, and `key=value` (the key's last part) for each group
    key the run has (SP has no parametrization.depth_alpha: its series stays `sp`)."""
    parts = [str(row["parametrization"])]
    parts += [f"{key.rsplit('.', 1)[-1]}={row[key]}" for key in group if row.get(key) is not None]
    return " ".join(parts)


def axis_value(row: Mapping[str, Any], axis: str = "width") -> Any:
    """The run's value on the axis: the summary's width, or the config key read into the row."""
    value = row.get(axis)
    if value is None:
        raise ValueError(f"axis {axis}: the run in {row.get('output_dir') or '?'} has no such config key "
                         f"(its config.yaml lacks it)")
    return _hashable(value)


def _sort_key(value: Any) -> tuple:
    """Numbers in numeric order, anything else (None, text) after them by its text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _order(values: Iterable[Any]) -> list[Any]:
    return sorted(set(values), key=_sort_key)


def _series_order(rows: Sequence[Mapping[str, Any]], group: Sequence[str]) -> list[str]:
    """Parametrizations in the order the runs came, each one's series by its group values."""
    params = list(dict.fromkeys(r["parametrization"] for r in rows))
    keys = {series_of(r, group): (params.index(r["parametrization"]), *(_sort_key(r.get(k)) for k in group))
            for r in rows}
    return sorted(keys, key=keys.__getitem__)


def _loss(row: Mapping[str, Any]) -> float:
    """A diverged or failed run counts as +inf, so one bad seed makes that learning rate unusable, as it would
    be in practice."""
    ok = row["status"] == "completed" and math.isfinite(row["val_loss"])
    return row["val_loss"] if ok else math.inf


def loss_curves(rows: Iterable[Mapping[str, Any]], axis: str = "width",
                group: Sequence[str] = ()) -> dict[tuple[str, Any], Curve]:
    """(series, axis value) -> {lr: mean val loss over seeds}; with the defaults, (parametrization, width)."""
    losses: dict[tuple[str, Any, float], list[float]] = defaultdict(list)
    for r in rows:
        losses[(series_of(r, group), axis_value(r, axis), r["lr"])].append(_loss(r))
    curves: dict[tuple[str, Any], Curve] = defaultdict(dict)
    for (series, value, lr), values in losses.items():
        curves[(series, value)][lr] = float(np.mean(values))
    return {k: dict(sorted(v.items())) for k, v in curves.items()}


def seed_curves(rows: Iterable[Mapping[str, Any]], axis: str = "width",
                group: Sequence[str] = ()) -> dict[tuple[str, Any], dict[int, Curve]]:
    """(series, axis value) -> seed -> {lr: val loss}: each seed's own curve, for the error bars."""
    losses: dict[tuple[str, Any, int, float], list[float]] = defaultdict(list)
    for r in rows:
        losses[(series_of(r, group), axis_value(r, axis), r["seed"], r["lr"])].append(_loss(r))
    curves: dict[tuple[str, Any], dict[int, Curve]] = defaultdict(lambda: defaultdict(dict))
    for (series, value, seed, lr), values in losses.items():
        curves[(series, value)][seed][lr] = float(np.mean(values))
    return {k: {seed: dict(sorted(c.items())) for seed, c in sorted(v.items())} for k, v in curves.items()}


def best_log2_lr(curve: Mapping[float, float]) -> tuple[float, float]:
    """(grid-min lr, refined log2 lr): a parabola through the grid minimum and its neighbours on a log2
    axis, its vertex kept within the neighbours; the grid point itself at an edge or without curvature."""
    lrs = [lr for lr in curve if math.isfinite(curve[lr])]
    if not lrs:
        return math.nan, math.nan
    grid = sorted(curve)
    best = min(lrs, key=lambda lr: curve[lr])
    i = grid.index(best)
    if 0 < i < len(grid) - 1 and all(math.isfinite(curve[grid[j]]) for j in (i - 1, i + 1)):
        x = np.log2(grid[i - 1: i + 2])
        y = np.array([curve[grid[j]] for j in (i - 1, i, i + 1)])
        a, b, _ = np.polyfit(x, y, 2)
        if a > 0:
            return best, float(np.clip(-b / (2 * a), x[0], x[2]))
    return best, math.log2(best)


def _curve_min(curve: Mapping[float, float]) -> float:
    return min(curve.values()) if curve else math.nan


def _regret(seeds: Mapping[int, Curve], lr: float, mean_best: float) -> dict[str, Any]:
    """Per seed: its loss at `lr` minus its own curve's minimum, and minus the seed-mean curve's minimum."""
    own, vs_mean = [], []
    for curve in seeds.values():
        at = curve.get(lr, math.nan) if math.isfinite(lr) else math.nan
        own.append(at - _curve_min(curve))
        vs_mean.append(at - mean_best)
    return {"seeds": mean_ci(own), "seeds_vs_mean_best": mean_ci(vs_mean)}


def analyse(rows: Sequence[Mapping[str, Any]], axis: str = "width",
            group: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Per series (the parametrization, with its group values): axis values, best lr per value (grid and
    refined, from the seed-mean curve), shift in octaves, donor (smallest value) and target (largest), transfer
    regret (nats), the target's best loss and its loss at the donor's lr. Beside them the same numbers per seed,
    as mean ± CI: `best_log2_lr_seeds`, `shift_from_donor`, `best_loss_seeds` (the seeds' losses at the
    mean curve's best lr), `regret_by_value` and, for the target, `regret_seeds` (each seed's loss at the
    donor's lr minus its own best) and `regret_seeds_vs_mean_best`. The donor's lr is chosen on its seed-mean
    curve, as a practitioner would. With the default axis the width-named keys (`widths`, `donor_width`,
    `target_width`) are there too."""
    curves = loss_curves(rows, axis, group)
    per_seed = seed_curves(rows, axis, group)
    out: dict[str, dict[str, Any]] = {}
    for series in _series_order(rows, group):
        first = next(r for r in rows if series_of(r, group) == series)
        values = _order(v for s, v in curves if s == series)
        best = {v: best_log2_lr(curves[(series, v)]) for v in values}
        refined = [best[v][1] for v in values if math.isfinite(best[v][1])]
        donor, target = values[0], values[-1]
        donor_lr = best[donor][0]
        target_curve = curves[(series, target)]
        target_best = _curve_min(target_curve)
        at_donor_lr = target_curve.get(donor_lr, math.nan) if math.isfinite(donor_lr) else math.nan
        seed_best = {v: {seed: best_log2_lr(c)[1] for seed, c in per_seed[(series, v)].items()} for v in values}
        shift = {}
        for v in values[1:]:
            common = [s for s in seed_best[v] if s in seed_best[donor]]
            shift[v] = mean_ci(seed_best[v][s] - seed_best[donor][s] for s in common)
        regret_by_value = {}
        for v in values[1:]:
            curve = curves[(series, v)]
            at = curve.get(donor_lr, math.nan) if math.isfinite(donor_lr) else math.nan
            regret_by_value[v] = {"regret": at - _curve_min(curve),
                                  **_regret(per_seed[(series, v)], donor_lr, _curve_min(curve))}
        target_regret = regret_by_value.get(target) or _regret(per_seed[(series, target)], donor_lr, target_best)
        a: dict[str, Any] = {
            "parametrization": first["parametrization"], "group": {k: first.get(k) for k in group},
            "axis": axis, "values": values,
            "best_lr": {v: best[v][0] for v in values},
            "best_log2_lr": {v: best[v][1] for v in values},
            "best_loss": {v: _curve_min(curves[(series, v)]) for v in values},
            "edge": {v: grid_edge(list(curves[(series, v)]), best[v][0]) for v in values},
            "best_log2_lr_seeds": {v: {**mean_ci(seed_best[v].values()), "seeds": seed_best[v]} for v in values},
            "best_loss_seeds": {v: mean_ci(c.get(best[v][0], math.nan) if math.isfinite(best[v][0]) else math.nan
                                           for c in per_seed[(series, v)].values()) for v in values},
            "shift_octaves": (max(refined) - min(refined)) if len(refined) > 1 else math.nan,
            "shift_from_donor": shift,
            "donor": donor, "target": target, "donor_lr": donor_lr,
            "target_loss_at_donor_lr": at_donor_lr,
            "target_best_loss": target_best,
            "regret": at_donor_lr - target_best,
            "regret_seeds": target_regret["seeds"],
            "regret_seeds_vs_mean_best": target_regret["seeds_vs_mean_best"],
            "regret_by_value": regret_by_value,
        }
        if axis == "width":
            a.update({"widths": values, "donor_width": donor, "target_width": target})
        out[series] = a
    return out


def axis_title(axis: str) -> str:
    """`depth (model.n_layer)` for the keys the README's experiments sweep, the key itself otherwise."""
    return AXIS_TITLES.get(axis, axis)


def format_report(analysis: Mapping[str, Mapping[str, Any]]) -> str:
    """The numbers per series: per axis value the seed-mean curve's best lr and loss (± the seeds' sd), then
    the per-seed best lr, its shift from the donor and the regret at the donor's lr (mean ± 95% CI)."""
    lines = []
    for series, a in analysis.items():
        name = a.get("axis", "width")
        lines.append(f"{series}: best learning rate per {name} (seed-mean curve: grid minimum, parabola-refined "
                     f"log2; per seed: mean ± {CI_LEVEL:.0%} CI)")
        for v in a["values"]:
            lines.append(f"  {name} {v!s:>5}: lr {a['best_lr'][v]:.3g}  log2 {a['best_log2_lr'][v]:+.2f}  "
                         f"best val loss {format_sd(a['best_loss_seeds'][v])}")
            n = a["best_log2_lr_seeds"][v]["n"]
            per_seed = [f"log2 lr {format_ci(a['best_log2_lr_seeds'][v])}"]
            if v in a["shift_from_donor"]:  # the seed count again only where it differs (a seed lacks a run)
                shift, regret = a["shift_from_donor"][v], a["regret_by_value"][v]["seeds"]
                per_seed.append(f"shift from {a['donor']} {format_ci(shift, count=shift['n'] != n)} octaves")
                per_seed.append(f"regret {format_ci(regret, '.4f', 'nats', count=regret['n'] != n)}")
            lines.append("      per seed: " + "; ".join(per_seed))
            if (a.get("edge") or {}).get(v):
                lines.append(f"      warning: {edge_warning(a['edge'][v], a['best_lr'][v])} (so not refined)")
        if len(a["values"]) < 2:
            lines.append(f"  one {name} only: no transfer to measure")
            continue
        lines.append(f"  shift of the best lr across {name}: {a['shift_octaves']:.2f} octaves")
        lines.append(f"  transfer: donor {name} {a['donor']} best lr {a['donor_lr']:.3g} -> target {name} "
                     f"{a['target']}: loss {a['target_loss_at_donor_lr']:.4f} vs its own best "
                     f"{a['target_best_loss']:.4f}, regret {a['regret']:.4f} nats")
        own, vs_mean = a["regret_seeds"], a["regret_seeds_vs_mean_best"]
        lines.append(f"    per seed: regret {format_ci(own, '.4f', 'nats')} vs each seed's own best, "
                     f"{format_ci(vs_mean, '.4f', count=False)} vs the seed-mean curve's best")
    return "\n".join(lines)


# --------------------------------------------------------------------------- figures
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(rows: Sequence[Mapping[str, Any]], path: Path, title: str = "", axis: str = "width",
         group: Sequence[str] = ()) -> None:
    """Validation loss vs log2 learning rate, one curve per axis value (the mean over seeds, shaded ± the seeds'
    sd where there are several), one panel per series, shared y axis. Diverged/failed runs are drawn as crosses
    at the top of the panel; stars mark each value's best."""
    plt = _pyplot()
    curves = loss_curves(rows, axis, group)
    per_seed = seed_curves(rows, axis, group)
    series_list = _series_order(rows, group)
    values = _order(v for _, v in curves)
    cmap = plt.get_cmap("viridis")
    colour = {v: cmap(0.9 * i / max(1, len(values) - 1)) for i, v in enumerate(values)}
    finite = [v for c in curves.values() for v in c.values() if math.isfinite(v)]
    lo = min(finite) if finite else 0.0
    hi = min(max(finite), lo + 2.0) if finite else 1.0
    top = hi + 0.08 * (hi - lo + 1e-9)

    fig, axes = plt.subplots(1, len(series_list), figsize=(6 * len(series_list), 4.6), sharey=True, squeeze=False)
    for ax, series in zip(axes[0], series_list):
        for v in values:
            curve = curves.get((series, v))
            if not curve:
                continue
            x = np.log2(list(curve))
            y = np.array(list(curve.values()))
            ok = np.isfinite(y)
            seeds = per_seed[(series, v)]
            sd = np.array([mean_ci(c.get(lr, math.nan) for c in seeds.values())["sd"] for lr in curve])
            band = ok & np.isfinite(sd)
            if band.any():
                ax.fill_between(x[band], np.minimum(y[band] - sd[band], top), np.minimum(y[band] + sd[band], top),
                                color=colour[v], alpha=0.18, lw=0)
            label = f"{AXIS_WORDS.get(axis, axis)} {v}" + (f" ({len(seeds)} seeds)" if len(seeds) > 1 else "")
            ax.plot(x[ok], np.minimum(y[ok], top), "-o", ms=4, color=colour[v], label=label)
            ax.plot(x[~ok], np.full((~ok).sum(), top), "x", ms=7, color=colour[v])
            best, _ = best_log2_lr(curve)
            if math.isfinite(best):
                ax.plot([math.log2(best)], [curve[best]], "*", ms=13, color=colour[v], mec="black", mew=0.6)
        param, _, rest = series.partition(" ")
        ax.set_title(PARAM_TITLES.get(param, param) + (f", {rest}" if rest else ""))
        ax.set_xlabel("log2 learning rate")
        ax.set_ylim(lo - 0.05 * (hi - lo + 1e-9), top + 0.05 * (hi - lo + 1e-9))
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("validation loss (nats/token), mean ± sd over seeds")
    axes[0][-1].legend(title=f"{axis_title(axis)}; × diverged", fontsize=9, title_fontsize=9)
    title = title or f"µTransfer: validation loss vs learning rate across {axis_title(axis)}"
    fig.suptitle(textwrap.fill(title, width=int(11 * fig.get_figwidth())))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_transfer(analysis: Mapping[str, Mapping[str, Any]], path: Path, axis: str = "width", title: str = "",
                  lr_range: tuple[float, float] | None = None) -> None:
    """The transfer figure: best log2 lr against the axis value, one line per series, the seeds' mean with its
    95% CI as error bars (the seed-mean curve's refined best where there is one seed). A flat line is transfer;
    the error bars say whether a slope is more than seed noise. Numeric axes spanning 4× or more are drawn on a
    log2 scale (widths, depths, steps and batches are swept in doublings); text values are spaced evenly.
    lr_range: the searched log2 lrs (min, max); the y axis stops half an octave beyond them, since an interval
    reaching past the grid says only that the seeds disagree (the text report gives its width)."""
    plt = _pyplot()
    values = _order(v for a in analysis.values() for v in a["values"])
    numeric = all(_sort_key(v)[0] == 0 for v in values)
    log_x = numeric and min(values) > 0 and max(values) / min(values) >= 4
    position = {v: (float(v) if numeric else float(i)) for i, v in enumerate(values)}
    span = (max(position.values()) - min(position.values())) if numeric else 2.0
    fig, ax = plt.subplots(figsize=(6, 4.2))
    n = len(analysis)
    for k, (series, a) in enumerate(analysis.items()):
        offset = (k - (n - 1) / 2) * 0.03  # a small stagger so that overlapping error bars stay readable
        xs, ys, errs = [], [], []
        for v in a["values"]:
            stats = a["best_log2_lr_seeds"][v]
            mean = stats["mean"] if stats["n"] > 1 else a["best_log2_lr"][v]
            if not math.isfinite(mean):
                continue
            x = position[v]
            xs.append(x * 2.0 ** offset if log_x else x + offset * (span or 1.0))
            ys.append(mean)
            errs.append(stats["half_width"] if math.isfinite(stats["half_width"]) else 0.0)
        ax.errorbar(xs, ys, yerr=errs, fmt="-o", ms=5, capsize=4, label=series)
    if log_x:
        ax.set_xscale("log", base=2)
    if lr_range is not None:
        ax.set_ylim(lr_range[0] - 0.5, lr_range[1] + 0.5)
    ax.set_xticks([position[v] for v in values])
    ax.set_xticklabels([str(v) for v in values])
    ax.minorticks_off()
    ax.margins(x=0.08)
    ax.set_xlabel(axis_title(axis))
    ax.set_ylabel("best log2 learning rate")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=9)
    ax.set_title(title or f"best learning rate vs {axis_title(axis)}\n(mean over seeds, {CI_LEVEL:.0%} CI)",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


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
            # the figure's curves per seed, for W&B (mugpt.training.run.publish_to_wandb)
            "curves": {"axis": AXIS_WORDS.get(axis, axis), "by_seed": seed_curves(rows, axis, group)},
            "files": [out / "mutransfer.csv", out / "mutransfer.png", out / "mutransfer_transfer.png",
                      out / "mutransfer.json"]}


# --------------------------------------------------------------------------- the one-command procedure
# The axes a target may differ from its donor on: (the name in conf/mutransfer.yaml's donor_X/target_X, the
# training config key it sets).
SHAPE = (("width", "model.width"), ("depth", "model.n_layer"), ("steps", "trainer.max_steps"),
         ("batch_size", "data.batch_size"))
LR_KEYS = ("lr_log2", "optim.lr")


def _flatten(search: Mapping[str, Any], prefix: str = "") -> dict[str, Sequence[Any]]:
    """{"parametrization": {"output_mult": [..]}} (what `+search.parametrization.output_mult=[..]` makes)
    -> {"parametrization.output_mult": [..]}."""
    flat: dict[str, Sequence[Any]] = {}
    for key, value in search.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def grid(search: Mapping[str, Any], name: str = "search") -> list[list[str]]:
    """All combinations of a {override: [values]} search space, as lists of Hydra overrides; `name` is the
    option the space came from, for the error."""
    combos: list[list[str]] = [[]]
    for key, values in _flatten(search).items():
        if not isinstance(values, (list, tuple)):
            raise ValueError(f"{name}.{key}={values}: give a list of values, e.g. [{values}]")
        if not values:
            raise ValueError(f"{name}.{key}: give at least one value")
        combos = [c + [f"{key}={v}"] for c in combos for v in values]
    return combos


def _settings(overrides: Sequence[str]) -> dict[str, Any]:
    """["lr_log2=-7", "model.init_std=0.02"] -> {"lr_log2": -7, "model.init_std": 0.02}, values read as YAML
    (so `-7` and `-7.0` are one setting)."""
    return {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in overrides)}


def _merge(overrides: Sequence[str], combo: Sequence[str]) -> list[str]:
    """The donor's chosen overrides with `combo`'s keys replaced (or added): a target-search point."""
    merged = dict(o.split("=", 1) for o in overrides)
    merged.update(o.split("=", 1) for o in combo)
    return [f"{k}={v}" for k, v in merged.items()]


def chosen_settings(result: Mapping[str, Any]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """From run_pipeline's result: the searched config keys other than the learning rate, and each
    parametrization's chosen values of them (to draw the donor's curve at the settings it picked)."""
    chosen: dict[str, dict[str, Any]] = {}
    for param, r in result["parametrizations"].items():
        chosen[param] = {k: v for k, v in _settings(r["donor_best"]).items() if k not in LR_KEYS}
    keys = sorted({k for values in chosen.values() for k in values})
    return keys, chosen


def _positive_int(cfg: Any, name: str, unset: str) -> int | None:
    value = cfg.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}={value}: must be a positive integer (or null: {unset})")
    return value


def _compose_training(overrides: list[str]) -> Any:
    from mugpt.config import compose_training_config

    return compose_training_config([*overrides, "output_dir=unused"])


def transfer_shapes(cfg: Any, compose: Callable[[list[str]], Any] | None = None) -> tuple[dict, dict]:
    """The donor's and the target's width, depth, steps and batch size ({"width": 64, "depth": 2, ...}).

    donor_width is required; donor_depth/steps/batch_size null are the training experiment's (with `overrides`),
    read by composing it only where the target sets that axis (then the donor's value is needed: µP's
    base_depth, the batch rule's base_batch, the report); elsewhere they stay None and both runs use the
    experiment's. target_X null is the donor's. Refused, in one line naming the option: a value that is not a
    positive integer, a narrower or shallower target (µTransfer tunes small and transfers up; run length and
    batch may go either way), and a target that is the donor on every axis."""
    donor = {axis: _positive_int(cfg, f"donor_{axis}", "the training experiment's") for axis, _ in SHAPE}
    target = {axis: _positive_int(cfg, f"target_{axis}", "the donor's") for axis, _ in SHAPE}
    if donor["width"] is None:
        raise ValueError("donor_width: required (a positive integer, µP's base width)")
    unknown = [(axis, key) for axis, key in SHAPE if target[axis] is not None and donor[axis] is None]
    if unknown:
        overrides = [f"+experiment={cfg.training_experiment}", *cfg.overrides]
        config = (compose or _compose_training)(overrides)
        for axis, key in unknown:
            donor[axis] = int(OmegaConf.select(config, key))
    target = {axis: donor[axis] if target[axis] is None else target[axis] for axis, _ in SHAPE}
    if target["width"] < donor["width"]:
        raise ValueError(f"target_width={target['width']}: narrower than donor_width={donor['width']} (µTransfer "
                         f"tunes the small model and transfers up)")
    if donor["depth"] is not None and target["depth"] < donor["depth"]:
        raise ValueError(f"target_depth={target['depth']}: shallower than the donor's depth {donor['depth']} "
                         f"(µTransfer tunes the small model and transfers up)")
    if donor == target:
        raise ValueError(f"target_width, target_depth, target_steps, target_batch_size: the target is the donor on "
                         f"every axis ({_shape_text(donor)}); give at least one of them another value")
    return donor, target


def _shape_text(shape: Mapping[str, int | None]) -> str:
    """`width 64, depth 2`: the axes that are known (an unknown one is the training experiment's)."""
    return ", ".join(f"{axis.replace('_', ' ')} {shape[axis]}" for axis, _ in SHAPE if shape.get(axis) is not None)


def _shape_overrides(shape: Mapping[str, int | None]) -> list[str]:
    return [f"{key}={shape[axis]}" for axis, key in SHAPE if shape[axis] is not None]


def report_axis(result: Mapping[str, Any]) -> str:
    """The axis the pipeline's report measures transfer along: the first one on which the target differs (width,
    then depth, steps, batch), as a key mutransfer_report reads (`width`, `model.n_layer`, ...)."""
    for axis, key in SHAPE:
        if result["donor"][axis] != result["target"][axis]:
            return "width" if axis == "width" else key
    return "width"


Job = tuple[list[str], Path]  # one training run: its overrides and its output directory


def run_each(run: Callable[[list[str], Path], Mapping[str, Any]]) -> Callable[[Sequence[Job]], list[Mapping]]:
    """A stage's runs one after another in this process: the default way to train a stage's batch of runs."""
    return lambda jobs: [run(overrides, folder) for overrides, folder in jobs]


def _train_stage(run_many: Callable[[Sequence[Job]], list[Mapping]], settings: Sequence[tuple[list[str], Path, str]],
                 seeds: Sequence[int]) -> list[tuple[list[float], list[str]]]:
    """Every setting over the seeds, each run in folder/STEMseedN, given to `run_many` as one batch (a launcher
    may run them side by side): per setting, per seed its val loss (+inf when it diverged or failed) and status."""
    jobs = [([*overrides, f"seed={seed}"], folder / f"{stem}seed{seed}")
            for overrides, folder, stem in settings for seed in seeds]
    summaries = iter(run_many(jobs))
    results = []
    for _ in settings:
        losses, statuses = [], []
        for _seed in seeds:
            summary = next(summaries)
            ok = summary["status"] == "completed" and math.isfinite(summary.get("val_loss", math.nan))
            losses.append(summary["val_loss"] if ok else math.inf)
            statuses.append(summary["status"])
        results.append((losses, statuses))
    return results


def _lr_curve(trials: Sequence[Mapping[str, Any]], best: Mapping[str, Any]) -> dict[float, float]:
    """{lr: loss} along the trials that share the best's other settings (empty when the search has no
    learning rate)."""
    chosen = _settings(best["overrides"])
    key = next((k for k in LR_KEYS if k in chosen), None)
    if key is None:
        return {}
    others = {k: v for k, v in chosen.items() if k != key}
    curve = {}
    for t in trials:
        s = _settings(t["overrides"])
        if {k: v for k, v in s.items() if k != key} == others:
            curve[2.0 ** float(s[key]) if key == "lr_log2" else float(s[key])] = t["val_loss"]
    return dict(sorted(curve.items()))


def _refined_log2_lr(trials: Sequence[Mapping[str, Any]], best: Mapping[str, Any]) -> float:
    """The parabola-refined best log2 lr along the trials that share the best's other settings (nan when the
    search has no learning rate)."""
    curve = _lr_curve(trials, best)
    return best_log2_lr(curve)[1] if curve else math.nan


def _lr_edge(trials: Sequence[Mapping[str, Any]], best: Mapping[str, Any]) -> str | None:
    """'lowest'/'highest' when the best trial's learning rate is at that end of the rates tried beside it."""
    curve = _lr_curve(trials, best)
    return grid_edge(list(curve), best_log2_lr(curve)[0]) if curve else None


def _trial(overrides: list[str], losses: list[float]) -> dict[str, Any]:
    return {"overrides": overrides, "val_loss": float(np.mean(losses)), "seed_losses": losses}


def run_pipeline(cfg: Any, run: Callable[[list[str], Path], Mapping[str, Any]],
                 check: Callable[[list[str]], None] | None = None,
                 compose: Callable[[list[str]], Any] | None = None,
                 run_many: Callable[[Sequence[Job]], list[Mapping]] | None = None) -> dict:
    """Donor sweep → best hyperparameters → target runs (→ the target's own tuning), per parametrization.

    cfg: shaped like conf/mutransfer.yaml. run(overrides, output_dir) -> summary dict trains one model (the
    script passes mugpt.training.train.train on a composed config). check(overrides), if given, raises on a config
    that cannot run; every donor run, the target and every target-search run are checked before the first run
    trains. compose(overrides) -> the composed training config, to read the donor's depth, steps or batch from
    the training experiment when the target sets one and donor_X is null (default: mugpt.config's composer; the
    script passes Hydra's compose inside its own app). run_many(jobs) -> their summaries, in order: how each
    stage's batch of runs (the donor grid × seeds, the target's seeds, its search × seeds) is trained; default
    `run` on each in turn; the script's launcher=ray runs them side by side. Returns the result also written to
    OUTPUT/transfer.json and printed by the script.

    With `target_search` (e.g. {lr_log2: [...]}) the target is also trained at each of those points, the donor's
    other choices kept, so that the transferred settings are measured against the target's own tuned optimum:
    the regret, mean and per seed."""
    out = Path(cfg.output_dir)
    seeds = list(cfg.seeds)
    donor, target = transfer_shapes(cfg, compose)
    shared = OmegaConf.to_container(cfg.search, resolve=True)
    # options only one parametrization has (µP's multipliers) are searched for that one alone
    own = cfg.get("search_by_parametrization")
    own = OmegaConf.to_container(own, resolve=True) if own else {}
    target_search = cfg.get("target_search")
    target_search = OmegaConf.to_container(target_search, resolve=True) if target_search else {}
    if not isinstance(target_search, Mapping):
        raise ValueError(f"target_search={target_search}: give {{key: [values]}}, e.g. {{lr_log2: [-9, -8, -7]}}")
    target_plan = grid(target_search, "target_search") if target_search else []
    # µP's base width and depth are the donor's: there µP and SP are the same model, and the donor's tuning is
    # µP's. `++`: SP's parametrization config has no base_depth key (it accepts µP's options and ignores them).
    base = [f"+experiment={cfg.training_experiment}", f"parametrization.base_width={donor['width']}"]
    if donor["depth"] != target["depth"]:
        base.append(f"++parametrization.base_depth={donor['depth']}")
    if donor["batch_size"] != target["batch_size"]:  # optim.batch_lr_rule's reference (ignored by rule none)
        base.append(f"optim.base_batch={donor['batch_size']}")
    base += list(cfg.overrides)
    donor_shape, target_shape = _shape_overrides(donor), _shape_overrides(target)
    result: dict[str, Any] = {"donor_width": donor["width"], "target_width": target["width"], "donor": donor,
                              "target": target, "seeds": seeds, "parametrizations": {}}
    # merged key by key: µP's `model.x` must not replace the shared search's whole `model` subtree
    plans = {param: grid({**_flatten(shared), **_flatten(own.get(param) or {})}) for param in cfg.parametrizations}
    if check is not None:  # a target that cannot be built must not be found after an hour of donor runs
        for param, combos in plans.items():
            for combo in combos:
                check([*base, f"parametrization={param}", *donor_shape, *combo])
            check([*base, f"parametrization={param}", *target_shape, *combos[0]])
            for combo in target_plan:
                check([*base, f"parametrization={param}", *target_shape, *_merge(combos[0], combo)])
    run_many = run_many or run_each(run)
    for param, combos in plans.items():
        donors = _train_stage(run_many, [([*base, f"parametrization={param}", *donor_shape, *combo],
                                          out / param / "donor", f"{i}_") for i, combo in enumerate(combos)], seeds)
        trials = [_trial(combo, losses) for combo, (losses, _) in zip(combos, donors)]
        best = min(trials, key=lambda t: t["val_loss"])
        if not math.isfinite(best["val_loss"]):
            raise RuntimeError(f"parametrization={param}: every donor run diverged or failed; widen the search")
        transferred = best["overrides"]
        [(losses, statuses)] = _train_stage(run_many, [([*base, f"parametrization={param}", *target_shape,
                                                          *transferred], out / param / "target", "")], seeds)
        r: dict[str, Any] = {
            "donor_trials": trials, "donor_best": transferred, "donor_loss": best["val_loss"],
            "donor_best_log2_lr": _refined_log2_lr(trials, best), "donor_edge": _lr_edge(trials, best),
            "target_statuses": statuses, "target_losses": losses,
            "target_loss": float(np.mean(losses)) if all(s == "completed" for s in statuses) else math.nan,
            "target_loss_sd": mean_ci(losses)["sd"],
        }
        if target_plan:
            points = [(i, _merge(transferred, combo)) for i, combo in enumerate(target_plan)]
            # the transferred point is already trained: the target itself
            todo = [(i, o) for i, o in points if _settings(o) != _settings(transferred)]
            searched = _train_stage(run_many, [([*base, f"parametrization={param}", *target_shape, *o],
                                                out / param / "target_search", f"{i}_") for i, o in todo], seeds)
            trained = {i: point for (i, _), (point, _) in zip(todo, searched)}
            tuned = [_trial(o, trained.get(i, losses)) for i, o in points]
            own_best = min(tuned, key=lambda t: t["val_loss"])
            seed_best = [min(t["seed_losses"][j] for t in tuned) for j in range(len(seeds))]
            r.update({
                "target_search_trials": tuned, "target_best": own_best["overrides"],
                "target_best_loss": own_best["val_loss"], "target_best_loss_sd": mean_ci(own_best["seed_losses"])["sd"],
                "target_best_log2_lr": _refined_log2_lr(tuned, own_best), "target_edge": _lr_edge(tuned, own_best),
                "regret": float(np.mean(losses)) - own_best["val_loss"],
                "regret_seeds": mean_ci(loss - b for loss, b in zip(losses, seed_best)),
                "regret_seeds_vs_mean_best": mean_ci(loss - own_best["val_loss"] for loss in losses),
            })
        result["parametrizations"][param] = r
    (out / "transfer.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def _statuses_text(statuses: Sequence[str]) -> str:
    counts = dict.fromkeys(statuses, 0)
    for s in statuses:
        counts[s] += 1
    return ", ".join(f"{n} {s}" for s, n in counts.items())


def _log2_text(x: float) -> str:
    return f" (log2 lr {x:+.2f})" if math.isfinite(x) else ""


def transfer_text(result: Mapping[str, Any]) -> str:
    """`donor width 64, depth 2 → target width 64, depth 8`: the known axes of both (an axis neither sets is the
    training experiment's)."""
    donor = result.get("donor") or {"width": result["donor_width"]}
    target = result.get("target") or {"width": result["target_width"]}
    return f"donor {_shape_text(donor)} → target {_shape_text(target)}"


def format_pipeline(result: Mapping[str, Any]) -> str:
    """Per parametrization: the donor's choice and loss, the target's loss with it (mean ± sd over seeds), and
    with target_search the target's own best and the regret of the transferred settings (± 95% CI)."""
    seeds = result.get("seeds")
    lines = [transfer_text(result)
             + (f" ({len(seeds)} seed{'s' if len(seeds) != 1 else ''}: {', '.join(map(str, seeds))})"
                if seeds else "")]
    for param, r in result["parametrizations"].items():
        losses = r.get("target_losses", [r["target_loss"]])
        lines.append(param)
        lines.append(f"  donor best     {' '.join(r['donor_best'])}{_log2_text(r.get('donor_best_log2_lr', math.nan))}"
                     f"   loss {r['donor_loss']:.4f}")
        if r.get("donor_edge"):
            lines.append(f"  warning: donor's {edge_warning(r['donor_edge'], 2.0 ** r['donor_best_log2_lr'])}")
        lines.append(f"  target         loss {format_sd(mean_ci(losses))}   {_statuses_text(r['target_statuses'])}")
        if "target_best" in r:
            best = mean_ci(next(t["seed_losses"] for t in r["target_search_trials"]
                                if t["overrides"] == r["target_best"]))
            lines.append(f"  target's best  {' '.join(r['target_best'])}{_log2_text(r['target_best_log2_lr'])}"
                         f"   loss {format_sd(best)}")
            per_seed = format_ci(r["regret_seeds"], ".4f", "nats")
            lines.append(f"  regret         {r['regret']:.4f} nats; per seed {per_seed} vs each seed's own best")
            if r.get("target_edge"):
                lines.append(f"  warning: target's {edge_warning(r['target_edge'], 2.0 ** r['target_best_log2_lr'])}")
        else:
            lines.append("  target's best  not searched (set target_search, e.g. {lr_log2: [...]}, for the regret)")
    lines.append(verdict(result))
    return "\n".join(lines)


def verdict(result: Mapping[str, Any]) -> str:
    """The pipeline's answer in one line: per parametrization the donor's choice, the target's loss with it and,
    when the target was searched, the regret; then which parametrization's target came out best."""
    parts, losses = [], {}
    for param, r in result["parametrizations"].items():
        text = f"{param}: donor's {' '.join(r['donor_best'])}{' (grid edge)' if r.get('donor_edge') else ''}"
        if math.isfinite(r["target_loss"]):
            losses[param] = r["target_loss"]
            text += f" -> target loss {r['target_loss']:.4f}"
        else:
            text += f" -> target {_statuses_text(r['target_statuses'])}"
        if "regret" in r:
            text += f", regret {r['regret']:.4f} nats{' (grid edge)' if r.get('target_edge') else ''}"
        parts.append(text)
    best = f"; best target: {min(losses, key=losses.__getitem__)}" if len(losses) > 1 else ""
    return "verdict: " + "; ".join(parts) + best


# --------------------------------------------------------------------------- µP's defaults
def grid_optima(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[tuple, dict[str, Any]]:
    """For each combination of `keys` (over one donor's runs): the best seed-mean loss over the learning rates
    tried, and the log2 lr that reached it. A diverged or failed run counts as no loss (inf)."""
    losses: dict[tuple, dict[float, list[float]]] = {}
    for r in rows:
        combo = tuple(r[k] for k in keys)
        losses.setdefault(combo, {}).setdefault(math.log2(r["lr"]), []).append(_loss(r))
    optima = {}
    for combo, by_lr in losses.items():
        curve = {lr: sum(v) / len(v) for lr, v in by_lr.items()}
        lr = min(curve, key=curve.get)
        optima[combo] = {"loss": curve[lr], "log2_lr": lr}
    return optima


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _cell(optimum: Mapping[str, Any] | None) -> str:
    if optimum is None:
        return ""
    return f"{optimum['loss']:.3f} (2^{optimum['log2_lr']:g})" if math.isfinite(optimum["loss"]) else "diverged"


def defaults_table(settings: Mapping[str, Sequence[Mapping[str, Any]]], default: Sequence[Any],
                   keys: Sequence[str]) -> tuple[list[dict[str, Any]], str]:
    """How far a candidate default (one value per key) is from each setting's own optimum over its grid, the
    learning rate tuned in both: one row per setting, and the text of a table per setting (the best loss over the
    learning rates at each combination: the last key across, the others down) with that summary."""
    rows, lines = [], []
    default = tuple(default)
    for name, runs in settings.items():
        optima = grid_optima(runs, keys)
        best = min(optima, key=lambda c: optima[c]["loss"])
        ours = optima.get(default)
        rows.append({"setting": name, "best": dict(zip(keys, best)), "best_loss": optima[best]["loss"],
                     "best_log2_lr": optima[best]["log2_lr"],
                     "default_loss": ours["loss"] if ours else math.nan,
                     "default_log2_lr": ours["log2_lr"] if ours else math.nan,
                     "gap": ours["loss"] - optima[best]["loss"] if ours else math.nan})
        down = _order({c[:-1] for c in optima})
        across = _order({c[-1] for c in optima})
        lines.append(f"{name}: best loss over the lrs tried, at 2^lr ({', '.join(map(_short, keys[:-1]))} down, "
                     f"{_short(keys[-1])} across)")
        lines.append(" " * 14 + "".join(f"{a!s:>16}" for a in across))
        for d in down:
            cells = [optima.get((*d, a)) for a in across]
            lines.append(f"{' '.join(map(str, d)):>14}" + "".join(
                _cell(c).rjust(16) for c in cells))
    lines.append("")
    lines.append(f"default {', '.join(f'{_short(k)}={v:g}' for k, v in zip(keys, default))}: its gap to each "
                 f"setting's optimum (lr tuned in both)")
    for r in rows:
        best = ", ".join(f"{_short(k)}={v:g}" for k, v in r["best"].items())
        lines.append(f"  {r['setting']:<10} optimum {best}: {r['best_loss']:.3f} at 2^{r['best_log2_lr']:g}; "
                     f"default {r['default_loss']:.3f} at 2^{r['default_log2_lr']:g}: gap {r['gap']:+.3f}")
    return rows, "\n".join(lines)
