"""The sweep report's figures: loss against log2 lr per axis value, and the best lr against the axis."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mugpt.core.parametrization import titles
from mugpt.studies.stats import CI_LEVEL, mean_ci
from mugpt.studies.transfer.analysis import (
    AXIS_WORDS,
    _order,
    _series_order,
    _sort_key,
    axis_title,
    best_log2_lr,
    loss_curves,
    seed_curves,
)


def series_title(series: str) -> str:
    """A panel's title: the series' parametrization by its declared title (mugpt.core.parametrization), then the
    rest of the series' name (`mup tuned` → `µP (maximal update parametrization), tuned`)."""
    param, _, rest = series.partition(" ")
    return titles().get(param, param) + (f", {rest}" if rest else "")


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
        ax.set_title(series_title(series))
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
