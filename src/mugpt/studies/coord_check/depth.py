"""The coordinate check along depth (CompleteP, Dey et al. 2025): per parametrization, depth, step and module
kind (the mean over blocks, and the last block's stream) the mean |x| and the update size mean |x_t - x_0|,
their slopes against log2 depth, the table and the figure."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from mugpt.core.model import GPTConfig
from mugpt.core.optim import mup_family
from mugpt.core.parametrization import get_parametrization, parametrization_class
from mugpt.studies.coord_check.shared import (
    _log_log_panel,
    check_steps,
    model_configs,
    pyplot,
    save_figure,
    shared_batches,
    step_colours,
    step_handles,
    sweep,
    trace_updates,
)
from mugpt.studies.coord_check.width import compute_slopes
from mugpt.training.probe import module_kind

# The depth axis (axis=depth). Its CSV has one row per (parametrization, depth, step, module kind, seed), with the
# activation's size and its update's size side by side; the width axis's CSV keeps its own columns.
DEPTH_CSV_COLUMNS = ("parametrization", "depth", "step", "module", "seed", "l1", "update_l1")
DEPTH_SLOPE_COLUMNS = ("parametrization", "quantity", "step", "module", "slope", "seed_sd", "n_seeds")
QUANTITIES = {"l1": "mean |x|", "update_l1": "mean |x_t - x_0|"}
# Per-block modules averaged over the blocks (so that depths compare), plus the stream the last block hands on.
DEPTH_KINDS = ("embedding", "attn", "mlp", "residual", "residual_last", "logits")
DEPTH_KIND_TITLES = {
    "embedding": "embedding output",
    "attn": "attention output (block mean)",
    "mlp": "MLP output (block mean)",
    "residual": "residual stream (block mean)",
    "residual_last": "residual stream, last block",
    "logits": "logits",
}
DEPTH_PARAM_TITLES = {"mup_alpha0": "µP, α = 0 (width only)", "depth_mup": "depth-µP, α = 1/2",
                      "completep": "CompleteP, α = 1"}


def aggregate_by_kind(values: Mapping[str, float]) -> dict[str, float]:
    """Per-module values → one per module kind, comparable across depths: embedding and logits as they are,
    attn/mlp/residual the mean over blocks, residual_last the last block's output (what the final LayerNorm
    and the readout see). A kind with no module (no blocks) is left out.

    Read the stream's depth scaling off residual_last: where every block adds an equal share, block i's stream
    holds (i+1)/L of what the last one does, so the block mean is (L+1)/(2L) of it, 1 at L = 1 and 1/2 as L
    grows (a slope of about -0.2 over depths 2-16 even when residual_last is flat)."""
    out: dict[str, float] = {}
    for kind in DEPTH_KINDS:
        if kind == "residual_last":
            blocks = [name for name in values if module_kind(name) == "residual"]
            if blocks:
                out[kind] = values[max(blocks, key=lambda name: int(name.split(".")[0].removeprefix("block")))]
            continue
        members = [v for name, v in values.items() if module_kind(name) == kind]
        if members:
            out[kind] = float(np.mean(members))
    return out


def plan_depth_traces(parametrizations: Mapping[str, Mapping[str, Any]], model_cfg: Mapping[str, Any],
                      depths: Sequence[Any], steps: int, vocab_size: int,
                      optim: Any = None) -> tuple[list[GPTConfig], dict[str, dict]]:
    """Each depth's model config (sorted by depth, all at model_cfg's width) and each parametrization's options,
    all checked: a depth or option that cannot run is refused before any model trains.

    base_width null → model.width: the width rules are the identity, only depth is varied. base_depth null →
    the smallest depth (options_for_depths). At depth_alpha 0 there is no depth rule: width-only µP as training
    runs it by default, the baseline CompleteP is compared with."""
    for d in depths:
        if isinstance(d, bool) or not isinstance(d, int) or d <= 0:
            raise ValueError(f"depths: {d!r} is not a positive integer (a depth is model.n_layer)")
    depths = sorted(set(depths))
    if len(depths) < 2:
        raise ValueError(f"depths: a depth coordinate check needs at least two distinct depths, got {depths}")
    check_steps(steps)
    if not parametrizations:
        raise ValueError("depth_parametrizations: nothing to compare (give at least one)")
    configs = model_configs(model_cfg, vocab_size, "depth", depths)
    width = configs[0].width
    plans = {}
    for label, options in parametrizations.items():
        cls = parametrization_class(options["name"])
        options = cls.options_for_depths(cls.options_for_widths(dict(options), [width]), depths)
        rule = get_parametrization(options)  # refuses a bad option before any model trains
        if optim is not None:
            rule.check_family(mup_family(optim.name, optim))  # e.g. SGD has no depth rule
        plans[label] = options
    return configs, plans


def depth_list(cfg: DictConfig) -> list:
    if not OmegaConf.is_list(cfg.get("depths")):
        raise ValueError(f"depths must be a list of model.n_layer values, e.g. [2,4,8], got {cfg.get('depths')!r}")
    return list(cfg.depths)


def run_depth_traces(parametrizations: Mapping[str, Mapping[str, Any]], model_cfg: Mapping[str, Any],
                     optim_cfg: Any, depths: Sequence[int], seeds: Sequence[int], steps: int, tokens: np.ndarray,
                     vocab_size: int, batch_size: int, data_seed: int, device: str = "cpu") -> list[dict]:
    """The depth sweep, as CSV rows (dicts with DEPTH_CSV_COLUMNS): one per parametrization, depth, step, module
    kind (aggregate_by_kind) and seed, with the activation's mean |x| and its update's mean |x_t - x_0|."""
    configs, plans = plan_depth_traces(parametrizations, model_cfg, depths, steps, vocab_size,
                                       optim=optim_cfg)
    probe_x, train_batches = shared_batches(tokens, steps, batch_size, configs[0].block_size, data_seed)

    def trace(options: Mapping[str, Any], config: GPTConfig, seed: int) -> list[dict[str, dict[str, float]]]:
        return trace_updates(options, config, optim_cfg, train_batches, probe_x, steps, seed, device)

    rows = []
    for label, config, seed, values_by_step in sweep(plans, configs, seeds, "depth", trace):
        for step, values in enumerate(values_by_step):
            l1, update = aggregate_by_kind(values["l1"]), aggregate_by_kind(values["update_l1"])
            for module in l1:
                rows.append({"parametrization": label, "depth": config.n_layer, "step": step, "module": module,
                             "seed": seed, "l1": l1[module], "update_l1": update[module]})
    return rows


def compute_depth_slopes(rows: Iterable[Mapping[str, Any]]) -> list[dict]:
    """Slopes of log2(size) against log2(depth), for both quantities (DEPTH_SLOPE_COLUMNS): 0 = flat in depth,
    -1 = shrinks as 1/L, 1 = grows as L. Update sizes are 0 at step 0 by definition: no slope there."""
    rows = list(rows)
    out = []
    for quantity in QUANTITIES:
        for s in compute_slopes(rows, x="depth", y=quantity):
            if quantity == "l1" or s["step"] > 0:
                out.append({**s, "quantity": quantity})
    return out


def depth_table_steps(steps: Iterable[int]) -> list[tuple[str, int]]:
    """The (quantity, step) rows the depth table shows: sizes at init and at the last step, update sizes after
    the first update (before Adam's moments have history) and at the last step."""
    last = max(steps)
    return list(dict.fromkeys([("l1", 0), ("l1", last), ("update_l1", min(1, last)), ("update_l1", last)]))


def format_depth_slope_table(slopes: Iterable[Mapping[str, Any]]) -> str:
    """A text table of compute_depth_slopes(): per parametrization and (quantity, step), the slope against
    log2 depth of each module kind, mean ± sd over seeds."""
    slopes = list(slopes)
    found = {(s["parametrization"], s["quantity"], int(s["step"]), s["module"]): s for s in slopes}
    params = list(dict.fromkeys(s["parametrization"] for s in slopes))
    kinds = [k for k in DEPTH_KINDS if any(s["module"] == k for s in slopes)]
    shown = [(q, t) for q, t in depth_table_steps(int(s["step"]) for s in slopes) if q == "l1" or t > 0]
    lines = [("parametrization", "quantity", "step", *kinds)]
    for param in params:
        for quantity, step in shown:
            cells = []
            for kind in kinds:
                s = found.get((param, quantity, step, kind))
                cells.append(f"{s['slope']:+.2f} ± {s['seed_sd']:.2f}" if s else "")
            lines.append((param, QUANTITIES[quantity], str(step), *cells))
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    fmt = lambda line: "  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(lines[0]), "  ".join("-" * w for w in widths), *map(fmt, lines[1:])])


def plot_depth_check(rows: Iterable[Mapping[str, Any]], path: Path, title: str = "") -> None:
    """Grid for the depth axis: one row per (quantity, parametrization), sizes above update sizes, one column per
    module kind; x = depth (log2), y = log. Colour = training step (mean over seeds). Rows of one quantity share
    each column's y range, so the parametrizations compare at a glance; the last step's slope is printed."""
    plt, Line2D = pyplot()
    rows = list(rows)
    params = list(dict.fromkeys(r["parametrization"] for r in rows))
    steps = sorted({int(r["step"]) for r in rows})
    depths = sorted({int(r["depth"]) for r in rows})
    kinds = [k for k in DEPTH_KINDS if any(r["module"] == k for r in rows)]
    colours = step_colours(plt, steps)
    values: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        for quantity in QUANTITIES:
            values[(quantity, r["parametrization"], r["module"], int(r["step"]), int(r["depth"]))].append(
                float(r[quantity]))
    mean = {k: float(np.mean(v)) for k, v in values.items()}
    slopes = {(s["quantity"], s["parametrization"], s["module"], s["step"]): s["slope"]
              for s in compute_depth_slopes(rows)}

    quantities = [q for q in QUANTITIES if q == "l1" or steps[-1] > 0]  # steps=1: no update to show
    panels = [(q, p) for q in quantities for p in params]
    fig, axes = plt.subplots(len(panels), len(kinds), figsize=(3.4 * len(kinds), 2.9 * len(panels) + 0.9),
                             sharex=True, squeeze=False)
    for i, (quantity, param) in enumerate(panels):
        shown = [t for t in steps if quantity == "l1" or t > 0]  # no update before the first step
        for j, kind in enumerate(kinds):
            ax = axes[i][j]
            for t in shown:
                ax.plot(depths, [mean.get((quantity, param, kind, t, d), math.nan) for d in depths], "-",
                        marker="o", ms=3, lw=1.5, color=colours[t])
            _log_log_panel(ax, depths, f"slope, step {steps[-1]}: "
                                       f"{slopes.get((quantity, param, kind, steps[-1]), math.nan):+.2f}")
            if i == 0:
                ax.set_title(DEPTH_KIND_TITLES.get(kind, kind), fontsize=11)
            if i == len(panels) - 1:
                ax.set_xlabel("depth (n_layer)")
            if j == 0:
                ax.set_ylabel(f"{DEPTH_PARAM_TITLES.get(param, param)}\n{QUANTITIES[quantity]}", fontsize=10)
    for quantity in quantities:  # one y range per (quantity, column)
        for j in range(len(kinds)):
            group = [axes[i][j] for i, (q, _) in enumerate(panels) if q == quantity]
            lows, highs = zip(*(ax.get_ylim() for ax in group))
            for ax in group:
                ax.set_ylim(min(lows), max(highs))

    save_figure(plt, fig, step_handles(Line2D, colours),
                title or "Depth coordinate check: size and update size vs depth after t training steps", 0.04, path)
