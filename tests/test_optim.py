import math

import pytest
import torch
from omegaconf import OmegaConf

from mugpt.optim import build_optimizer, build_scheduler, check_schedule, lr_factor


def sched(**kw):
    base = dict(name="adamw", lr=1e-3, betas=[0.9, 0.95], eps=1e-8, fused="auto", schedule="cosine",
                warmup_steps=10, min_lr_ratio=0.1, decay_fraction=0.2, exp_gamma=1.0)
    return OmegaConf.create({**base, **kw})


def test_cosine_warmup_then_floor():
    cfg = sched()
    assert lr_factor(0, cfg, 110) == pytest.approx(0.1)
    assert lr_factor(9, cfg, 110) == pytest.approx(1.0)
    assert lr_factor(10, cfg, 110) == pytest.approx(1.0)
    assert lr_factor(60, cfg, 110) == pytest.approx(0.55)  # halfway: floor + (1-floor)/2
    assert lr_factor(110, cfg, 110) == pytest.approx(0.1)
    assert lr_factor(500, cfg, 110) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "kw, step, expected",
    [
        (dict(schedule="constant"), 80, 1.0),
        (dict(schedule="linear"), 60, 0.55),
        (dict(schedule="wsd"), 80, 1.0),  # decay starts at 110 - 22 = 88
        (dict(schedule="wsd"), 99, 1.0 - 0.9 * 11 / 22),
        (dict(schedule="wsd"), 110, 0.1),
        (dict(schedule="exponential", exp_gamma=1.01), 30, 1.01**20),
    ],
)
def test_other_schedules(kw, step, expected):
    assert lr_factor(step, sched(**kw), 110) == pytest.approx(expected)


def test_scheduler_keeps_per_group_ratios():
    w1, w2 = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2))
    cfg = sched(warmup_steps=0)
    opt = build_optimizer([{"params": [w1], "lr": 1e-3}, {"params": [w2], "lr": 2.5e-4}], cfg)
    sch = build_scheduler(opt, cfg, 100)
    for _ in range(50):
        opt.step()
        sch.step()
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs[0] / lrs[1] == pytest.approx(4.0)
    assert lrs[0] == pytest.approx(1e-3 * lr_factor(50, cfg, 100))
    assert math.isclose(lr_factor(50, cfg, 100), 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


@pytest.mark.parametrize(
    "kw, match",
    [(dict(schedule="triangle"), "optim.schedule: unknown schedule 'triangle'"),
     (dict(warmup_steps=-1), "optim.warmup_steps=-1"),
     (dict(lr=0.0), "optim.lr must be positive")],
)
def test_bad_schedule_options(kw, match):
    with pytest.raises(ValueError, match=match):
        check_schedule(sched(**kw), 100)


def test_warmup_longer_than_the_run_spans_the_run():
    cfg = sched(warmup_steps=500)
    check_schedule(cfg, 5)  # a smoke run of a long recipe is allowed, with a warning
    assert [lr_factor(s, cfg, 5) for s in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])


def test_unknown_optimizer_is_rejected():
    with pytest.raises(ValueError, match="optim.name: unknown optimizer 'lamb'"):
        build_optimizer([{"params": [torch.nn.Parameter(torch.ones(1))]}], sched(name="lamb"))
