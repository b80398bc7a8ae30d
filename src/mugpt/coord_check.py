"""Coordinate check (Tensor Programs V, figure 5): does an activation's size stay put as the model widens?

For each parametrization (SP, µP), width and seed, a GPT is built with the project's own parametrization,
trained for a few optimizer steps (AdamW unless `optim=` says otherwise) at a fixed learning rate on random
windows of Shakespeare, and after each
update the mean |x| of a few activations is measured on one fixed batch. Under µP every hidden activation
stays Θ(1) in width (a flat line against log width) at every step; under SP the updates make them grow
with width from the first step on, the faster the higher the learning rate.

Forward hooks are our own: mup.coord_check's hooks break on modules returning tuples with None, and
average in the activation's own precision; here every mean is a float64 mean of |x|.

Entry points: `run_coord_check(cfg)` (a mapping shaped like conf/coord_check.yaml) runs everything and
writes coord_check.csv, coord_check_slopes.csv and coord_check.png; the pieces are importable one by one.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from mugpt.model import GPT, GPTConfig
from mugpt.parametrization import get_parametrization, parametrization_class
from mugpt.recipe import Recipe, train_step

log = logging.getLogger(__name__)

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
PARAM_TITLES = {"sp": "SP (standard parametrization)", "mup": "µP (maximal update parametrization)"}


# ------------------------------------------------------------------------------------------ data
def load_tokens(tokenizer: str = "byte") -> np.ndarray:
    """Shakespeare's plays as one token stream (UTF-8 bytes for the byte tokenizer)."""
    from mugpt.data import get_tokenizer, shakespeare_text  # imports Lightning: only when data is needed

    tok = get_tokenizer(tokenizer)
    ids = np.asarray(tok.encode(shakespeare_text()), dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= tok.vocab_size):
        raise ValueError(f"tokenizer {tokenizer!r} produced ids outside [0, {tok.vocab_size})")
    return ids


OPTIMIZER_NAMES = {"adamw": "AdamW", "adam": "Adam", "sgd": "SGD", "adagrad": "AdaGrad", "rmsprop": "RMSProp",
                   "adafactor": "Adafactor", "adam8bit": "8-bit AdamW", "muon": "Muon (+AdamW)"}


def sample_batches(tokens: np.ndarray, count: int, batch_size: int, block_size: int,
                   seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`count` batches of random (x, y) windows: the same tokens for the same seed, whatever the model."""
    if len(tokens) <= block_size + 1:
        raise ValueError(f"corpus of {len(tokens)} tokens is too short for block_size={block_size}")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        starts = rng.integers(0, len(tokens) - block_size - 1, size=batch_size)
        windows = np.stack([tokens[s : s + block_size + 1] for s in starts])
        w = torch.from_numpy(windows)
        out.append((w[:, :-1].contiguous(), w[:, 1:].contiguous()))
    return out


# ------------------------------------------------------------------------------------ activations
def probed_modules(model: GPT) -> dict[str, nn.Module]:
    """CSV name → module whose output is measured: embedding, per block attn/mlp/residual, logits."""
    modules: dict[str, nn.Module] = {"embedding": model.drop}
    for i, block in enumerate(model.blocks):
        modules[f"block{i}.attn"] = block.attn
        modules[f"block{i}.mlp"] = block.mlp
        modules[f"block{i}.residual"] = block
    modules["logits"] = model.lm_head
    return modules


def module_kind(name: str) -> str:
    """'block1.attn' → 'attn'; 'embedding' and 'logits' are their own kind."""
    return name.rsplit(".", 1)[-1]


@contextlib.contextmanager
def record_l1(model: GPT) -> Iterator[dict[str, float]]:
    """Forward hooks filling a dict with the float64 mean |output| of each probed module (last call wins).

    The logits are cut to the tokenizer's vocabulary: padding columns are never trained toward anything."""
    values: dict[str, float] = {}
    vocab = model.config.vocab_size

    def hook_for(name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            x = output[0] if isinstance(output, (tuple, list)) else output
            if name == "logits":
                x = x[..., :vocab]
            values[name] = x.detach().to(torch.float64).abs().mean().item()

        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in probed_modules(model).items()]
    try:
        yield values
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def measure(model: GPT, x: torch.Tensor) -> dict[str, float]:
    was_training = model.training
    model.eval()
    with record_l1(model) as values:
        model(x)
    model.train(was_training)
    return dict(values)


# --------------------------------------------------------------------------------------- training
def _as_config(cfg: Any) -> DictConfig:
    return cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))


