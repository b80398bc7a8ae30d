"""Time to target for every optimizer of the zoo, each at its best learning rate from a small sweep
(scripts/compare_optimizers.py is its command line, conf/compare_optimizers.yaml its options, and its docstring says
what it runs and writes): the options, the runs they compose (checked before the first trains), their histories,
each optimizer's state size, and the report.
"""

import csv
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from mugpt.config import compose_training_config, script_option
from mugpt.core.optim import OPTIMIZERS
from mugpt.rundir import metrics_csv
from mugpt.studies.grid import run_grid

log = logging.getLogger("compare_optimizers")


# ------------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class Options:
    """The checked options of conf/compare_optimizers.yaml."""

    optimizers: tuple[str, ...]
    lr_factors: tuple[float, ...]
    steps: int
    eval_every: int
    target: float
    width: int
    n_layer: int
    n_head: int
    block_size: int
    batch_size: int
    val_batches: int
    seed: int
    mup: bool
    threads: int | None
    out: Path

    @property
    def parametrization(self) -> str:
        """The runs' parametrization=: µP (at base_width = width) or SP."""
        return "mup" if self.mup else "sp"


def read_options(cfg: DictConfig) -> Options:
    """The typed, checked options: every refusal (one line naming KEY=VALUE) comes before anything trains."""
    optimizers = script_option(cfg, "optimizers", str, many=True)
    unknown = [name for name in optimizers if name not in OPTIMIZERS]  # the registry: mugpt.core.optim
    if unknown:
        raise ValueError(f"optimizers=[{','.join(optimizers)}]: unknown optimizer {', '.join(map(repr, unknown))} "
                         f"(choose from {', '.join(OPTIMIZERS)})")
    lr_factors = script_option(cfg, "lr_factors", float, many=True)
    bad = [f for f in lr_factors if not (f > 0 and math.isfinite(f))]
    if bad:
        raise ValueError(f"lr_factors=[{','.join(f'{f:g}' for f in lr_factors)}]: {bad[0]:g} is not a positive "
                         f"number (each is a multiple of the optimizer's default lr)")
    ints = {k: script_option(cfg, k, int, positive=True)
            for k in ("steps", "eval_every", "width", "n_layer", "n_head", "block_size", "batch_size", "val_batches")}
    if ints["width"] % ints["n_head"]:
        raise ValueError(f"width={ints['width']}: not divisible by n_head={ints['n_head']}")
    return Options(optimizers=tuple(optimizers), lr_factors=tuple(lr_factors), **ints,
                   target=script_option(cfg, "target", float, positive=True), seed=script_option(cfg, "seed", int),
                   mup=script_option(cfg, "mup", bool),
                   threads=script_option(cfg, "threads", int, nullable=True, positive=True),
                   out=Path(script_option(cfg, "out", str)))


# --------------------------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class Run:
    """One training run of the comparison: an optimizer at one lr of its grid."""

    optimizer: str
    lr_factor: float
    lr: float
    output_dir: Path
    cfg: DictConfig
    overrides: tuple[str, ...] = ()  # the run's training overrides, without output_dir


def run_overrides(name: str, lr: float, opts: Options) -> list[str]:
    """The run's training overrides (as `src/train.py` takes them), without output_dir."""
    overrides = [
        f"optim={name}", f"optim.lr={lr}", "logger=csv",
        "model=tiny", f"model.width={opts.width}", f"model.n_layer={opts.n_layer}", f"model.n_head={opts.n_head}",
        f"model.block_size={opts.block_size}", "data.tokenizer=byte", f"data.batch_size={opts.batch_size}",
        f"data.val_batches={opts.val_batches}", f"trainer.max_steps={opts.steps}", f"eval_every={opts.eval_every}",
        "trainer.log_every_n_steps=5", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        f"seed={opts.seed}", f"parametrization={opts.parametrization}", "checkpoint.every_n_steps=0",
    ]
    if opts.parametrization == "mup":
        overrides.append(f"parametrization.base_width={opts.width}")
    return overrides


def compose_run(name: str, lr: float, opts: Options, output_dir: Path) -> DictConfig:
    return compose_training_config([*run_overrides(name, lr, opts), f"output_dir={output_dir}"])


def plan_runs(opts: Options) -> tuple[list[Run], dict[str, str]]:
    """Every run, composed and checked as src/train.py would check it (mugpt.training.train.check_config), before the
    first trains; and the optimizers that cannot run on this machine (optimizer → why), which are skipped."""
    from mugpt.training.train import check_config

    runs, skipped = [], {}
    for name in opts.optimizers:
        why = unavailable(name)
        if why:
            skipped[name] = why
            continue
        default_lr = float(default_optim(name).lr)
        for factor in opts.lr_factors:
            lr = float(f"{default_lr * factor:.4g}")
            output_dir = opts.out / "runs" / f"{name}_lr{lr:g}"
            cfg = compose_run(name, lr, opts, output_dir)
            try:
                check_config(cfg)
            except ValueError as exc:
                raise ValueError(f"{exc} (in the run of optim={name} optim.lr={lr:g})") from exc
            runs.append(Run(name, factor, lr, output_dir, cfg, tuple(run_overrides(name, lr, opts))))
    return runs, skipped


def read_history(output_dir: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, val/loss) and (step, train/loss) from the CSV logger's metrics.csv."""
    val, train = [], []
    with open(metrics_csv(output_dir), newline="") as f:
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


