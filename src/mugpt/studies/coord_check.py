"""Coordinate check (Tensor Programs V, figure 5): does an activation's size stay put as the model widens?

For each parametrization (SP, µP), width and seed, a GPT is built with the project's own parametrization,
trained for a few optimizer steps (AdamW unless `optim=` says otherwise) at a fixed learning rate on random
windows of Shakespeare, and after each
update the mean |x| of a few activations is measured on one fixed batch. Under µP every hidden activation
stays Θ(1) in width (a flat line against log width) at every step; under SP the updates make them grow
with width from the first step on, the faster the higher the learning rate.

`axis: depth` asks the same of depth (CompleteP, Dey et al. 2025): at the fixed width model.width, for each
depth in `depths` and each of `depth_parametrizations` (µP at depth_alpha 0 and 1 by default), it records the
mean |x| and the update size mean |x_t - x_0| (x_0: the same model's activation before any update). Module
names differ across depths, so each kind (embedding, attention, MLP, residual stream, logits) is the mean over
blocks, plus the last block's residual output. Under α = 1 the branch outputs and the stream the last block
hands on, and their updates, are flat in depth; under α = 0 the branch outputs start at L^-1/2 (GPT-2's
1/sqrt(2L) init) and the stream's update grows nearly as L (a slope of ~0.75 at width 64, depths 2-16).

Forward hooks are our own: mup.coord_check's hooks break on modules returning tuples with None, and
average in the activation's own precision; here every mean is a float64 mean of |x|.

Entry points: `run_coord_check(cfg)` (a mapping shaped like conf/coord_check.yaml) runs everything and
writes coord_check.csv, coord_check_slopes.csv and coord_check.png (axis=depth: coord_check_depth.csv,
coord_check_depth_slopes.csv and coord_check_depth.png); the pieces are importable one by one.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from mugpt.core.model import GPT, GPTConfig
from mugpt.core.optim import mup_family
from mugpt.core.parametrization import get_parametrization, parametrization_class
from mugpt.core.recipe import Recipe, train_step

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
PARAM_TITLES = {"sp": "SP (standard parametrization)", "mup": "µP (maximal update parametrization)",
                "umup": "u-µP (unit-scaled µP)"}

# The depth axis (axis=depth). Its CSV has one row per (parametrization, depth, step, module kind, seed), with the
# activation's size and its update's size side by side; the width axis's CSV keeps its own columns.
AXES = ("width", "depth")
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


# ------------------------------------------------------------------------------------------ data
def load_tokens(tokenizer: str = "byte") -> np.ndarray:
    """Shakespeare's plays as one token stream (UTF-8 bytes for the byte tokenizer)."""
    from mugpt.data.text import get_tokenizer, shakespeare_text  # imports Lightning: only when data is needed

    tok = get_tokenizer(tokenizer)
    ids = np.asarray(tok.encode(shakespeare_text()), dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= tok.vocab_size):
        raise ValueError(f"tokenizer {tokenizer!r} produced ids outside [0, {tok.vocab_size})")
    return ids


OPTIMIZER_NAMES = {"adamw": "AdamW", "adam": "Adam", "sgd": "SGD", "adagrad": "AdaGrad", "rmsprop": "RMSProp",
                   "adafactor": "Adafactor", "adam8bit": "8-bit AdamW", "muon": "Muon (+AdamW)",
                   "adam_atan2": "Adam-atan2"}


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


def mean_abs(x: torch.Tensor) -> float:
    return x.detach().to(torch.float64).abs().mean().item()


@contextlib.contextmanager
def _on_outputs(model: GPT, callback: Callable[[str, torch.Tensor], None]) -> Iterator[None]:
    """Forward hooks calling callback(name, output) for each probed module. The logits are cut to the
    tokenizer's vocabulary: padding columns are never trained toward anything."""
    vocab = model.config.vocab_size

    def hook_for(name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            x = output[0] if isinstance(output, (tuple, list)) else output
            callback(name, x[..., :vocab] if name == "logits" else x)

        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in probed_modules(model).items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def record_l1(model: GPT) -> Iterator[dict[str, float]]:
    """Forward hooks filling a dict with the float64 mean |output| of each probed module (last call wins)."""
    values: dict[str, float] = {}
    with _on_outputs(model, lambda name, x: values.__setitem__(name, mean_abs(x))):
        yield values


@torch.no_grad()
def measure(model: GPT, x: torch.Tensor) -> dict[str, float]:
    was_training = model.training
    model.eval()
    with record_l1(model) as values:
        model(x)
    model.train(was_training)
    return dict(values)


@torch.no_grad()
def probe_outputs(model: GPT, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each probed module's output on `x` (detached, logits cut to the vocabulary), in eval mode."""
    outputs: dict[str, torch.Tensor] = {}
    was_training = model.training
    model.eval()
    with _on_outputs(model, lambda name, h: outputs.__setitem__(name, h.detach().clone())):
        model(x)
    model.train(was_training)
    return outputs


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


# --------------------------------------------------------------------------------------- training
def _as_config(cfg: Any) -> DictConfig:
    return cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))