def trace_one(parametrization: Mapping[str, Any], model_config: GPTConfig, optim_cfg: Any,
              train_batches: Sequence[tuple[torch.Tensor, torch.Tensor]], probe: torch.Tensor, steps: int,
              seed: int, device: str = "cpu") -> list[dict[str, float]]:
    """Build one model (init seeded by `seed`), then measure on `probe` after 0, 1, ..., steps-1 updates, each
    update the trainer's own step (mugpt.recipe.train_step).

    Returns one {module: l1} dict per step. Update t uses train_batches[t]."""
    if len(train_batches) < steps - 1:
        raise ValueError(f"{steps} steps need {steps - 1} training batches, got {len(train_batches)}")
    recipe = Recipe(model_config, dict(parametrization), optim_cfg)
    torch.manual_seed(seed)
    model = recipe.build_model(device)
    model.train()
    optimizer, scheduler = recipe.build_optimizer(model, max(steps - 1, 1), on_cuda=str(device).startswith("cuda"))
    probe = probe.to(device)
    trace = []
    for t in range(steps):
        trace.append(measure(model, probe))
        if t == steps - 1:
            break
        batch = tuple(b.to(device) for b in train_batches[t])
        loss = train_step(model, optimizer, scheduler, [batch], grad_clip=recipe.grad_clip).loss
        if not torch.isfinite(loss):
            log.warning("%s width=%d seed=%d: loss is %s at step %d", parametrization["name"],
                        model_config.width, seed, loss.item(), t)
    return trace


def plan_traces(parametrizations: Mapping[str, Mapping[str, Any]], model_cfg: Mapping[str, Any],
                widths: Sequence[int], steps: int, vocab_size: int) -> tuple[list[GPTConfig], dict[str, dict]]:
    """Each width's model config (sorted by width) and each parametrization's options (µP's base width filled
    in), all checked: a width or option that cannot run is refused before any model trains."""
    widths = sorted(int(w) for w in widths)
    if len(widths) < 2:
        raise ValueError("widths: a coordinate check needs at least two widths")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    model_fields = {k: v for k, v in dict(model_cfg).items() if k in GPTConfig.__dataclass_fields__}
    configs = [GPTConfig(**{**model_fields, "vocab_size": vocab_size, "width": w}) for w in widths]
    plans = {}
    for label, options in parametrizations.items():
        options = parametrization_class(options["name"]).options_for_widths(dict(options), widths)
        get_parametrization(options)  # refuses a bad option before any model trains
        plans[label] = options
    return configs, plans


def check_coord_check(cfg: Any) -> None:
    """Refuse a coordinate-check config that cannot run (bad width, step count or parametrization option),
    without loading the corpus."""
    cfg = _as_config(cfg)
    plan_traces(OmegaConf.to_container(cfg.parametrizations, resolve=True),
                OmegaConf.to_container(cfg.model, resolve=True), list(cfg.widths), int(cfg.steps), vocab_size=1)


def run_traces(parametrizations: Mapping[str, Mapping[str, Any]], model_cfg: Mapping[str, Any], optim_cfg: Any,
               widths: Sequence[int], seeds: Sequence[int], steps: int, tokens: np.ndarray, vocab_size: int,
               batch_size: int, data_seed: int, device: str = "cpu") -> list[dict]:
    """The whole sweep, as CSV rows (dicts with CSV_COLUMNS).

    parametrizations: label → parametrization options ({"name": "sp"} or {"name": "mup", ...}); a µP
        base_width of None means the smallest width. model_cfg: GPTConfig fields (width is swept)."""
    configs, plans = plan_traces(parametrizations, model_cfg, widths, steps, vocab_size)
    # One probe batch and one stream of training batches, shared by every parametrization, width and seed.
    block_size = configs[0].block_size
    probe_x, _ = sample_batches(tokens, 1, batch_size, block_size, seed=data_seed)[0]
    train_batches = sample_batches(tokens, max(steps - 1, 0), batch_size, block_size, seed=data_seed + 1)
    rows = []
    for label, options in plans.items():
        for config in configs:
            width = config.width
            for seed in seeds:
                start = time.perf_counter()
                trace = trace_one(options, config, optim_cfg, train_batches, probe_x, steps, int(seed), device)
                log.info("%s width=%d seed=%d: %.1fs", label, width, seed, time.perf_counter() - start)
                for step, values in enumerate(trace):
                    for module, l1 in values.items():
                        rows.append({"parametrization": label, "width": width, "step": step, "module": module,
                                     "seed": int(seed), "l1": l1})
    return rows


# ----------------------------------------------------------------------------------------- slopes
def compute_slopes(rows: Iterable[Mapping[str, Any]]) -> list[dict]:
    """Least-squares slope of log2(l1) against log2(width) per (parametrization, step, module, seed),
    averaged over seeds (seed_sd: their standard deviation). Slope 0 = flat in width; 0.5 = grows as
    sqrt(width); 1 = linearly. A non-positive or non-finite l1 gives a NaN slope."""
    curves: dict[tuple, dict[int, float]] = defaultdict(dict)
    for r in rows:
        curves[(r["parametrization"], int(r["step"]), r["module"], int(r["seed"]))][int(r["width"])] = float(r["l1"])
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


