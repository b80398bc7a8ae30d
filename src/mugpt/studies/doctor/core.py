"""diagnose(): build a model and its optimizer at several widths (and depths), measure what was built and what a
few steps do, and hold the exponents against a parametrization's promises."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from torch.optim import Optimizer

from mugpt.studies.doctor.probes import (
    Batch,
    KindOf,
    default_kind_of,
    forward_entries,
    optimizer_entries,
    weight_entries,
)
from mugpt.studies.doctor.report import Report, make_checks
from mugpt.studies.doctor.steps import default_forward, default_loss, step_entries

Build = Callable[[int, int], tuple[nn.Module, Optimizer]]
Promises = Mapping[str, Mapping[str, float]]


def expectation(expect: Any, family: str, widths: Sequence[int]) -> tuple[str, Promises]:
    """(label, promises) for `expect`: a parametrization's name (sp, mup, umup: built with its defaults, µP's base
    width the narrowest of `widths`), a parametrization object, or the promises themselves ({axis: {quantity:
    exponent}})."""
    from mugpt.core.parametrization import MaximalUpdateParametrization, parametrization_class

    if isinstance(expect, str):
        cls = parametrization_class(expect)
        rule = cls(base_width=min(widths)) if cls is MaximalUpdateParametrization else cls()
        return expect, rule.promises(family)
    if hasattr(expect, "promises"):
        return getattr(expect, "name", type(expect).__name__), expect.promises(family)
    if isinstance(expect, Mapping):
        return "custom", {axis: dict(rules) for axis, rules in expect.items()}
    raise ValueError(f"expect: a parametrization's name (sp, mup, umup), a parametrization or a mapping of promises, "
                     f"got {expect!r}")


def check_sweep(widths: Sequence[int], depths: Sequence[int], seeds: Sequence[int], steps: int) -> None:
    """Refuse, in one line naming the option, a sweep the exponents cannot be fitted from."""
    for key, values, least in (("widths", widths, 3), ("depths", depths, 3), ("seeds", seeds, 2)):
        if key == "depths" and not values:
            continue
        if not all(isinstance(v, int) and not isinstance(v, bool) and (v > 0 or key == "seeds") for v in values):
            raise ValueError(f"{key}={list(values)}: must be {'integers' if key == 'seeds' else 'positive integers'}")
        if len(set(values)) < least:
            raise ValueError(f"{key}={list(values)}: needs at least {least} different values "
                             f"({'to fit an exponent and see its spread' if key != 'seeds' else 'for a spread'})")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps={steps!r}: must be a positive integer (optimizer steps per model)")


def diagnose(build: Build, expect: Any = "mup", *, family: str = "adam", widths: Sequence[int] = (32, 64, 128),
             depths: Sequence[int] = (), depth: int = 2, width: int | None = None,
             batches: Sequence[Batch] | None = None, seeds: Sequence[int] = (0, 1, 2), steps: int = 3,
             kind_of: KindOf | None = None, loss_fn: Callable[[nn.Module, Batch], torch.Tensor] | None = None,
             forward_fn: Callable[[nn.Module, Batch], Any] | None = None) -> Report:
    """Does the model that `build(width, depth)` returns, with its optimizer, keep `expect`'s promises?

    build: (width, depth) → (model, optimizer), called under torch.manual_seed(seed) for every seed; the model
        in its initial state, the optimizer as training would construct it (its param groups are read).
    expect: what to hold the model to (see `expectation`); `family` the optimizer's µP family (adam, sgd, muon).
    widths: at depth `depth`; depths: at width `width` (default: the narrowest), when given (≥ 3 values).
    batches: steps + 1 batches; the first `steps` are trained on, the last is the probe batch. Default: byte-level
        Shakespeare windows, 8 sequences of 32 bytes, for models called as model(x, y) → (logits, loss).
    kind_of(name, param) → hidden | embedding | vector | readout: default, this project's GPT's names.
    loss_fn(model, batch) → loss (default: model(*batch)[1]); forward_fn(model, batch) → output (default:
        model(batch[0])), for the probe batch.
    """
    start = time.perf_counter()
    widths, depths, seeds = [int(w) for w in widths], [int(d) for d in depths], [int(s) for s in seeds]
    check_sweep(widths, depths, seeds, steps)
    label, promises = expectation(expect, family, widths)
    if batches is None:
        batches = shakespeare_batches(steps + 1)
    if len(batches) < steps + 1:
        raise ValueError(f"batches: {steps} steps and a probe need {steps + 1} batches, got {len(batches)}")
    kind_of = kind_of or default_kind_of
    records, losses = [], {}
    sweeps = [("width", widths, lambda w: (w, depth))]
    if depths:
        at = width or min(widths)
        sweeps.append(("depth", depths, lambda d: (at, d)))
    for axis, xs, shape in sweeps:
        for x in sorted(xs):
            for seed in seeds:
                torch.manual_seed(seed)
                model, optimizer = build(*shape(x))
                entries = optimizer_entries(model, optimizer, kind_of)
                entries += weight_entries(model, kind_of, seed)
                entries += forward_entries(model, kind_of, batches[steps], forward_fn or default_forward)
                stepped, loss = step_entries(model, optimizer, batches, steps, batches[steps], kind_of,
                                             loss_fn or default_loss, forward_fn or default_forward)
                records += [(axis, x, seed, e) for e in entries + stepped]
                losses[f"{axis}={x} seed={seed}"] = [round(v, 4) for v in loss]
    checks = make_checks(records, promises, [axis for axis, _, _ in sweeps])
    return Report(label, family, checks, widths, depths, seeds, steps, time.perf_counter() - start, losses)


def shakespeare_batches(count: int, batch_size: int = 8, block_size: int = 32, seed: int = 0,
                        tokens: Any = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`count` batches of byte-level Shakespeare windows (the same for every model)."""
    from mugpt.data.windows import load_tokens, sample_batches

    return sample_batches(load_tokens("byte") if tokens is None else tokens, count, batch_size, block_size, seed)