def train_steps(parametrization: Mapping[str, Any], model_config: GPTConfig, optim_cfg: Any,
                train_batches: Sequence[tuple[torch.Tensor, torch.Tensor]], steps: int, seed: int,
                device: str = "cpu") -> Iterator[GPT]:
    """Build one model (init seeded by `seed`) and yield it after 0, 1, ..., steps-1 updates, each update the
    trainer's own step (mugpt.core.recipe.train_step) on train_batches[t]. Measure it before asking for the next."""
    if len(train_batches) < steps - 1:
        raise ValueError(f"{steps} steps need {steps - 1} training batches, got {len(train_batches)}")
    recipe = Recipe(model_config, dict(parametrization), optim_cfg)
    torch.manual_seed(seed)
    model = recipe.build_model(device)
    model.train()
    optimizer, scheduler = recipe.build_optimizer(model, max(steps - 1, 1), on_cuda=str(device).startswith("cuda"))
    for t in range(steps):
        yield model
        if t == steps - 1:
            break
        batch = tuple(b.to(device) for b in train_batches[t])
        loss = train_step(model, optimizer, scheduler, [batch], grad_clip=recipe.grad_clip).loss
        if not torch.isfinite(loss):
            log.warning("%s width=%d n_layer=%d seed=%d: loss is %s at step %d", parametrization["name"],
                        model_config.width, model_config.n_layer, seed, loss.item(), t)


def trace_one(parametrization: Mapping[str, Any], model_config: GPTConfig, optim_cfg: Any,
              train_batches: Sequence[tuple[torch.Tensor, torch.Tensor]], probe: torch.Tensor, steps: int,
              seed: int, device: str = "cpu") -> list[dict[str, float]]:
    """Build one model (init seeded by `seed`), then measure on `probe` after 0, 1, ..., steps-1 updates.

    Returns one {module: l1} dict per step. Update t uses train_batches[t]."""
    probe = probe.to(device)
    return [measure(model, probe)
            for model in train_steps(parametrization, model_config, optim_cfg, train_batches, steps, seed, device)]


def trace_updates(parametrization: Mapping[str, Any], model_config: GPTConfig, optim_cfg: Any,
                  train_batches: Sequence[tuple[torch.Tensor, torch.Tensor]], probe: torch.Tensor, steps: int,
                  seed: int, device: str = "cpu") -> list[dict[str, dict[str, float]]]:
    """As trace_one, and also how far each activation has moved: per step {"l1": {module: mean |x_t|},
    "update_l1": {module: mean |x_t - x_0|}}, x_0 the same module's output on `probe` before any update
    (so update_l1 is 0 at step 0). A mean of differences, not a difference of means: an update that turns
    features around without changing their size still counts."""
    probe = probe.to(device)
    trace: list[dict[str, dict[str, float]]] = []
    reference: dict[str, torch.Tensor] = {}
    for model in train_steps(parametrization, model_config, optim_cfg, train_batches, steps, seed, device):
        outputs = probe_outputs(model, probe)
        reference = reference or outputs
        trace.append({"l1": {name: mean_abs(h) for name, h in outputs.items()},
                      "update_l1": {name: mean_abs(h.to(torch.float64) - reference[name].to(torch.float64))
                                    for name, h in outputs.items()}})
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
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not parametrizations:
        raise ValueError("depth_parametrizations: nothing to compare (give at least one)")
    model_fields = {k: v for k, v in dict(model_cfg).items() if k in GPTConfig.__dataclass_fields__}
    configs = [GPTConfig(**{**model_fields, "vocab_size": vocab_size, "n_layer": d}) for d in depths]
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


def check_axis(cfg: DictConfig) -> str:
    axis = cfg.get("axis", "width")
    if axis not in AXES:
        raise ValueError(f"axis must be one of {', '.join(AXES)}, got {axis!r}")
    return axis


