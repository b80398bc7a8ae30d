"""The coordinate check along width (Tensor Programs V, figure 5): per parametrization, width, step and module
the mean |x|, its slope against log2 width, the summary table and the figure."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mugpt.core.model import GPTConfig
from mugpt.core.parametrization import get_parametrization, parametrization_class, titles
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
    trace_one,
)
from mugpt.training.probe import module_kind

CSV_COLUMNS = ("parametrization", "width", "step", "module", "seed", "l1")
SLOPE_COLUMNS = ("parametrization", "step", "module", "slope", "seed_sd", "n_seeds")
MODULE_KINDS = ("embedding", "attn", "mlp", "residual", "logits")
KIND_TITLES = {
    "embedding": "embedding output",
    "attn": "attention output",
    "mlp": "MLP output",
    "residual": "residual stream (block output)",
    "logits": "logits",
}


def plan_traces(parametrizations: Mapping[str, Mapping[str, Any]], model_cfg: Mapping[str, Any],
                widths: Sequence[int], steps: int, vocab_size: int) -> tuple[list[GPTConfig], dict[str, dict]]:
    """Each width's model config (sorted by width) and each parametrization's options (µP's base width filled
    in), all checked: a width or option that cannot run is refused before any model trains."""
    widths = sorted(int(w) for w in widths)
    if len(widths) < 2:
        raise ValueError("widths: a coordinate check needs at least two widths")
    check_steps(steps)
    configs = model_configs(model_cfg, vocab_size, "width", widths)
    plans = {}
    for label, options in parametrizations.items():
        options = parametrization_class(options["name"]).options_for_widths(dict(options), widths)
        get_parametrization(options)  # refuses a bad option before any model trains
        plans[label] = options
    return configs, plans


def run_traces(parametrizations: Mapping[str, Mapping[str, Any]], model_cfg: Mapping[str, Any], optim_cfg: Any,
               widths: Sequence[int], seeds: Sequence[int], steps: int, tokens: np.ndarray, vocab_size: int,
               batch_size: int, data_seed: int, device: str = "cpu") -> list[dict]:
    """The whole sweep, as CSV rows (dicts with CSV_COLUMNS).

    parametrizations: label → parametrization options ({"name": "sp"} or {"name": "mup", ...}); a µP
        base_width of None means the smallest width. model_cfg: GPTConfig fields (width is swept)."""
    configs, plans = plan_traces(parametrizations, model_cfg, widths, steps, vocab_size)
    probe_x, train_batches = shared_batches(tokens, steps, batch_size, configs[0].block_size, data_seed)

    def trace(options: Mapping[str, Any], config: GPTConfig, seed: int) -> list[dict[str, float]]:
        return trace_one(options, config, optim_cfg, train_batches, probe_x, steps, seed, device)

    rows = []
    for label, config, seed, values_by_step in sweep(plans, configs, seeds, "width", trace):
        for step, values in enumerate(values_by_step):
            for module, l1 in values.items():
                rows.append({"parametrization": label, "width": config.width, "step": step, "module": module,
                             "seed": seed, "l1": l1})
    return rows


def compute_slopes(rows: Iterable[Mapping[str, Any]], x: str = "width", y: str = "l1") -> list[dict]:
    """Least-squares slope of log2(y) against log2(x) per (parametrization, step, module, seed), averaged over
    seeds (seed_sd: their standard deviation); by default l1 against width. Slope 0 = flat in width; 0.5 =
    grows as sqrt(width); 1 = linearly. A non-positive or non-finite value gives a NaN slope."""
    curves: dict[tuple, dict[int, float]] = defaultdict(dict)
    for r in rows:
        curves[(r["parametrization"], int(r["step"]), r["module"], int(r["seed"]))][int(r[x])] = float(r[y])
    per_seed: dict[tuple, list[float]] = defaultdict(list)
    for (param, step, module, _seed), curve in curves.items():
        w = np.array(sorted(curve), dtype=np.float64)
        y = np.array([curve[int(v)] for v in w], dtype=np.float64)
        if len(w) < 2 or not np.all(np.isfinite(y)) or np.any(y <= 0):
            slope = math.nan
        else:
            slope = float(np.polyfit(np.log2(w), np.log2(y), 1)[0])
        per_seed[(param, step, module)].append(slope)
    out = []
    for (param, step, module), slopes in per_seed.items():
        s = np.array(slopes)
        out.append({"parametrization": param, "step": step, "module": module, "slope": float(s.mean()),
                    "seed_sd": float(s.std()) if len(s) > 1 else 0.0, "n_seeds": len(s)})
    return out


def summarize_slopes(slopes: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per parametrization: the largest |slope| of a hidden module (all but the logits) at step 0 and over
    steps ≥ 1 (with where it occurs), the smallest block-output slope over steps ≥ 1, and the logits slopes."""
    by_param: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for s in slopes:
        by_param[s["parametrization"]].append(s)
    summary = {}
    for param, items in by_param.items():
        last = max(int(s["step"]) for s in items)
        hidden0 = [s for s in items if s["module"] != "logits" and int(s["step"]) == 0]
        hidden = [s for s in items if s["module"] != "logits" and int(s["step"]) >= 1]
        blocks = [s for s in hidden if s["module"].startswith("block")]
        logits = {int(s["step"]): s["slope"] for s in items if s["module"] == "logits"}
        worst = max(hidden, key=lambda s: abs(s["slope"]), default=None)
        summary[param] = {
            "max_abs_hidden_step0": max((abs(s["slope"]) for s in hidden0), default=math.nan),
            "max_abs_hidden": abs(worst["slope"]) if worst else math.nan,
            "max_abs_hidden_at": f"{worst['module']}@{worst['step']}" if worst else "",
            "min_block_slope": min((s["slope"] for s in blocks), default=math.nan),
            "logits_step0": logits.get(0, math.nan),
            "logits_last": logits.get(last, math.nan),
            "last_step": last,
        }
    return summary


