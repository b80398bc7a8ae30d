"""Time to target for every optimizer of the zoo, each at its best learning rate from a small sweep.

For each optimizer: train the same tiny byte-level GPT on Shakespeare (through `mugpt.training.train`, configs
composed with Hydra's compose API exactly as src/train.py composes them) at a few log2-spaced learning rates
around its default, keep the lr with the lowest final validation loss, and report for it the final val loss and
the steps, tokens and seconds it took to reach a target val loss, plus the optimizer state in bytes per parameter.
Writes optimizers.md (table), optimizers.csv (every run), optimizers_best.csv and optimizers.png into --out.

    python scripts/compare_optimizers.py                    # about 5 minutes on a busy 2-core CPU
    python scripts/compare_optimizers.py --optimizers adamw muon --lr-factors 0.5 1 2 --steps 300

The parametrization is µP at its own base width (parametrization.base_width = model width), where µP computes
exactly SP's function with SP's learning rates; --parametrization sp runs the same comparison under SP.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = str(ROOT / "conf")
ZOO = ("adamw", "adam", "sgd", "adagrad", "rmsprop", "adafactor", "adam8bit", "muon")
log = logging.getLogger("compare_optimizers")


def compose_run(name: str, lr: float, args: argparse.Namespace, output_dir: Path) -> DictConfig:
    overrides = [
        f"optim={name}", f"optim.lr={lr}", f"output_dir={output_dir}", "logger=csv",
        "model=tiny", f"model.width={args.width}", f"model.n_layer={args.n_layer}", f"model.n_head={args.n_head}",
        f"model.block_size={args.block_size}", "data.tokenizer=byte", f"data.batch_size={args.batch_size}",
        f"data.val_batches={args.val_batches}", f"trainer.max_steps={args.steps}", f"eval_every={args.eval_every}",
        "trainer.log_every_n_steps=5", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        f"seed={args.seed}", f"parametrization={args.parametrization}", "checkpoint.every_n_steps=0",
    ]
    if args.parametrization == "mup":
        overrides.append(f"parametrization.base_width={args.width}")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def read_history(output_dir: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, val/loss) and (step, train/loss) from the CSV logger's metrics.csv."""
    val, train = [], []
    with open(output_dir / "csv" / "version_0" / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            for key, out in (("val/loss", val), ("train/loss", train)):
                if row.get(key):
                    out.append((int(row["step"]), float(row[key])))
    return sorted(set(val)), sorted(set(train))


def step_to_target(history: list[tuple[int, float]], target: float) -> float:
    """First step at which the val loss reaches `target`, linear between evaluations (inf if never)."""
    prev = None
    for step, loss in history:
        if loss <= target:
            if prev is None or prev[1] == loss:
                return float(step)
            s0, l0 = prev
            return s0 + (step - s0) * (l0 - target) / (l0 - loss)
        prev = (step, loss)
    return math.inf


def state_bytes_per_param(name: str, lr: float, args: argparse.Namespace) -> float:
    """Optimizer state of this optimizer on this model after one step, in bytes per parameter."""
    from mugpt.optim import optimizer_state_bytes
    from mugpt.recipe import Recipe, train_step

    cfg = default_optim(name)
    cfg.lr = lr
    options = {"name": args.parametrization, **({"base_width": args.width} if args.parametrization == "mup" else {})}
    recipe = Recipe.from_config(dict(vocab_size=256, block_size=args.block_size, width=args.width,
                                     n_layer=args.n_layer, n_head=args.n_head), options, cfg)
    device = "cuda" if name == "adam8bit" and torch.cuda.is_available() else "cpu"
    model = recipe.build_model(device)
    optimizer, _ = recipe.build_optimizer(model, max_steps=1, on_cuda=device == "cuda")
    x = torch.randint(0, 256, (2, args.block_size + 1), device=device)
    train_step(model, optimizer, None, [(x[:, :-1], x[:, 1:].contiguous())], grad_clip=recipe.grad_clip)
    return optimizer_state_bytes(optimizer)["bytes_per_param"]


def default_optim(name: str) -> DictConfig:
    """conf/optim/<name>.yaml as written (its default lr and options)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf" / "optim"), version_base="1.3"):
        return compose(config_name=name)


def unavailable(name: str, parametrization: str) -> str | None:
    """Why `name` cannot run here, or None."""
    from mugpt.optim import check_optimizer

    try:
        check_optimizer(default_optim(name), torch.cuda.is_available())
    except (ImportError, ValueError) as exc:
        return str(exc)
    return None


def plot(best: list[dict], histories: dict, path: Path, title: str, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for row in best:
        steps, losses = zip(*histories[(row["optimizer"], row["lr"])])
        ax.plot(steps, losses, marker="o", ms=3, label=f"{row['optimizer']} (lr {row['lr']:g})")
    ax.axhline(target, color="0.5", ls="--", lw=1, label=f"target {target:g}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation loss (nats per byte)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(best: list[dict], skipped: dict[str, str], args: argparse.Namespace, seconds: float) -> str:
    lines = [
        f"Tiny GPT (width {args.width}, {args.n_layer} layers, {args.n_head} heads, block {args.block_size}), byte-level "
        f"Shakespeare, batch {args.batch_size}, {args.steps} steps, cosine schedule with each optimizer's warmup, "
        f"parametrization={args.parametrization}" + (" at its base width (= SP)" if args.parametrization == "mup" else "")
        + f", seed {args.seed}. lr grid: default x {', '.join(f'{f:g}' for f in args.lr_factors)}; "
        f"`*` = best lr at the edge of the grid. Target: val loss {args.target:g}. Total {seconds / 60:.1f} min.",
        "",
        "| optimizer | best lr | final val loss | steps to target | tokens to target | seconds to target | "
        "state B/param |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in best:
        reached = math.isfinite(r["steps_to_target"])
        lines.append(
            f"| {r['optimizer']} | {r['lr']:g}{'*' if r['edge'] else ''} | {r['val_loss']:.3f} | "
            + (f"{r['steps_to_target']:.0f} | {r['tokens_to_target']:,.0f} | {r['seconds_to_target']:.1f} | "
               if reached else "not reached | - | - | ")
            + f"{r['state_bytes_per_param']:.2f} |")
    for name, why in skipped.items():
        lines.append(f"| {name} | skipped: {why} | | | | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--optimizers", nargs="+", default=list(ZOO), choices=ZOO)
    p.add_argument("--lr-factors", nargs="+", type=float, default=[0.5, 1.0, 2.0],
                   help="multiples of each optimizer's default lr (conf/optim/<name>.yaml)")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--target", type=float, default=2.9, help="val loss (nats per byte) to time the optimizers to")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--n-head", type=int, default=2)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--val-batches", type=int, default=4)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--parametrization", choices=("mup", "sp"), default="mup")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; on a shared 2-core machine 1 thread ran this model 6x faster than 2")
    p.add_argument("--out", type=Path, default=ROOT / "scripts" / "results" / "optimizers")
    args = p.parse_args(argv)

    os.environ.setdefault("WANDB_MODE", "offline")
    torch.set_num_threads(args.threads)
    from mugpt.training import train  # imports Lightning, which sets its loggers' levels: quieten them after

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric", "mugpt"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    args.out.mkdir(parents=True, exist_ok=True)
    runs_dir = args.out / "runs"
    started = time.perf_counter()
    runs, histories, skipped = [], {}, {}
    for name in args.optimizers:
        why = unavailable(name, args.parametrization)
        if why:
            skipped[name] = why
            log.info("%s: skipped (%s)", name, why)
            continue
        default_lr = float(default_optim(name).lr)
        for factor in args.lr_factors:
            lr = float(f"{default_lr * factor:.4g}")
            out = runs_dir / f"{name}_lr{lr:g}"
            summary = train(compose_run(name, lr, args, out))
            val, _ = read_history(out)
            histories[(name, lr)] = val
            sec_per_step = (args.batch_size * args.block_size / summary["tokens_per_sec"]
                            if summary.get("tokens_per_sec") else math.nan)
            steps = step_to_target(val, args.target)
            runs.append({
                "optimizer": name, "lr": lr, "lr_factor": factor, "status": summary["status"],
                "val_loss": summary.get("val_loss", math.nan), "steps_to_target": steps,
                "tokens_to_target": steps * args.batch_size * args.block_size,
                "seconds_to_target": steps * sec_per_step, "sec_per_step": sec_per_step,
                "wall_seconds": summary.get("wall_seconds", math.nan),
            })
            log.info("%-9s lr=%-8g val %.3f  steps to %.2f: %s  (%.1f s)", name, lr, runs[-1]["val_loss"],
                     args.target, f"{steps:.0f}" if math.isfinite(steps) else "-", runs[-1]["wall_seconds"])

    best = []
    for name in dict.fromkeys(r["optimizer"] for r in runs):
        mine = [r for r in runs if r["optimizer"] == name and math.isfinite(r["val_loss"])]
        if not mine:
            skipped[name] = "every run diverged"
            continue
        b = dict(min(mine, key=lambda r: r["val_loss"]))
        b["edge"] = b["lr_factor"] in (min(args.lr_factors), max(args.lr_factors)) and len(args.lr_factors) > 1
        b["state_bytes_per_param"] = state_bytes_per_param(name, b["lr"], args)
        best.append(b)
    seconds = time.perf_counter() - started

    columns = ["optimizer", "lr", "lr_factor", "status", "val_loss", "steps_to_target", "tokens_to_target",
               "seconds_to_target", "sec_per_step", "wall_seconds"]
    with open(args.out / "optimizers.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows({k: r[k] for k in columns} for r in runs)
    with open(args.out / "optimizers_best.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*columns, "edge", "state_bytes_per_param"])
        w.writeheader()
        w.writerows(best)
    table = markdown(best, skipped, args, seconds)
    (args.out / "optimizers.md").write_text(table)
    plot(best, histories, args.out / "optimizers.png",
         f"Validation loss at each optimizer's best lr (width {args.width}, {args.steps} steps, "
         f"{args.parametrization})", args.target)
    print(table)
    log.info("wrote %s in %.1f min", args.out, seconds / 60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
