"""Learning-rate schedules and the batch rule: one factor on every group's learning rate, so the ratios between
groups that a parametrization set (µP's per-kind learning rates) survive every step of the schedule."""

from __future__ import annotations

import logging
import math
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

log = logging.getLogger(__name__)

SCHEDULES = ("cosine", "constant", "linear", "wsd", "exponential")


def check_schedule(cfg: Any, max_steps: int) -> None:
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule: unknown schedule '{cfg.schedule}' (choose one of {', '.join(SCHEDULES)})")
    if cfg.warmup_steps < 0:
        raise ValueError(f"optim.warmup_steps={cfg.warmup_steps} must not be negative")
    if max_steps > 0 and cfg.get("warmup_fraction") is None and cfg.warmup_steps > max_steps:
        # a short smoke run of a long recipe: warm up over the whole run rather than refuse it
        log.warning("optim.warmup_steps=%d exceeds trainer.max_steps=%d: warming up over all %d steps",
                    cfg.warmup_steps, max_steps, max_steps)
    if cfg.lr <= 0:
        raise ValueError(f"optim.lr must be positive, got {cfg.lr}")


BATCH_LR_RULES = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}  # the exponent p of lr ∝ batch^p


def batch_lr_factor(cfg: Any, batch: int | None) -> float:
    """The factor optim.batch_lr_rule puts on the learning rate for a global batch of `batch` sequences."""
    rule = cfg.get("batch_lr_rule", "none")
    if rule == "none":
        return 1.0
    if batch is None:
        raise ValueError(f"optim.batch_lr_rule={rule}: the run's global batch is unknown here")
    return (batch / cfg.base_batch) ** BATCH_LR_RULES[rule]


def warmup_steps(cfg: Any, max_steps: int) -> int:
    """Warmup in optimizer steps: optim.warmup_fraction of the run when set, else optim.warmup_steps."""
    fraction = cfg.get("warmup_fraction")
    if fraction is not None and max_steps > 0:
        return round(fraction * max_steps)
    return min(cfg.warmup_steps, max_steps) if max_steps > 0 else cfg.warmup_steps


def lr_factor(step: int, cfg: Any, max_steps: int) -> float:
    """The schedule's multiplier of the base learning rate at optimizer step `step` (0-based).

    cosine: linear warmup, then half a cosine down to min_lr_ratio at max_steps.
    constant: warmup, then 1.  linear: warmup, then straight down to min_lr_ratio.
    wsd: warmup, stable at 1, then a linear decay over the last decay_fraction of training.
    exponential: warmup, then growth (or decay) by exp_gamma per step.
    """
    warmup = warmup_steps(cfg, max_steps)
    if step < warmup:
        return (step + 1) / warmup
    floor = cfg.min_lr_ratio
    progress = (step - warmup) / max(1, max_steps - warmup)
    progress = min(progress, 1.0)
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.schedule == "linear":
        return 1.0 - (1.0 - floor) * progress
    if cfg.schedule == "wsd":
        decay_start = max_steps - int(cfg.decay_fraction * max_steps)
        if step < decay_start:
            return 1.0
        return 1.0 - (1.0 - floor) * min(1.0, (step - decay_start) / max(1, max_steps - decay_start))
    if cfg.schedule == "exponential":
        return cfg.exp_gamma ** (step - warmup)
    raise ValueError(f"optim.schedule: unknown schedule '{cfg.schedule}'")


def build_scheduler(optimizer: Optimizer, cfg: Any, max_steps: int) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: lr_factor(step, cfg, max_steps))
