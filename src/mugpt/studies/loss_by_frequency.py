"""Training loss by token-frequency bucket, SGD against AdamW (scripts/loss_by_frequency.py is its command line,
conf/loss_by_frequency.yaml its options, and its docstring says what it runs and writes): the options, the two
runs they compose, the bucket and module-norm readers, and the plots.
"""

import csv
import logging
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from mugpt.config import compose_training_config, script_option
from mugpt.rundir import metrics_csv

OPTIMIZERS = ("sgd", "adamw")
TITLES = {"sgd": "SGD (Nesterov momentum 0.9)", "adamw": "AdamW"}
log = logging.getLogger("loss_by_frequency")


# ------------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class Options:
    """The checked options of conf/loss_by_frequency.yaml."""

    steps: int
    every: int
    buckets: int
    width: int
    n_layer: int
    n_head: int
    block_size: int
    batch_size: int
    sgd_lr: float | None
    adamw_lr: float | None
    seed: int
    smooth: int
    final_events: int
    threads: int | None
    plot_only: bool
    out: Path


def read_options(cfg: DictConfig) -> Options:
    """The typed, checked options: every refusal (one line naming KEY=VALUE) comes before anything trains."""
    ints = {k: script_option(cfg, k, int, positive=True) for k in
            ("steps", "every", "buckets", "width", "n_layer", "n_head", "block_size", "batch_size", "smooth",
             "final_events")}
    if ints["width"] % ints["n_head"]:
        raise ValueError(f"width={ints['width']}: not divisible by n_head={ints['n_head']}")
    if ints["every"] > ints["steps"]:
        raise ValueError(f"every={ints['every']}: more than steps={ints['steps']}, so nothing would be measured")
    opts = Options(**ints, sgd_lr=script_option(cfg, "sgd_lr", float, nullable=True, positive=True),
                   adamw_lr=script_option(cfg, "adamw_lr", float, nullable=True, positive=True),
                   seed=script_option(cfg, "seed", int),
                   threads=script_option(cfg, "threads", int, nullable=True, positive=True),
                   plot_only=script_option(cfg, "plot_only", bool), out=Path(script_option(cfg, "out", str)))
    if opts.plot_only:
        missing = [name for name in OPTIMIZERS if not metrics_csv(run_dir(opts, name)).is_file()]
        if missing:
            raise ValueError(f"plot_only=true: no {missing[0]} run to redraw in out={opts.out} "
                             f"({metrics_csv(run_dir(opts, missing[0]))} is missing); train it first (plot_only=false)")
    return opts


# --------------------------------------------------------------------------------------------- runs
def run_dir(opts: Options, name: str) -> Path:
    return opts.out / "runs" / name


def compose_run(name: str, opts: Options, output_dir: Path) -> DictConfig:
    overrides = [
        f"optim={name}", f"output_dir={output_dir}", "logger=csv", "diagnostics=on",
        f"diagnostics.every_n_steps={opts.every}", f"diagnostics.token_frequency_buckets={opts.buckets}",
        "model=small", f"model.width={opts.width}", f"model.n_layer={opts.n_layer}", f"model.n_head={opts.n_head}",
        f"model.block_size={opts.block_size}", "data.tokenizer=gpt2", f"data.batch_size={opts.batch_size}",
        "data.val_batches=2", f"trainer.max_steps={opts.steps}", f"eval_every={opts.steps}",
        "trainer.log_every_n_steps=10", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        f"seed={opts.seed}", "parametrization=sp", "checkpoint.every_n_steps=0",
    ]
    lr = {"sgd": opts.sgd_lr, "adamw": opts.adamw_lr}[name]
    if lr is not None:
        overrides.append(f"optim.lr={lr}")
    return compose_training_config(overrides)


def plan_runs(opts: Options) -> dict[str, DictConfig]:
    """Both runs' training configs (optimizer → config), checked as src/train.py would check them
    (mugpt.training.train.check_config) before the first one trains."""
    from mugpt.training.train import check_config

    cfgs = {}
    for name in OPTIMIZERS:
        cfgs[name] = compose_run(name, opts, run_dir(opts, name))
        try:
            check_config(cfgs[name])
        except ValueError as exc:
            raise ValueError(f"{exc} (in the run of optim={name})") from exc
    return cfgs