def check_coord_check(cfg: Any) -> None:
    """Refuse a coordinate-check config that cannot run (bad axis, width, depth, step count or parametrization
    option), without loading the corpus."""
    cfg = _as_config(cfg)
    if check_axis(cfg) == "depth":
        plan_depth_traces(OmegaConf.to_container(cfg.depth_parametrizations, resolve=True),
                          OmegaConf.to_container(cfg.model, resolve=True), depth_list(cfg), int(cfg.steps),
                          vocab_size=1, optim=cfg.optim)
        return
    plan_traces(OmegaConf.to_container(cfg.parametrizations, resolve=True),
                OmegaConf.to_container(cfg.model, resolve=True), list(cfg.widths), int(cfg.steps), vocab_size=1)


def shared_batches(tokens: np.ndarray, steps: int, batch_size: int, block_size: int,
                   data_seed: int) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """One probe batch and one stream of steps - 1 training batches, shared by every parametrization, width (or
    depth) and seed of a sweep, so that their traces differ only by the model."""
    probe_x, _ = sample_batches(tokens, 1, batch_size, block_size, seed=data_seed)[0]
    return probe_x, sample_batches(tokens, max(steps - 1, 0), batch_size, block_size, seed=data_seed + 1)


def run_traces(parametrizations: Mapping[str, Mapping[str, Any]], model_cfg: Mapping[str, Any], optim_cfg: Any,
               widths: Sequence[int], seeds: Sequence[int], steps: int, tokens: np.ndarray, vocab_size: int,
               batch_size: int, data_seed: int, device: str = "cpu") -> list[dict]:
    """The whole sweep, as CSV rows (dicts with CSV_COLUMNS).

    parametrizations: label → parametrization options ({"name": "sp"} or {"name": "mup", ...}); a µP
        base_width of None means the smallest width. model_cfg: GPTConfig fields (width is swept)."""
    configs, plans = plan_traces(parametrizations, model_cfg, widths, steps, vocab_size)
    probe_x, train_batches = shared_batches(tokens, steps, batch_size, configs[0].block_size, data_seed)
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


def run_depth_traces(parametrizations: Mapping[str, Mapping[str, Any]], model_cfg: Mapping[str, Any],
                     optim_cfg: Any, depths: Sequence[int], seeds: Sequence[int], steps: int, tokens: np.ndarray,
                     vocab_size: int, batch_size: int, data_seed: int, device: str = "cpu") -> list[dict]:
    """The depth sweep, as CSV rows (dicts with DEPTH_CSV_COLUMNS): one per parametrization, depth, step, module
    kind (aggregate_by_kind) and seed, with the activation's mean |x| and its update's mean |x_t - x_0|."""
    configs, plans = plan_depth_traces(parametrizations, model_cfg, depths, steps, vocab_size,
                                       optim=optim_cfg)
    probe_x, train_batches = shared_batches(tokens, steps, batch_size, configs[0].block_size, data_seed)
    rows = []
    for label, options in plans.items():
        for config in configs:
            for seed in seeds:
                start = time.perf_counter()
                trace = trace_updates(options, config, optim_cfg, train_batches, probe_x, steps, int(seed), device)
                log.info("%s depth=%d seed=%d: %.1fs", label, config.n_layer, seed, time.perf_counter() - start)
                for step, values in enumerate(trace):
                    l1, update = aggregate_by_kind(values["l1"]), aggregate_by_kind(values["update_l1"])
                    for module in l1:
                        rows.append({"parametrization": label, "depth": config.n_layer, "step": step,
                                     "module": module, "seed": int(seed), "l1": l1[module],
                                     "update_l1": update[module]})
    return rows


# ----------------------------------------------------------------------------------------- slopes
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