def state_bytes_per_param(name: str, lr: float, opts: Options) -> float:
    """Optimizer state of this optimizer on this model after one step, in bytes per parameter."""
    from mugpt.core.optim import optimizer_state_bytes
    from mugpt.core.recipe import Recipe, train_step

    cfg = default_optim(name)
    cfg.lr = lr
    options = {"name": opts.parametrization, **({"base_width": opts.width} if opts.parametrization == "mup" else {})}
    recipe = Recipe.from_config(dict(vocab_size=256, block_size=opts.block_size, width=opts.width,
                                     n_layer=opts.n_layer, n_head=opts.n_head), options, cfg)
    device = "cuda" if name == "adam8bit" and torch.cuda.is_available() else "cpu"
    model = recipe.build_model(device)
    optimizer, _ = recipe.build_optimizer(model, max_steps=1, on_cuda=device == "cuda")
    x = torch.randint(0, 256, (2, opts.block_size + 1), device=device)
    train_step(model, optimizer, None, [(x[:, :-1], x[:, 1:].contiguous())], grad_clip=recipe.grad_clip)
    return optimizer_state_bytes(optimizer)["bytes_per_param"]


def default_optim(name: str) -> DictConfig:
    """conf/optim/<name>.yaml on its schema (its default lr and options)."""
    from mugpt.config import load_optim_config

    return load_optim_config(name)


def unavailable(name: str) -> str | None:
    """Why `name` cannot run here, or None."""
    from mugpt.core.optim import check_optimizer

    try:
        check_optimizer(default_optim(name), torch.cuda.is_available())
    except (ImportError, ValueError) as exc:
        return str(exc)
    return None


# ------------------------------------------------------------------------------------------ report
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


def markdown(best: list[dict], skipped: dict[str, str], opts: Options, seconds: float) -> str:
    lines = [
        f"Tiny GPT (width {opts.width}, {opts.n_layer} layers, {opts.n_head} heads, block {opts.block_size}), "
        f"byte-level "
        f"Shakespeare, batch {opts.batch_size}, {opts.steps} steps, cosine schedule with each optimizer's warmup, "
        f"parametrization={opts.parametrization}"
        + (" at its base width (= SP)" if opts.parametrization == "mup" else "")
        + f", seed {opts.seed}. lr grid: default x {', '.join(f'{f:g}' for f in opts.lr_factors)}; "
        f"`*` = best lr at the edge of the grid. Target: val loss {opts.target:g}. Total {seconds / 60:.1f} min.",
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


# -------------------------------------------------------------------------------------------- main
def compare_optimizers(cfg: DictConfig) -> str:
    """The whole comparison from conf/compare_optimizers.yaml's options (scripts/compare_optimizers.py's Hydra
    entry point calls it; tests call it with a composed config); returns the table."""
    try:  # every option and every run's training config checked before the first run trains
        opts = read_options(cfg)
        runs, skipped = plan_runs(opts)
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    os.environ.setdefault("WANDB_MODE", "offline")
    if opts.threads:
        torch.set_num_threads(opts.threads)
    import mugpt.training.train  # noqa: F401 - imports Lightning, which sets its loggers' levels: quieten them after

    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric", "mugpt"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    log.setLevel(logging.INFO)
    for name, why in skipped.items():
        log.info("%s: skipped (%s)", name, why)

    opts.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows, histories = [], {}
    for run in runs:
        (summary,) = run_grid([(run.overrides, run.output_dir)], keep_going=False)  # in turn, here; a crash stops
        val, _ = read_history(run.output_dir)
        histories[(run.optimizer, run.lr)] = val
        sec_per_step = (opts.batch_size * opts.block_size / summary["tokens_per_sec"]
                        if summary.get("tokens_per_sec") else math.nan)
        steps = step_to_target(val, opts.target)
        rows.append({
            "optimizer": run.optimizer, "lr": run.lr, "lr_factor": run.lr_factor, "status": summary["status"],
            "val_loss": summary.get("val_loss", math.nan), "steps_to_target": steps,
            "tokens_to_target": steps * opts.batch_size * opts.block_size,
            "seconds_to_target": steps * sec_per_step, "sec_per_step": sec_per_step,
            "wall_seconds": summary.get("wall_seconds", math.nan),
        })
        log.info("%-9s lr=%-8g val %.3f  steps to %.2f: %s  (%.1f s)", run.optimizer, run.lr, rows[-1]["val_loss"],
                 opts.target, f"{steps:.0f}" if math.isfinite(steps) else "-", rows[-1]["wall_seconds"])

    best = []
    for name in dict.fromkeys(r["optimizer"] for r in rows):
        mine = [r for r in rows if r["optimizer"] == name and math.isfinite(r["val_loss"])]
        if not mine:
            skipped[name] = "every run diverged"
            continue
        b = dict(min(mine, key=lambda r: r["val_loss"]))
        b["edge"] = b["lr_factor"] in (min(opts.lr_factors), max(opts.lr_factors)) and len(opts.lr_factors) > 1
        b["state_bytes_per_param"] = state_bytes_per_param(name, b["lr"], opts)
        best.append(b)
    seconds = time.perf_counter() - started

    columns = ["optimizer", "lr", "lr_factor", "status", "val_loss", "steps_to_target", "tokens_to_target",
               "seconds_to_target", "sec_per_step", "wall_seconds"]
    with open(opts.out / "optimizers.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows({k: r[k] for k in columns} for r in rows)
    with open(opts.out / "optimizers_best.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*columns, "edge", "state_bytes_per_param"])
        w.writeheader()
        w.writerows(best)
    table = markdown(best, skipped, opts, seconds)
    (opts.out / "optimizers.md").write_text(table)
    plot(best, histories, opts.out / "optimizers.png",
         f"Validation loss at each optimizer's best lr (width {opts.width}, {opts.steps} steps, "
         f"{opts.parametrization})", opts.target)
    print(table)
    log.info("wrote %s in %.1f min", opts.out, seconds / 60)
    return table
