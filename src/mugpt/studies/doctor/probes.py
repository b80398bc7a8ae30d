"""What is built: one model and its optimizer, measured as they are handed over, before any step.

Every number here is read off the objects themselves: the weights' RMS, each module's output for a probe input
against what its weights alone give, the attention kernel's output against softmax(s·q·k)·v, a block's output with
a branch switched off, and the learning rate, ε and weight decay in the optimizer's param groups. The parameter
kinds (hidden, embedding, vector, readout) come from `kind_of(name, param)`; names with a block index
(`blocks.3.attn.qkv.weight`) share a key with the index replaced by `*`, so that depths compare.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim import Optimizer

from mugpt.core.parametrization import param_kind

KindOf = Callable[[str, torch.Tensor], str]
Batch = Any
_WRAPPERS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
_INDEX = re.compile(r"(?:(?<=\.)|^)\d+(?=\.)")
BRANCHES = ("attn", "mlp")  # the sublayers of a residual block whose branch multiplier is probed


@dataclass(frozen=True)
class Entry:
    """One measured number: `quantity` (lr, init, update, ...) of one parameter or module of `kind`. `key` names it
    across widths and depths; `in_block` says whether it sits inside a residual block (the depth rules' scope)."""

    quantity: str
    kind: str
    key: str
    in_block: bool
    value: float


def default_kind_of(name: str, param: torch.Tensor) -> str:
    """This project's GPT: mugpt.core.parametrization.param_kind on the name and the dimensions as built."""
    return param_kind(name, param.dim())


def clean_name(name: str) -> str:
    for segment in _WRAPPERS:
        name = name.replace(segment, "")
    return name


def layer_key(name: str) -> tuple[str, bool]:
    """('blocks.*.attn.qkv.weight', True) for 'blocks.3.attn.qkv.weight': the name across depths, and whether
    it has a block index."""
    key = _INDEX.sub("*", name)
    return key, key != name


def rms(x: torch.Tensor) -> float:
    return x.detach().to(torch.float64).pow(2).mean().sqrt().item()


def weighted_modules(model: nn.Module, kind_of: KindOf) -> dict[str, tuple[nn.Module, str]]:
    """name → (module, kind) for every module that owns a `weight` parameter of a known kind. A tied readout is
    found under its own name (`lm_head`), whatever name the shared weight has among the parameters."""
    out = {}
    for name, module in model.named_modules():
        weight = module._parameters.get("weight")
        if isinstance(weight, nn.Parameter):
            kind = kind_of(clean_name(f"{name}.weight"), weight)
            if kind in ("hidden", "embedding", "vector", "readout"):
                out[clean_name(name)] = (module, kind)
    return out


def is_matrix_layer(module: nn.Module, kind: str) -> bool:
    """A layer that multiplies a float input by its 2-D weight (hidden matrices and the readout)."""
    return kind in ("hidden", "readout") and module.weight.dim() == 2


def linear_part(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """module(x) - module(0): the output without the bias, whatever scale the module puts on either."""
    return module(x) - module(torch.zeros_like(x[..., :1, :] if x.dim() > 1 else x))


# ------------------------------------------------------------------------------------ the optimizer
def optimizer_groups(optimizer: Optimizer) -> list[dict]:
    """Every param group, those of optimizers held inside this one included (a combined optimizer such as
    MuonWithAdamW, a LightningOptimizer's wrapped one), each once."""
    groups: list[dict] = []
    seen_groups: set[int] = set()
    seen_optimizers: set[int] = set()

    def visit(opt: Any) -> None:
        if id(opt) in seen_optimizers:
            return
        seen_optimizers.add(id(opt))
        for group in getattr(opt, "param_groups", []):
            if id(group) not in seen_groups:
                seen_groups.add(id(group))
                groups.append(group)
        for value in vars(opt).values():
            if isinstance(value, Optimizer):
                visit(value)

    visit(optimizer)
    return groups


def optimizer_entries(model: nn.Module, optimizer: Optimizer, kind_of: KindOf) -> list[Entry]:
    """lr, eps and lr_wd (the decay a decoupled step applies, lr·weight_decay) of every parameter, from the group
    that holds it. ε counts only in Adam-like groups (those with betas): Muon's ε is Newton-Schulz's normaliser."""
    group_of: dict[int, dict] = {}
    for group in optimizer_groups(optimizer):
        for p in group["params"]:
            group_of.setdefault(id(p), group)
    entries = []
    for name, p in model.named_parameters():
        group = group_of.get(id(p))
        if group is None or not p.requires_grad:
            continue
        name = clean_name(name)
        kind, (key, in_block) = kind_of(name, p), layer_key(name)
        lr, wd = float(group["lr"]), float(group.get("weight_decay") or 0.0)
        entries.append(Entry("lr", kind, key, in_block, lr))
        if "betas" in group and group.get("eps") is not None:
            entries.append(Entry("eps", kind, key, in_block, float(group["eps"])))
        if wd > 0:
            entries.append(Entry("lr_wd", kind, key, in_block, lr * wd))
    return entries


# ---------------------------------------------------------------------------------- the weights and layers
@torch.no_grad()
def weight_entries(model: nn.Module, kind_of: KindOf, seed: int = 0) -> list[Entry]:
    """init: each parameter's RMS as built (all-zero ones, such as biases, say nothing and are left out).
    mult: each matrix layer's output for a unit-RMS random input, divided by what its weights alone give."""
    entries = []
    for name, p in model.named_parameters():
        name = clean_name(name)
        value = rms(p)
        if value > 0:
            entries.append(Entry("init", kind_of(name, p), *layer_key(name), value))
    generator = torch.Generator().manual_seed(seed)
    for name, (module, kind) in weighted_modules(model, kind_of).items():
        if is_matrix_layer(module, kind):
            w = module.weight
            x = torch.randn(64, w.shape[1], generator=generator).to(w)
            alone = rms(x @ w.t())
            if alone > 0:
                entries.append(Entry("mult", kind, *layer_key(name), rms(linear_part(module, x)) / alone))
    return entries


@contextlib.contextmanager
def attention_calls(calls: list) -> Iterator[None]:
    """Record (q, k, v, output, keyword arguments) of every F.scaled_dot_product_attention call meanwhile."""
    original = F.scaled_dot_product_attention

    def recorded(q, k, v, *args, **kwargs):
        out = original(q, k, v, *args, **kwargs)
        calls.append((q.detach(), k.detach(), v.detach(), out.detach(), args, kwargs))
        return out

    F.scaled_dot_product_attention = recorded
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def _attention_mask(call: tuple, t: int, s: int) -> torch.Tensor:
    _, _, _, _, args, kwargs = call
    mask = torch.zeros(t, s, dtype=torch.float64)
    attn_mask = kwargs.get("attn_mask", args[0] if args else None)
    if attn_mask is not None:
        mask = mask + (attn_mask.to(torch.float64) if attn_mask.dtype != torch.bool
                       else torch.zeros_like(attn_mask, dtype=torch.float64).masked_fill(~attn_mask, -math.inf))
    if kwargs.get("is_causal", args[2] if len(args) > 2 else False):
        mask = mask.masked_fill(torch.ones(t, s, dtype=torch.bool).triu(1), -math.inf)
    return mask


def fit_logit_scale(call: tuple, sequences: int = 2) -> tuple[float, float]:
    """The s with which the kernel turned q·k into attention logits, found from its output alone: the s minimising
    |softmax(s·q·kᵀ + mask)·v - output| (a grid over log2 s in [-14, 6], then golden-section refinement), and the
    RMS of the logits s·q·k over the attended positions. Float64, the first `sequences` sequences."""
    q, k, v, out = (t[:sequences].to(torch.float64) for t in call[:4])
    mask = _attention_mask(call, q.shape[-2], k.shape[-2])
    dots = q @ k.transpose(-1, -2)

    def error(log2_s: float) -> float:
        pred = torch.softmax(2.0 ** log2_s * dots + mask, dim=-1) @ v
        return (pred - out).pow(2).sum().item()

    grid = [-14 + 0.5 * i for i in range(41)]
    best = min(grid, key=error)
    lo, hi = best - 0.5, best + 0.5
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        lo, hi = (lo, b) if error(a) < error(b) else (a, hi)
    s = 2.0 ** ((lo + hi) / 2)
    attended = torch.isfinite(mask).expand_as(dots)
    return s, s * dots[attended].pow(2).mean().sqrt().item()


def residual_blocks(model: nn.Module) -> list[nn.Module]:
    blocks = getattr(model, "blocks", None)
    return list(blocks) if isinstance(blocks, (nn.ModuleList, nn.Sequential)) else []


@torch.no_grad()
def forward_entries(model: nn.Module, kind_of: KindOf, batch: Batch, forward_fn: Callable) -> list[Entry]:
    """Probes needing a forward pass on `batch`: attn_scale (per attention call), mult.embedding (the first
    block's input against the sum of the embedding rows looked up) and branch (each block's output with a
    branch on minus with it off, against the branch's sublayer output). Models without `blocks` give none of
    the last two; models without F.scaled_dot_product_attention give no attn_scale."""
    entries: list[Entry] = []
    blocks = residual_blocks(model)
    lookups: list[tuple[nn.Module, torch.Tensor]] = []
    block_inputs: list[torch.Tensor] = []
    handles = []
    for _, (module, kind) in weighted_modules(model, kind_of).items():
        if kind == "embedding" and not is_matrix_layer(module, kind):
            handles.append(module.register_forward_hook(
                lambda m, inputs, _out: lookups.append((m, inputs[0])) if not inputs[0].is_floating_point() else None))
    for block in blocks:
        handles.append(block.register_forward_pre_hook(lambda _m, inputs: block_inputs.append(inputs[0].detach())))
    calls: list = []
    was_training = model.training
    model.eval()
    try:
        with attention_calls(calls):
            forward_fn(model, batch)
    finally:
        for h in handles:
            h.remove()
    for call in calls:
        entries.append(Entry("attn_scale", "attention", "attention", True, fit_logit_scale(call)[0]))
    if blocks and lookups and block_inputs:
        rows = sum(F.embedding(idx, m.weight).to(torch.float64) for m, idx in lookups)
        entries.append(Entry("mult", "embedding", "embedding", False, rms(block_inputs[0]) / rms(rows)))
    for block, x in zip(blocks, block_inputs):
        for name, value in branch_multipliers(block, x).items():
            entries.append(Entry("branch", name, f"blocks.*.{name}", True, value))
    model.train(was_training)
    return entries


def branch_multipliers(block: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Per sublayer in BRANCHES: RMS(block(x) with it on − with it off) / RMS(its output), every later sublayer
    switched off in both runs, so that the difference is the branch alone (pre-norm blocks)."""
    present = [name for name in BRANCHES if isinstance(getattr(block, name, None), nn.Module)]
    outputs: dict[str, torch.Tensor] = {}

    def run(off: set[str]) -> torch.Tensor:
        handles = []
        for name in present:
            def hook(_m, _inputs, out, name=name):
                outputs.setdefault(name, out.detach())
                return torch.zeros_like(out) if name in off else out
            handles.append(getattr(block, name).register_forward_hook(hook))
        try:
            return block(x).detach()
        finally:
            for h in handles:
                h.remove()

    result = {}
    for i, name in enumerate(present):
        later = set(present[i + 1:])
        outputs.clear()
        on = run(later)
        sublayer = outputs[name]
        off = run(later | {name})
        if rms(sublayer) > 0:
            result[name] = rms(on - off) / rms(sublayer)
    return result