# ---------------------------------------------------------------------------------------- outputs
def write_csv(rows: Iterable[Mapping[str, Any]], path: Path, columns: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        for r in rows:
            writer.writerow({c: r[c] for c in columns})


def read_csv(path: Path) -> list[dict]:
    """Rows of coord_check.csv or coord_check_depth.csv, numbers as numbers."""
    types = {"width": int, "depth": int, "step": int, "seed": int, "l1": float, "update_l1": float}
    with open(path, newline="") as f:
        return [{k: types[k](v) if k in types else v for k, v in r.items()} for r in csv.DictReader(f)]


def _log_log_panel(ax: Any, xs: Sequence[int], note: str) -> None:
    """log2 x (ticks at the swept values), log y, a grid, and `note` (the slopes) in the top left corner."""
    ax.text(0.03, 0.97, note, transform=ax.transAxes, va="top", fontsize=8,
            bbox=dict(boxstyle="round", fc="white", ec="0.8", alpha=0.85))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels([str(x) for x in xs], fontsize=8)
    ax.grid(True, which="both", alpha=0.3)


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
            _log_log_panel(ax, widths, f"slope, step {steps[-1]}: " + ", ".join(f"{s:+.2f}" for s in last))
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


def plot_depth_check(rows: Iterable[Mapping[str, Any]], path: Path, title: str = "") -> None:
    """Grid for the depth axis: one row per (quantity, parametrization), sizes above update sizes, one column per
    module kind; x = depth (log2), y = log. Colour = training step (mean over seeds). Rows of one quantity share
    each column's y range, so the parametrizations compare at a glance; the last step's slope is printed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows = list(rows)
    params = list(dict.fromkeys(r["parametrization"] for r in rows))
    steps = sorted({int(r["step"]) for r in rows})
    depths = sorted({int(r["depth"]) for r in rows})
    kinds = [k for k in DEPTH_KINDS if any(r["module"] == k for r in rows)]
    cmap = plt.get_cmap("viridis")
    colours = {t: cmap(0.9 * i / max(1, len(steps) - 1)) for i, t in enumerate(steps)}
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

    handles = [Line2D([], [], color=colours[t], marker="o", ms=3, label=f"step {t}") for t in steps]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False,
               bbox_to_anchor=(0.5, 0.0), fontsize=9)
    fig.suptitle(title or "Depth coordinate check: size and update size vs depth after t training steps",
                 fontsize=13)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ------------------------------------------------------------------------------------ entry point
def _prepare(cfg: DictConfig, output_dir: str | Path | None,
             tokens: np.ndarray | None) -> tuple[Path, int, np.ndarray]:
    """The output folder (created), torch's thread count, the tokenizer's vocabulary size and the token stream."""
    out = Path(output_dir or cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = cfg.get("num_threads") or os.cpu_count() or 1
    torch.set_num_threads(int(threads))
    from mugpt.data.text import get_tokenizer  # noqa: PLC0415 (Lightning import, only when run)

    vocab_size = get_tokenizer(cfg.data.tokenizer).vocab_size
    return out, vocab_size, load_tokens(cfg.data.tokenizer) if tokens is None else tokens


def run_coord_check(cfg: Any, output_dir: str | Path | None = None, tokens: np.ndarray | None = None) -> dict:
    """Run the sweep described by cfg (shaped like conf/coord_check.yaml) and write its three files.

    Returns {"rows", "slopes", "summary", "table", "output_dir", "files", "seconds"}. `tokens` skips loading the
    corpus (tests pass a cached stream). axis=depth: see run_depth_check (its summary is None)."""
    cfg = _as_config(cfg)
    if check_axis(cfg) == "depth":
        return run_depth_check(cfg, output_dir, tokens)
    start = time.perf_counter()
    out, vocab_size, tokens = _prepare(cfg, output_dir, tokens)
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
            "output_dir": out, "files": [out / "coord_check.csv", out / "coord_check_slopes.csv",
                                         out / "coord_check.png"], "seconds": seconds}


def run_depth_check(cfg: Any, output_dir: str | Path | None = None, tokens: np.ndarray | None = None) -> dict:
    """axis=depth: the sweep over `depths` at width model.width, comparing `depth_parametrizations`; writes
    coord_check_depth.csv, coord_check_depth_slopes.csv and coord_check_depth.png. Returns what
    run_coord_check returns, the table being format_depth_slope_table's."""
    cfg = _as_config(cfg)
    start = time.perf_counter()
    out, vocab_size, tokens = _prepare(cfg, output_dir, tokens)
    title = (f"Depth coordinate check: GPT of width {cfg.model.width}, {cfg.model.n_head} heads, "
             f"{OPTIMIZER_NAMES.get(cfg.optim.name, cfg.optim.name)} lr={cfg.optim.lr:g}, "
             f"batch {cfg.data.batch_size}x{cfg.model.block_size}, {len(cfg.seeds)} seed(s)")
    rows = run_depth_traces(OmegaConf.to_container(cfg.depth_parametrizations, resolve=True),
                            OmegaConf.to_container(cfg.model, resolve=True), cfg.optim, depth_list(cfg),
                            list(cfg.seeds), int(cfg.steps), tokens, vocab_size, int(cfg.data.batch_size),
                            int(cfg.data.seed), device=str(cfg.get("device", "cpu")))
    slopes = compute_depth_slopes(rows)
    files = [out / "coord_check_depth.csv", out / "coord_check_depth_slopes.csv", out / "coord_check_depth.png"]
    write_csv(rows, files[0], DEPTH_CSV_COLUMNS)
    write_csv(slopes, files[1], DEPTH_SLOPE_COLUMNS)
    plot_depth_check(rows, files[2], title=title)
    seconds = time.perf_counter() - start
    return {"rows": rows, "slopes": slopes, "summary": None, "table": format_depth_slope_table(slopes),
            "output_dir": out, "files": files, "seconds": seconds}
