"""What happens: a few optimizer steps, and how far each one moves each layer's output.

For every module that owns a weight, its input and output are kept from the training forward; after the
optimizer's step the module is applied again to the SAME input, and the difference is the step's effect on that
layer, ΔW·x (for matrix layers without the bias's own change: f(x) - f(0) before and after). Measured on the input
the gradient came from, as Tensor Programs V's argument has it: that is where µP's Θ(1) updates live and where
SP's grow with width. The whole model is run again on that batch too, for the step's change of the logits and of
the residual stream (the last block's output). After the steps, a held-out probe batch gives the logits' and the
attention logits' RMS.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
from torch.optim import Optimizer

from mugpt.studies.doctor.probes import (
    Batch,
    Entry,
    KindOf,
    attention_calls,
    fit_logit_scale,
    is_matrix_layer,
    layer_key,
    residual_blocks,
    rms,
    weighted_modules,
)


def default_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """This project's models: model(x, y) returns (logits, loss)."""
    out = model(*batch)
    return out[1] if isinstance(out, tuple) else out


def default_forward(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The model's output on the batch's input (its first element)."""
    out = model(batch[0])
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def _probe(model: nn.Module, batch: Batch, forward_fn: Callable) -> dict[str, float]:
    """The model's output (the logits) and the attention logits' RMS on `batch`."""
    calls: list = []
    was_training = model.training
    model.eval()
    try:
        with attention_calls(calls):
            out = forward_fn(model, batch)
    finally:
        model.train(was_training)
    seen = {"logits": rms(out)}
    if calls:
        seen["attn_logits"] = math.exp(sum(math.log(fit_logit_scale(c)[1]) for c in calls) / len(calls))
    return seen


def step_entries(model: nn.Module, optimizer: Optimizer, batches: Sequence[Batch], steps: int, probe: Batch,
                 kind_of: KindOf, loss_fn: Callable = default_loss, forward_fn: Callable = default_forward
                 ) -> tuple[list[Entry], list[float]]:
    """Take `steps` optimizer steps on batches[0..steps-1] and measure each on its own batch: update (ΔW·x per
    layer), logits_change and stream_change (the model's output and its last block's output, after the step
    against before); activation (each hidden layer's output RMS in the last step's forward); then logits and
    attn_logits (RMS on the probe batch after the steps). Returns the entries and the losses."""
    modules = weighted_modules(model, kind_of)
    readout = next((m for m, kind in modules.values() if kind == "readout" and is_matrix_layer(m, kind)), None)
    blocks = residual_blocks(model)
    watched = {**({"logits": readout} if readout is not None else {}), **({"stream": blocks[-1]} if blocks else {})}
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    outputs: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(_m, inputs, out):
            if name not in seen and inputs and isinstance(inputs[0], torch.Tensor):
                seen[name] = (inputs[0].detach(), out.detach())
        return hook

    def watch(name: str):
        def hook(_m, _inputs, out):
            outputs.setdefault(name, out.detach())
        return hook

    entries, losses = [], []
    model.train()
    for t in range(steps):
        seen.clear()
        outputs.clear()
        handles = [m.register_forward_hook(keep(name)) for name, (m, _) in modules.items()]
        handles += [m.register_forward_hook(watch(name)) for name, m in watched.items()]
        try:
            loss = loss_fn(model, batches[t])
        finally:
            for h in handles:
                h.remove()
        losses.append(loss.item())
        loss.backward()
        with torch.no_grad():
            at_zero = {name: modules[name][0](torch.zeros_like(x[..., :1, :])) for name, (x, _) in seen.items()
                       if is_matrix_layer(*modules[name])}
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for name, (x, out) in seen.items():
                module, kind = modules[name]
                delta = module(x) - out
                if name in at_zero:  # the bias's own change aside: (W_after - W_before)·x
                    delta = delta - (module(torch.zeros_like(x[..., :1, :])) - at_zero[name])
                key, in_block = layer_key(name)
                entries.append(Entry("update", kind, key, in_block, rms(delta)))
                if t == steps - 1 and kind == "hidden":
                    entries.append(Entry("activation", kind, key, in_block, rms(out)))
            before = dict(outputs)
            outputs.clear()
            handles = [m.register_forward_hook(watch(name)) for name, m in watched.items()]
            try:
                forward_fn(model, batches[t])
            finally:
                for h in handles:
                    h.remove()
            for name, value in before.items():
                entries.append(Entry(f"{name}_change", name, name, False, rms(outputs[name] - value)))
    after = _probe(model, probe, forward_fn)
    entries.append(Entry("logits", "logits", "logits", False, after["logits"]))
    if "attn_logits" in after:
        entries.append(Entry("attn_logits", "attention", "attention", True, after["attn_logits"]))
    return entries, losses