def format_slope_table(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """A small text table of summarize_slopes(): slope of log2 mean|x| vs log2 width (0 = flat in width)."""
    header = ("parametrization", "max|slope| hidden, step 0", "max|slope| hidden, steps>=1", "(where)",
              "min block slope, steps>=1", "logits slope, step 0", "logits slope, last step")
    lines = [header]
    for param, s in summary.items():
        lines.append((param, f"{s['max_abs_hidden_step0']:.3f}", f"{s['max_abs_hidden']:.3f}",
                      s["max_abs_hidden_at"], f"{s['min_block_slope']:.3f}", f"{s['logits_step0']:.3f}",
                      f"{s['logits_last']:.3f} (step {s['last_step']})"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    fmt = lambda line: "  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(lines[0]), "  ".join("-" * w for w in widths), *map(fmt, lines[1:])])


def plot_coord_check(rows: Iterable[Mapping[str, Any]], path: Path, title: str = "") -> None:
    """Grid: one row per parametrization, one column per module kind; x = width (log2), y = mean |x| (log).
    Colour = training step (mean over seeds); line style = block index for per-block modules. Each column
    shares its y axis, so SP and µP compare at a glance; the slope at the last step is printed per panel."""
    plt, Line2D = pyplot()
    rows = list(rows)
    params = list(dict.fromkeys(r["parametrization"] for r in rows))
    steps = sorted({int(r["step"]) for r in rows})
    widths = sorted({int(r["width"]) for r in rows})
    modules = list(dict.fromkeys(r["module"] for r in rows))
    kinds = [k for k in MODULE_KINDS if any(module_kind(m) == k for m in modules)]
    n_blocks = len({m.split(".")[0] for m in modules if m.startswith("block")})
    styles = ["-", "--", ":", "-."]
    colours = step_colours(plt, steps)

    sums: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        sums[(r["parametrization"], r["module"], int(r["step"]), int(r["width"]))].append(float(r["l1"]))
    mean = {k: float(np.mean(v)) for k, v in sums.items()}
    slopes = {(s["parametrization"], s["module"], s["step"]): s["slope"] for s in compute_slopes(rows)}

    fig, axes = plt.subplots(len(params), len(kinds), figsize=(3.6 * len(kinds), 3.2 * len(params) + 0.9),
                             sharex=True, sharey="col", squeeze=False)
    for i, param in enumerate(params):
        for j, kind in enumerate(kinds):
            ax = axes[i][j]
            members = [m for m in modules if module_kind(m) == kind]
            for b, module in enumerate(members):
                for t in steps:
                    ys = [mean.get((param, module, t, w), math.nan) for w in widths]
                    ax.plot(widths, ys, styles[b % len(styles)], marker="o", ms=3, lw=1.5, color=colours[t])
            last = [slopes.get((param, m, steps[-1]), math.nan) for m in members]
            _log_log_panel(ax, widths, f"slope, step {steps[-1]}: " + ", ".join(f"{s:+.2f}" for s in last))
            if i == 0:
                ax.set_title(KIND_TITLES.get(kind, kind), fontsize=11)
            if i == len(params) - 1:
                ax.set_xlabel("width (d_model)")
            if j == 0:
                ax.set_ylabel(f"{titles().get(param, param)}\nmean |activation|", fontsize=10)

    handles = step_handles(Line2D, colours)
    if n_blocks > 1:
        handles += [Line2D([], [], color="0.3", ls=styles[b % len(styles)], label=f"block {b}")
                    for b in range(n_blocks)]
    save_figure(plt, fig, handles, title or "Coordinate check: mean |activation| vs width after t training steps",
                0.06, path)
