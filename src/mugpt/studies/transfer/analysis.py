"""The analysis of a sweep's rows: loss-vs-lr curves per series and axis value (seed-mean and per seed), the
parabola-refined best learning rate, its shift along the axis, the transfer regret, and the text report."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from mugpt.studies.stats import CI_LEVEL, format_ci, format_sd, mean_ci
from mugpt.studies.sweep import edge_warning, grid_edge

AXIS_WORDS = {"width": "width", "model.width": "width", "model.n_layer": "depth", "trainer.max_steps": "steps",
              "data.batch_size": "batch"}
AXIS_TITLES = {"width": "width (model.width)", "model.width": "width (model.width)",
               "model.n_layer": "depth (model.n_layer)", "trainer.max_steps": "training steps (trainer.max_steps)",
               "data.batch_size": "batch size (data.batch_size)"}

Curve = dict[float, float]  # lr -> validation loss


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
