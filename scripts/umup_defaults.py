"""Are u-µP's default multipliers near the swept optimum? `python scripts/umup_defaults.py SWEEP_DIR [...] [--out DIR]`.

u-µP's claim (Blake et al. 2025) is that its five multipliers (conf/parametrization/umup.yaml, all 1 by default) are
near-optimal as they stand and, being nearly independent, can be swept one at a time. The SWEEP_DIRs hold
one-at-a-time sweeps: runs of parametrization=umup where at most one multiplier differs from 1, over a few
learning rates and seeds, e.g. (the CPU µTransfer experiment's scale, untied and unclipped as u-µP runs):

    for m in residual_mult residual_attn_ratio attn_softmax_mult ffn_act_mult loss_softmax_mult; do
      python src/train.py -m +experiment=mutransfer_lr parametrization=umup "~parametrization.base_width" \\
        model.tie_embeddings=false optim.grad_clip=null lr_log2=-3,-2,-1 seed=0,1,2 \\
        parametrization.$m=0.25,0.5,2,4 logger=none hydra.sweep.dir=umup_defaults/$m
    done
    python src/train.py -m ... (the same, without a multiplier override) hydra.sweep.dir=umup_defaults/default
    # where a best value or lr sits on an edge, extend it into a new folder, e.g. for the README's table:
    #   ... lr_log2=-2,-1,0 parametrization.residual_mult=0.0625,0.125 hydra.sweep.dir=umup_defaults/residual_low
    #   ... lr_log2=0 parametrization.residual_mult=0.25,0.5 hydra.sweep.dir=umup_defaults/residual_lr0
    #   ... lr_log2=0 hydra.sweep.dir=umup_defaults/default_lr0
    python scripts/umup_defaults.py umup_defaults --out umup_defaults

For each multiplier and value it takes the best learning rate on the seed-mean curve, and reports the seed-mean
loss there, and the default's gap: per seed, the default's loss at its best lr minus the best value's loss at its
best lr (mean ± 95% CI over seeds; positive = the default is worse). Writes umup_defaults.md, .csv, .json and
umup_defaults.png (loss against each multiplier, mean ± sd over seeds) into --out.
"""

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from mugpt.studies.transfer import (
    best_log2_lr,
    format_ci,
    format_sd,
    loss_curves,
    mean_ci,
    read_summaries,
    seed_curves,
    write_csv,
)

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dirs", nargs="+", metavar="SWEEP_DIR")
    parser.add_argument("--out", default=None, help="where the report goes (default: the first SWEEP_DIR)")
    args = parser.parse_args(argv)
    try:
        rows = read_summaries(args.sweep_dirs, KEYS)
    except FileNotFoundError as e:
        raise SystemExit(f"error: {e}") from None
    slices = one_at_a_time(rows)
    if not slices:
        raise SystemExit(f"error: no parametrization=umup runs with at most one multiplier moved under "
                         f"{', '.join(args.sweep_dirs)}")
    result = {m: sensitivity(runs, f"parametrization.{m}") for m, runs in slices.items()}
    out = Path(args.out or args.sweep_dirs[0])
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "umup_defaults.csv", KEYS)
    text = format_table(result)
    (out / "umup_defaults.md").write_text(text + "\n")
    (out / "umup_defaults.json").write_text(json.dumps(result, indent=2, default=float))
    plot(result, out / "umup_defaults.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
