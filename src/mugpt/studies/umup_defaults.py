"""u-µP's default multipliers, one at a time (scripts/umup_defaults.py is its command line and says what it reports):
each multiplier's slice of the runs, its best value at its best lr, the defaults' gap, the table and the plot.
"""

import json
import math
from pathlib import Path

import numpy as np

from mugpt.studies.stats import format_ci, format_sd, mean_ci
from mugpt.studies.transfer import best_log2_lr, loss_curves, read_summaries, seed_curves, write_csv

MULTIPLIERS = ("residual_mult", "residual_attn_ratio", "attn_softmax_mult", "ffn_act_mult", "loss_softmax_mult")
KEYS = tuple(f"parametrization.{m}" for m in MULTIPLIERS)


def one_at_a_time(rows: list[dict]) -> dict[str, list[dict]]:
    """multiplier -> its runs: those where every other multiplier is at its default 1 (the default runs belong
    to every multiplier)."""
    slices: dict[str, list[dict]] = {m: [] for m in MULTIPLIERS}
    for r in rows:
        if r["parametrization"] != "umup" or any(r.get(k) is None for k in KEYS):
            continue
        moved = [m for m, k in zip(MULTIPLIERS, KEYS) if float(r[k]) != 1.0]
        if len(moved) > 1:
            continue
        for m in moved or MULTIPLIERS:
            slices[m].append(r)
    return {m: runs for m, runs in slices.items() if runs}


def sensitivity(runs: list[dict], key: str) -> dict:
    """Per value of `key`: the seed-mean curve's best lr and loss, each seed's loss there; the default's gap.
    The curves are the µTransfer report's, along `key` (a failed run counts as inf)."""
    curves, per_seed = loss_curves(runs, axis=key), seed_curves(runs, axis=key)
    values = {}
    for (_, value), curve in sorted(curves.items(), key=lambda item: float(item[0][1])):
        best_lr, _ = best_log2_lr(curve)
        lrs = sorted(curve)
        seeds = {seed: c.get(best_lr, math.nan) for seed, c in per_seed[("umup", value)].items()}
        values[float(value)] = {"log2_lr": math.log2(best_lr), "edge": best_lr in (lrs[0], lrs[-1]) and len(lrs) > 1,
                                "seeds": seeds, "loss": mean_ci(seeds.values())}
    best = min(values, key=lambda v: values[v]["loss"]["mean"])
    default = values.get(1.0)
    gap = math.nan
    if default is not None:
        common = [s for s in default["seeds"] if s in values[best]["seeds"]]
        gap = mean_ci(default["seeds"][s] - values[best]["seeds"][s] for s in common)
    return {"values": values, "best": best, "gap": gap}


def format_table(result: dict[str, dict]) -> str:
    lines = ["Best loss over the lrs tried (seed mean ± sd; `*` = at the lr grid's edge); the default (1) and its gap "
             "to the best value (mean ± 95% CI over seeds, positive = default worse).", ""]
    values = sorted({v for r in result.values() for v in r["values"]})
    lines.append("| multiplier | " + " | ".join(f"{v:g}" for v in values) + " | best | default's gap (nats) |")
    lines.append("|---|" + "---|" * (len(values) + 2))
    for m, r in result.items():
        cells = []
        for v in values:
            s = r["values"].get(v)
            if s is None:
                cells.append("")
                continue
            loss = s["loss"]
            text = format_sd(loss, ".3f", count=False) if math.isfinite(loss["mean"]) else "diverged"
            cells.append(f"{text} (2^{s['log2_lr']:g}{'*' if s['edge'] else ''})")
        gap = r["gap"]
        gap_text = format_ci(gap, "+.3f") if isinstance(gap, dict) else "no default run"
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {r['best']:g} | {gap_text} |")
    return "\n".join(lines)


def plot(result: dict[str, dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(result), figsize=(3.2 * len(result), 3.0), squeeze=False, sharey=True)
    for ax, (m, r) in zip(axes[0], result.items()):
        xs = [v for v in r["values"] if math.isfinite(r["values"][v]["loss"]["mean"])]
        mean = [r["values"][v]["loss"]["mean"] for v in xs]
        sd = [r["values"][v]["loss"]["sd"] if r["values"][v]["loss"]["n"] > 1 else 0.0 for v in xs]
        ax.errorbar(np.log2(xs), mean, yerr=sd, marker="o", capsize=3)
        ax.axvline(0, color="grey", lw=0.8, ls=":")
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("log2 multiplier (0 = default)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("best val loss over lr (nats/byte)")
    fig.suptitle("u-µP's multipliers one at a time (mean ± sd over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def umup_defaults(sweep_dirs: list[str], out: str | Path | None = None) -> int:
    """The one-at-a-time sensitivity of u-µP's multipliers from the runs under `sweep_dirs`: the report into `out`
    (default: the first folder), printed; SystemExit with one line when there is nothing to read."""
    try:
        rows = read_summaries(sweep_dirs, KEYS)
    except FileNotFoundError as e:
        raise SystemExit(f"error: {e}") from None
    slices = one_at_a_time(rows)
    if not slices:
        raise SystemExit(f"error: no parametrization=umup runs with at most one multiplier moved under "
                         f"{', '.join(sweep_dirs)}")
    result = {m: sensitivity(runs, f"parametrization.{m}") for m, runs in slices.items()}
    out = Path(out or sweep_dirs[0])
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "umup_defaults.csv", KEYS)
    text = format_table(result)
    (out / "umup_defaults.md").write_text(text + "\n")
    (out / "umup_defaults.json").write_text(json.dumps(result, indent=2, default=float))
    plot(result, out / "umup_defaults.png")
    print(text)
    return 0
