"""Where µP's defaults come from: each setting's optimum over a donor grid, against one candidate default."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from mugpt.studies.transfer.analysis import _loss, _order


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
