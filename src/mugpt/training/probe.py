"""Activation probes: forward hooks on the modules whose output size a width or depth study follows (embedding,
per block attention, MLP and residual stream, logits), each read as a float64 mean of |x|. Training's
diagnostics log them as act/*; the coordinate check traces them over widths and depths.

The hooks are our own: mup.coord_check's break on modules returning tuples with None, and average in the
activation's own precision."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn

from mugpt.core.model import GPT


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
