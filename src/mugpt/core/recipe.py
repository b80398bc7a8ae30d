"""The one training recipe: model → parametrization → parameter groups → optimizer → schedule, and one step.

Every piece of the project that trains a model builds it here: the LightningModule (`configure_optimizers`),
the coordinate check, the benchmark's plain loop and the optimizer comparison. Lightning runs its own loop;
everything outside Lightning calls `train_step`, so a change to clipping, autocast or accumulation is made once.

    recipe = Recipe.from_config(model=cfg.model, parametrization=cfg.parametrization, optim=cfg.optim,
                                vocab_size=256)
    model = recipe.build_model()
    optimizer, scheduler = recipe.build_optimizer(model, max_steps=1000)
    out = train_step(model, optimizer, scheduler, [(x, y)], grad_clip=recipe.grad_clip)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from mugpt.core.model import GPT, GPTConfig
from mugpt.core.optim import build_optimizer, clip_gradients_, mup_family
from mugpt.core.parametrization import get_parametrization
from mugpt.core.schedule import batch_lr_factor, build_scheduler

Batch = tuple[torch.Tensor, torch.Tensor]


def plain_dict(cfg: Any) -> dict:
    """A DictConfig (resolved) or any mapping as a plain dict."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


@dataclass
class Recipe:
    """What a run trains and how it updates it: the model's config, the parametrization's options (`name` and
    the rest) and the optimizer/schedule config (conf/optim/*.yaml's keys)."""

    model: GPTConfig
    parametrization: dict = field(default_factory=lambda: {"name": "sp"})
    optim: DictConfig = field(default_factory=lambda: OmegaConf.create({"name": "adamw"}))
    global_batch: int | None = None  # sequences per optimizer step (all processes): for optim.batch_lr_rule

    def __post_init__(self) -> None:
        self.parametrization = plain_dict(self.parametrization)
        self.optim = self.optim if isinstance(self.optim, DictConfig) else OmegaConf.create(dict(self.optim))
        self.rule = get_parametrization(self.parametrization)  # refuses unknown names and options
        self.model = self.rule.model_config(self.model)  # the model options the parametrization needs (u-µP: untied)

    @classmethod
    def from_config(cls, model: Mapping[str, Any], parametrization: Mapping[str, Any], optim: Mapping[str, Any],
                    global_batch: int | None = None, **model_overrides: Any) -> Recipe:
        """From config sections (DictConfigs or dicts). Keys of `model` that GPTConfig does not have are ignored
        (experiment configs may carry notes there); `model_overrides` win (e.g. the tokenizer's vocab_size)."""
        known = {f.name for f in fields(GPTConfig)}
        model_options = {k: v for k, v in plain_dict(model).items() if k in known}
        optim = optim if isinstance(optim, DictConfig) else OmegaConf.create(plain_dict(optim))
        return cls(GPTConfig(**{**model_options, **model_overrides}), plain_dict(parametrization), optim,
                   global_batch)

    @property
    def lr(self) -> float:
        """The base learning rate of this run: optim.lr, moved by optim.batch_lr_rule when the global batch differs
        from optim.base_batch (the donor's)."""
        return self.optim.lr * batch_lr_factor(self.optim, self.global_batch)

    @property
    def grad_clip(self) -> float | None:
        return self.optim.get("grad_clip") or None

    def build_model(self, device: torch.device | str | None = None) -> GPT:
        """The model as the parametrization builds and initialises it (from the current torch RNG state)."""
        model = self.rule.build_model(self.model)
        return model.to(device) if device is not None else model

    def param_groups(self, model: torch.nn.Module) -> list[dict]:
        """The parametrization's groups (kind, lr, decay) for this optimizer's µP family."""
        return self.rule.param_groups(model, self.lr, self.optim.weight_decay,
                                      family=mup_family(self.optim.name, self.optim))

    def build_optimizer(self, model: torch.nn.Module, max_steps: int,
                        on_cuda: bool | None = None) -> tuple[Optimizer, LRScheduler]:
        """The optimizer over the parametrization's groups and its schedule over `max_steps` optimizer steps."""
        if on_cuda is None:
            on_cuda = next(model.parameters()).device.type == "cuda"
        groups = self.param_groups(model)
        timescale = self.optim.get("weight_decay_timescale")
        if timescale is not None:  # λ·η·τ·T = 1 per group: the decay's memory is the fraction τ of every run
            for g in groups:
                g["weight_decay"] = 1.0 / (g["lr"] * timescale * max(1, max_steps)) if g["decay"] else 0.0
        optimizer = build_optimizer(groups, self.optim, on_cuda=on_cuda)
        return optimizer, build_scheduler(optimizer, self.optim, max(1, max_steps))


@dataclass
class StepOutput:
    loss: torch.Tensor  # mean loss over the micro-batches, detached, on the device (no host sync)
    grad_norm: torch.Tensor | None  # global gradient norm before clipping


def train_step(model: torch.nn.Module, optimizer: Optimizer, scheduler: LRScheduler | None,
               micro_batches: Sequence[Batch], *, grad_clip: float | None = None,
               autocast_dtype: torch.dtype | None = None) -> StepOutput:
    """One optimizer step, as the trainer takes it: forward and backward over each micro-batch (the loss divided
    by their number, so the gradient is that of the whole batch), clip the global gradient norm to `grad_clip`,
    step, zero the gradients, advance the schedule. `model(x, y)` returns (logits, loss): the GPT or its
    torch.compile'd version; its parameters are clipped in their own order, as Lightning's step clips them (the
    norm's float sum depends on the order). `autocast_dtype`: forward under autocast in that dtype (bf16 on GPUs)."""
    n = len(micro_batches)
    if n == 0:
        raise ValueError("train_step needs at least one micro-batch")
    total = None
    for x, y in micro_batches:
        with torch.autocast(x.device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            _, loss = model(x, y)
        (loss / n if n > 1 else loss).backward()
        total = loss.detach() if total is None else total + loss.detach()
    grad_norm = clip_gradients_(model.parameters(), grad_clip)  # as GPTLightningModule.configure_gradient_clipping
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()
    return StepOutput(total / n, grad_norm)


def split_batch(batch: Batch, micro_batches: int) -> list[Batch]:
    """One batch as `micro_batches` equal micro-batches (gradient accumulation over the same tokens)."""
    x, y = batch
    if x.shape[0] % micro_batches:
        raise ValueError(f"a batch of {x.shape[0]} sequences does not split into {micro_batches} micro-batches")
    return list(zip(x.chunk(micro_batches), y.chunk(micro_batches)))
