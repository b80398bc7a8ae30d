"""Two sweeps of the same grid compared, seed by seed (scripts/compare_sweeps.py is its command line and says what
it reports): the paired gaps, each sweep's best lr per width, the table and the plot.
"""

import json
import math
import sys
from pathlib import Path

import numpy as np

from mugpt.studies.stats import format_ci, format_sd, mean_ci
from mugpt.studies.transfer import best_log2_lr, loss_curves, read_summaries, seed_curves


def compare(base_rows: list[dict], other_rows: list[dict]) -> dict:
    """{"gaps": [per (series, width, lr) in both], "best": [per (series, width) in both]}."""
    base, other = seed_curves(base_rows), seed_curves(other_rows)
    base_mean, other_mean = loss_curves(base_rows), loss_curves(other_rows)
    gaps, best = [], []
    for key in sorted(set(base) & set(other), key=lambda k: (k[0], k[1])):
        series, width = key
        seeds = sorted(set(base[key]) & set(other[key]))
        lrs = sorted(set(base_mean[key]) & set(other_mean[key]))
        for lr in lrs:
            a = [base[key][s].get(lr, math.nan) for s in seeds]
            b = [other[key][s].get(lr, math.nan) for s in seeds]
            both = [(x, y) for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)]
            gaps.append({"series": series, "width": width, "log2_lr": math.log2(lr), "base": mean_ci(a),
                         "other": mean_ci(b), "gap": mean_ci(y - x for x, y in both),
                         "diverged": [sum(v == math.inf for v in a), sum(v == math.inf for v in b)]})
        base_lr, _ = best_log2_lr(base_mean[key])
        other_lr, _ = best_log2_lr(other_mean[key])
        at_base_lr = [other[key][s].get(base_lr, math.nan) - base[key][s].get(base_lr, math.nan) for s in seeds]
        best.append({"series": series, "width": width, "base_log2_lr": math.log2(base_lr),
                     "other_log2_lr": math.log2(other_lr),
                     "base_loss": mean_ci(base[key][s].get(base_lr, math.nan) for s in seeds),
                     "other_loss": mean_ci(other[key][s].get(other_lr, math.nan) for s in seeds),
                     "gap_at_base_lr": mean_ci(at_base_lr)})
    if not best:
        raise ValueError("the two sweeps share no (parametrization, width): nothing to compare")
    return {"gaps": gaps, "best": best}


def _lr(x: float) -> str:
    return f"{x:+g}".replace("-", "−")


def format_compare(result: dict, labels: tuple[str, str]) -> str:
    base, other = labels
    lines = [f"Per (parametrization, width): each sweep's best log2 lr and its loss there (mean ± sd over seeds), "
             f"and {other} − {base} at {base}'s best lr (mean ± 95% CI over seeds, paired by seed).", "",
             f"| param. | width | best log2 lr {base} | best log2 lr {other} | best loss {base} | best loss {other} "
             f"| {other} − {base} at {base}'s lr |", "|---|---|---|---|---|---|---|"]
    for b in result["best"]:
        lines.append(f"| {b['series']} | {b['width']} | {_lr(b['base_log2_lr'])} | {_lr(b['other_log2_lr'])} | "
                     f"{format_sd(b['base_loss'], count=False)} | {format_sd(b['other_loss'], count=False)} | "
                     f"{format_ci(b['gap_at_base_lr'], '+.4f', count=False)} |")
    lines += ["", f"Every lr run in both: {other} − {base} (nats), mean ± 95% CI over the seeds that finished in both, "
              f"paired by seed; the losses: mean ± sd (inf where a seed diverged).", "",
              f"| param. | width | log2 lr | {base} | {other} | {other} − {base} | seeds | diverged {base} / {other} |",
              "|---|---|---|---|---|---|---|---|"]
    for g in result["gaps"]:
        lines.append(f"| {g['series']} | {g['width']} | {_lr(g['log2_lr'])} | {format_sd(g['base'], count=False)} | "
                     f"{format_sd(g['other'], count=False)} | {format_ci(g['gap'], '+.4f', count=False)} | "
                     f"{g['gap']['n']} | {g['diverged'][0]} / {g['diverged'][1]} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, labels: tuple[str, str], path: Path) -> None:
    """Loss against log2 lr per parametrization (BASE solid, OTHER dashed, one colour per width), and the paired
    gap with its CI below."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = list(dict.fromkeys(g["series"] for g in result["gaps"]))
    widths = sorted({g["width"] for g in result["gaps"]})
    colours = dict(zip(widths, plt.cm.viridis(np.linspace(0.1, 0.8, len(widths)))))
    fig, axes = plt.subplots(2, len(series), figsize=(4.8 * len(series), 6.4), squeeze=False, sharex="col")
    for col, name in enumerate(series):
        top, bottom = axes[0, col], axes[1, col]
        lows = []
        for width in widths:
            g = [x for x in result["gaps"] if x["series"] == name and x["width"] == width]
            if not g:
                continue
            x = [p["log2_lr"] for p in g]
            for which, style in (("base", "-"), ("other", "--")):
                y = [p[which]["mean"] for p in g]
                lows += [v for v in y if math.isfinite(v)]
                top.plot(x, y, style, marker="o", ms=3, color=colours[width],
                         label=f"width {width}, {labels[0] if which == 'base' else labels[1]}")
            gap = np.array([p["gap"]["mean"] for p in g])
            hw = np.nan_to_num(np.array([p["gap"]["half_width"] for p in g]))
            bottom.errorbar(x, gap, yerr=hw, marker="o", ms=3, capsize=3, color=colours[width], label=f"width {width}")
        if lows:
            top.set_ylim(min(lows) - 0.05, min(lows) + 0.8)
        top.set_title(name)
        top.set_ylabel("val loss")
        top.grid(alpha=0.3)
        bottom.axhline(0, color="k", lw=0.8)
        bottom.set_xlabel("log2 lr")
        bottom.set_ylabel(f"{labels[1]} − {labels[0]} (nats)")
        bottom.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{labels[1]} against {labels[0]} at every learning rate (mean over seeds; gap: 95% CI, paired)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare_sweeps(base: list[Path], other: list[Path], labels: tuple[str, str], out: Path | None = None) -> int:
    """BASE against OTHER (each a list of folders read as one sweep): the report into `out` (default: OTHER's first
    folder/compare), printed; 2 with a one-line error when the sweeps cannot be compared."""
    try:
        result = compare(read_summaries(base), read_summaries(other))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = out or other[0] / "compare"
    out.mkdir(parents=True, exist_ok=True)
    text = format_compare(result, labels)
    (out / "compare.md").write_text(text)
    (out / "compare.json").write_text(json.dumps({"labels": labels, **result}, indent=1, default=str) + "\n")
    plot(result, labels, out / "compare.png")
    print(text)
    print(f"report: {out}")
    return 0