def bucket_table(cfg: DictConfig) -> list[dict]:
    """Token types and share of the training tokens in each bucket, as the run's diagnostics assign them."""
    from mugpt.training.diagnostics import frequency_buckets, token_counts
    from mugpt.training.train import build_datamodule

    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    counts = token_counts(dm.train_tokens, dm.vocab_size)
    buckets = frequency_buckets(counts, cfg.diagnostics.token_frequency_buckets)
    rows = []
    for k in range(cfg.diagnostics.token_frequency_buckets):
        member = counts[buckets == k]
        seen = member[member > 0]
        rows.append({"bucket": k, "token_types": int(len(member)), "seen_types": int(len(seen)),
                     "share": float(member.sum() / counts.sum()),
                     "min_count": int(seen.min()) if len(seen) else 0,
                     "max_count": int(seen.max()) if len(seen) else 0})
    return rows


def read_bucket_losses(output_dir: Path) -> list[tuple[int, int, float]]:
    """(step, bucket, loss) from a run's metrics.csv; step = its row = updates done before the measured batch."""
    out = []
    with open(metrics_csv(output_dir), newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key.startswith("freq_loss/bucket_") and value:
                    out.append((int(row["step"]), int(key.rsplit("_", 1)[1]), float(value)))
    return sorted(out)


def read_module_norms(output_dir: Path) -> list[dict]:
    """(step, kind, name, value) for every act/* and update/* entry of a run's metrics.csv."""
    out = []
    with open(metrics_csv(output_dir), newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if value and key.startswith(("act/", "update/")):
                    kind, name = key.split("/", 1)
                    out.append({"step": int(row["step"]), "kind": kind, "name": name, "value": float(value)})
    return out


def plot_module_norms(norms: dict[str, list[dict]], path: Path) -> None:
    """Mean |activation| and relative update size per module over the run, one column per optimizer: the
    coordinate check's quantities watched over a whole run instead of its first steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(norms), figsize=(6 * len(norms), 8), sharey="row", squeeze=False)
    for col, (optimizer, rows) in enumerate(norms.items()):
        for row, (kind, label) in enumerate((("act", "mean |activation|"), ("update", "||ΔW|| / ||W|| per event"))):
            ax = axes[row][col]
            for name in sorted({r["name"] for r in rows if r["kind"] == kind}):
                points = sorted((r["step"], r["value"]) for r in rows if r["kind"] == kind and r["name"] == name)
                ax.plot(*zip(*points), label=name, lw=1.2)
            ax.set_yscale("log")
            ax.set_xlabel("optimizer step")
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel(label)
            ax.set_title(f"{optimizer}: {label}", fontsize=10)
            ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def running_mean(values: np.ndarray, n: int) -> np.ndarray:
    """Mean of the last n values at each point (fewer at the start)."""
    c = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - n, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def final_losses(rows: list[dict], n_events: int) -> dict[tuple[str, int], float]:
    """(optimizer, bucket) → mean loss over its last n_events events."""
    series: dict[tuple[str, int], list[tuple[int, float]]] = defaultdict(list)
    for r in rows:
        series[(r["optimizer"], r["bucket"])].append((r["step"], r["loss"]))
    return {k: float(np.mean([loss for _, loss in sorted(v)[-n_events:]])) for k, v in series.items()}


def plot(rows: list[dict], final: dict, table: list[dict], path: Path, opts: Options, vocab: int,
         used_lr: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = opts.buckets
    cmap = plt.get_cmap("viridis")
    colour = {k: cmap(0.92 * k / max(1, n - 1)) for k in range(n)}
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.4), gridspec_kw={"width_ratios": [1, 1, 0.9]})
    for ax, name in zip(axes[:2], OPTIMIZERS):
        for k in range(n):
            pts = sorted((r["step"], r["loss"]) for r in rows if r["optimizer"] == name and r["bucket"] == k)
            if not pts:
                continue
            steps, losses = np.array(pts).T
            ax.plot(steps, running_mean(losses, opts.smooth), color=colour[k], lw=1.6,
                    label=f"{k}: {table[k]['token_types']:,} types" if name == OPTIMIZERS[0] else None)
        ax.axhline(math.log(vocab), color="grey", ls=":", lw=1)
        ax.set_title(TITLES[name])
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"training loss per bucket (running mean of {opts.smooth} events)")
    axes[1].sharey(axes[0])
    fig.legend(title="bucket (0 = most frequent): token types in it", fontsize=8, title_fontsize=8,
               loc="lower center", ncol=n, frameon=False)
    ax = axes[2]
    x = np.arange(n)
    for i, name in enumerate(OPTIMIZERS):
        ax.bar(x + (i - 0.5) * 0.4, [final.get((name, k), np.nan) for k in x], width=0.4, label=TITLES[name])
    ax.axhline(math.log(vocab), color="grey", ls=":", lw=1, label=f"ln V = {math.log(vocab):.2f} (uniform)")
    ax.set_xticks(x)
    ax.set_xlabel("token-frequency bucket (0 = most frequent)")
    ax.set_ylabel(f"final training loss (mean of last {opts.final_events} events)")
    ax.set_title(f"after {opts.steps} steps")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"Loss by token frequency, GPT-2 BPE Shakespeare: width {opts.width}, {opts.n_layer} layers, "
                 f"{opts.batch_size}×{opts.block_size} tokens/step, SP, default learning rates "
                 f"(SGD {used_lr['sgd']:g}, AdamW {used_lr['adamw']:g})", fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=130)
    plt.close(fig)


# -------------------------------------------------------------------------------------------- main
def loss_by_frequency(cfg: DictConfig) -> dict[tuple[str, int], float]:
    """The whole study from conf/loss_by_frequency.yaml's options (scripts/loss_by_frequency.py's Hydra entry point
    calls it; tests call it with a composed config); returns the final loss per (optimizer, bucket)."""
    try:  # every option and both runs' training configs checked before the first run trains
        opts = read_options(cfg)
        cfgs = plan_runs(opts)
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    for name in ("loss_by_frequency", "mugpt"):  # Hydra's handlers print them; Lightning prints its own lines
        logging.getLogger(name).setLevel(logging.INFO)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    from mugpt.training.train import train

    opts.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    used_lr: dict[str, float] = {}
    table: list[dict] = []
    for name, run_cfg in cfgs.items():
        used_lr[name] = float(run_cfg.optim.lr)
        if not table:
            table = bucket_table(run_cfg)
            for t in table:
                log.info("bucket %d: %6d token types (%5d seen), %.1f%% of training tokens, counts %d-%d",
                         t["bucket"], t["token_types"], t["seen_types"], 100 * t["share"], t["min_count"],
                         t["max_count"])
        if not opts.plot_only:
            start = time.perf_counter()
            summary = train(run_cfg)
            log.info("%s lr=%g: %s, train loss %.3f, val loss %.3f, %.0fs", name, run_cfg.optim.lr,
                     summary["status"], summary["train_loss"], summary["val_loss"], time.perf_counter() - start)
        rows += [{"optimizer": name, "step": s, "bucket": k, "loss": loss}
                 for s, k, loss in read_bucket_losses(run_dir(opts, name))]

    with open(opts.out / "loss_by_frequency.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["optimizer", "step", "bucket", "loss"])
        writer.writeheader()
        writer.writerows(rows)
    final = final_losses(rows, opts.final_events)
    with open(opts.out / "loss_by_frequency_final.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["optimizer", "bucket", "loss", "token_types", "share_of_tokens", "min_count", "max_count"])
        for name in OPTIMIZERS:
            for t in table:
                writer.writerow([name, t["bucket"], f"{final.get((name, t['bucket']), math.nan):.4f}",
                                 t["token_types"], f"{t['share']:.4f}", t["min_count"], t["max_count"]])
    vocab = 50257
    plot(rows, final, table, opts.out / "loss_by_frequency.png", opts, vocab, used_lr)
    print(f"\nfinal training loss by bucket (mean of the last {opts.final_events} events, of {opts.steps} steps):")
    print("bucket  " + "  ".join(f"{k:>6d}" for k in range(opts.buckets)))
    for name in OPTIMIZERS:
        print(f"{name:<7} " + "  ".join(f"{final.get((name, k), math.nan):6.2f}" for k in range(opts.buckets)))
    norms = {name: read_module_norms(run_dir(opts, name)) for name in OPTIMIZERS}
    with open(opts.out / "module_norms.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["optimizer", "step", "kind", "name", "value"])
        writer.writeheader()
        writer.writerows({"optimizer": name, **r} for name, rows_ in norms.items() for r in rows_)
    plot_module_norms(norms, opts.out / "module_norms.png")
    print(f"wrote {opts.out}/loss_by_frequency.csv, loss_by_frequency.png, loss_by_frequency_final.csv, "
          f"module_norms.csv, module_norms.png")
    return final