# ---------------------------------------------------------------------------------------- outputs
def write_csv(rows: Iterable[Mapping[str, Any]], path: Path, columns: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        for r in rows:
            writer.writerow({c: r[c] for c in columns})


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{**r, "width": int(r["width"]), "step": int(r["step"]), "seed": int(r["seed"]), "l1": float(r["l1"])}
                for r in csv.DictReader(f)]


def plot_coord_check(rows: Iterable[Mapping[str, Any]], path: Path, title: str = "") -> None:
    """Grid: one row per parametrization, one column per module kind; x = width (log2), y = mean |x| (log).
    Colour = training step (mean over seeds); line style = block index for per-block modules. Each column
    shares its y axis, so SP and µP compare at a glance; the slope at the last step is printed per panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows = list(rows)
    params = list(dict.fromkeys(r["parametrization"] for r in rows))
    steps = sorted({int(r["step"]) for r in rows})
    widths = sorted({int(r["width"]) for r in rows})
    modules = list(dict.fromkeys(r["module"] for r in rows))
    kinds = [k for k in MODULE_KINDS if any(module_kind(m) == k for m in modules)]
    n_blocks = len({m.split(".")[0] for m in modules if m.startswith("block")})
    styles = ["-", "--", ":", "-."]
    cmap = plt.get_cmap("viridis")
    colours = {t: cmap(0.9 * i / max(1, len(steps) - 1)) for i, t in enumerate(steps)}

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
            ax.text(0.03, 0.97, f"slope, step {steps[-1]}: " + ", ".join(f"{s:+.2f}" for s in last),
                    transform=ax.transAxes, va="top", fontsize=8,
                    bbox=dict(boxstyle="round", fc="white", ec="0.8", alpha=0.85))
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(widths)
            ax.set_xticklabels([str(w) for w in widths], fontsize=8)
            ax.grid(True, which="both", alpha=0.3)
            if i == 0:
                ax.set_title(KIND_TITLES.get(kind, kind), fontsize=11)
            if i == len(params) - 1:
                ax.set_xlabel("width (d_model)")
            if j == 0:
                ax.set_ylabel(f"{PARAM_TITLES.get(param, param)}\nmean |activation|", fontsize=10)

    handles = [Line2D([], [], color=colours[t], marker="o", ms=3, label=f"step {t}") for t in steps]
    if n_blocks > 1:
        handles += [Line2D([], [], color="0.3", ls=styles[b % len(styles)], label=f"block {b}")
                    for b in range(n_blocks)]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False,
               bbox_to_anchor=(0.5, 0.0), fontsize=9)
    fig.suptitle(title or "Coordinate check: mean |activation| vs width after t training steps", fontsize=13)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ------------------------------------------------------------------------------------ entry point
def run_coord_check(cfg: Any, output_dir: str | Path | None = None, tokens: np.ndarray | None = None) -> dict:
    """Run the sweep described by cfg (shaped like conf/coord_check.yaml) and write its three files.

    Returns {"rows", "slopes", "summary", "table", "output_dir", "seconds"}. `tokens` skips loading the
    corpus (tests pass a cached stream)."""
    cfg = _as_config(cfg)
    out = Path(output_dir or cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = cfg.get("num_threads") or os.cpu_count() or 1
    torch.set_num_threads(int(threads))
    start = time.perf_counter()
    from mugpt.data import get_tokenizer  # noqa: PLC0415 (Lightning import, only when run)

    vocab_size = get_tokenizer(cfg.data.tokenizer).vocab_size
    if tokens is None:
        tokens = load_tokens(cfg.data.tokenizer)
    params = OmegaConf.to_container(cfg.parametrizations, resolve=True)
    title = (f"Coordinate check: {cfg.model.n_layer}-layer GPT, {cfg.model.n_head} heads, "
             f"{OPTIMIZER_NAMES.get(cfg.optim.name, cfg.optim.name)} lr={cfg.optim.lr:g}, "
             f"batch {cfg.data.batch_size}x{cfg.model.block_size}, "
             f"{len(cfg.seeds)} seed(s)")
    rows = run_traces(params, OmegaConf.to_container(cfg.model, resolve=True), cfg.optim, list(cfg.widths),
                      list(cfg.seeds), int(cfg.steps), tokens, vocab_size, int(cfg.data.batch_size),
                      int(cfg.data.seed), device=str(cfg.get("device", "cpu")))
    slopes = compute_slopes(rows)
    summary = summarize_slopes(slopes)
    write_csv(rows, out / "coord_check.csv", CSV_COLUMNS)
    write_csv(slopes, out / "coord_check_slopes.csv", SLOPE_COLUMNS)
    plot_coord_check(rows, out / "coord_check.png", title=title)
    seconds = time.perf_counter() - start
    return {"rows": rows, "slopes": slopes, "summary": summary, "table": format_slope_table(summary),
            "output_dir": out, "seconds": seconds}
