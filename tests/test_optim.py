import io
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import run_if
from mugpt.config import load_optim_config
from mugpt.core.model import GPTConfig
from mugpt.core.optim import (
    OPTIMIZERS,
    MuonWithAdamW,
    _adam8bit_backend,
    build_optimizer,
    check_optimizer,
    mup_family,
    optimizer_state_bytes,
)
from mugpt.core.parametrization import MaximalUpdateParametrization, get_parametrization
from mugpt.core.schedule import build_scheduler, check_schedule, lr_factor


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


# ------------------------------------------------------------------------------------ the optimizer zoo
# Every option, with its conf/optim/<name>.yaml, on a tiny GPT: it learns, it follows µP's per-group rules
# at 4x the base width, its state has the size it should, and what it cannot do is refused in one line.
CONF = Path(__file__).resolve().parents[1] / "conf" / "optim"
ZOO = ["adamw", "adam", "sgd", "adagrad", "rmsprop", "adafactor", "adam8bit", "muon", "adam_atan2"]
HIDDEN = ("qkv.weight", "attn.proj.weight", "fc.weight", "mlp.proj.weight")
HAS_8BIT = _adam8bit_backend(torch.cuda.is_available()) is not None
needs_8bit = run_if(adam8bit=True)
zoo = [pytest.param(n, marks=[needs_8bit, pytest.mark.slow]) if n == "adam8bit" else n for n in ZOO]


def optim_cfg(name, **kw):
    return load_optim_config(name, **kw)


def tiny(width=64):
    return GPTConfig(vocab_size=256, block_size=32, width=width, n_layer=2, n_head=4)


def sp_optimizer(model, cfg, device="cpu"):
    groups = get_parametrization({"name": "sp"}).param_groups(model, cfg.lr, cfg.weight_decay,
                                                              family=mup_family(cfg.name))
    return build_optimizer(groups, cfg, on_cuda=device == "cuda")


def test_the_zoo_is_complete():
    assert sorted(OPTIMIZERS) == sorted(ZOO)
    for name in ZOO:
        cfg = load_optim_config(name)
        assert cfg.name == name
        # the shared keys' one home, kept off the group's options
        assert OmegaConf.load(CONF / f"{name}.yaml").defaults[0] == f"/schema_optim_{name}@_here_"
        for key in ("lr", "weight_decay", "grad_clip", "schedule", "warmup_steps", "min_lr_ratio", "decay_fraction",
                    "exp_gamma"):
            assert key in cfg, (name, key)


# Loss drop after 25 steps at each default lr, measured on a 2-core CPU over seeds 0-2 (min of 3, from 5.55):
# adamw 4.07, adam 3.07 (coupled L2 holds it back), sgd 5.45, adagrad 3.78, rmsprop 3.86, adafactor 3.27,
# muon 4.04. The margins sit about 0.5 below; adam8bit (torchao on the CPU) is held to AdamW's.
LEARN_MARGIN = {"adamw": 3.5, "adam": 2.5, "sgd": 4.5, "adagrad": 3.0, "rmsprop": 3.0, "adafactor": 2.5, "muon": 3.5,
                "adam8bit": 3.5, "adam_atan2": 3.5}


@pytest.mark.parametrize("name", zoo)
def test_every_optimizer_learns_a_fixed_batch(name):
    """SP, 25 steps on one batch of random tokens (memorisation): the loss must fall by the stated margin."""
    device = "cpu"
    torch.manual_seed(0)
    model = get_parametrization({"name": "sp"}).build_model(tiny()).to(device)
    cfg = optim_cfg(name, warmup_steps=5, schedule="constant")
    opt = sp_optimizer(model, cfg, device)
    sch = build_scheduler(opt, cfg, 25)
    x = torch.randint(0, 256, (4, 33), generator=torch.Generator().manual_seed(0)).to(device)
    losses = []
    for _ in range(25):
        _, loss = model(x[:, :-1], x[:, 1:].contiguous())
        losses.append(loss.item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sch.step()
    assert losses[0] == pytest.approx(math.log(256), abs=0.1)
    assert losses[-1] < losses[0] - LEARN_MARGIN[name], (name, losses[0], losses[-1])


def expected_mup_lr(name, param_name, cfg, m=4.0):
    """µP's rule for this optimizer: what the group holding `param_name` must step with at width m x base."""
    hidden = param_name.endswith(HIDDEN)
    if name == "sgd":  # MuSGD: hidden lr / (fan_in mult / fan_out mult) = lr here (both grow); vector-like lr·m
        return cfg.lr if hidden else cfg.lr * m
    if name == "muon":  # Muon's own shape scaling on hidden matrices, AdamW (rule 1) on the rest
        return cfg.lr if hidden else cfg.adamw_lr
    return cfg.lr / m if hidden else cfg.lr  # Adam-like: hidden lr/m


@pytest.mark.parametrize("name", ZOO)
def test_mup_per_group_learning_rates_at_four_times_base_width(name):
    p = get_parametrization({"name": "mup", "base_width": 64})
    model = p.build_model(tiny(256))
    cfg = optim_cfg(name)
    groups = p.param_groups(model, cfg.lr, cfg.weight_decay, family=mup_family(name))
    # adam8bit cannot be built here: its groups are what the 8-bit AdamW would be given
    param_groups = groups if name == "adam8bit" and not HAS_8BIT else build_optimizer(groups, cfg).param_groups
    group_of = {id(q): g for g in param_groups for q in g["params"]}
    names = dict(model.named_parameters())
    assert len(group_of) == len(names)
    for pname, q in names.items():
        g = group_of[id(q)]
        assert g["lr"] == pytest.approx(expected_mup_lr(name, pname, cfg)), pname
        if q.dim() < 2:
            assert g["weight_decay"] == 0.0, pname
        elif name != "muon":  # decoupled decay shrinks by lr·wd per step at any width (Muon: both mults are 1)
            assert g["lr"] * g["weight_decay"] == pytest.approx(cfg.lr * cfg.weight_decay), pname
    if name == "muon":
        opt = build_optimizer(groups, cfg)
        muon_params = {id(q) for g in opt.muon.param_groups for q in g["params"]}
        assert muon_params == {id(q) for n, q in names.items() if n.endswith(HIDDEN)}


def first_step(model, opt):
    x = torch.randint(0, 256, (4, 33), generator=torch.Generator().manual_seed(1))
    before = {n: q.detach().clone() for n, q in model.named_parameters()}
    _, loss = model(x[:, :-1], x[:, 1:].contiguous())
    loss.backward()
    grads = {n: q.grad.clone() for n, q in model.named_parameters()}
    opt.step()
    return {n: q.detach() - before[n] for n, q in model.named_parameters()}, grads


@pytest.mark.parametrize("name, gain", [("adamw", 1.0), ("adam", 1.0), ("adagrad", 1.0), ("rmsprop", 10.0),
                                        ("adam_atan2", 1.27 * math.pi / 4),
                                        ("adafactor", 1.0)])
def test_mup_effective_first_step_is_lr_times_rule(name, gain):
    """The step an optimizer really takes, not just the lr it was given: Adam-like first steps are
    ±gain·lr per entry (RMSprop: 1/sqrt(1-alpha) = 10), so the median |Δw| of a hidden matrix at width 4x base
    is gain·lr/4 and of a vector-like weight gain·lr. Adafactor's factored second moment only approximates
    g², and its update clip can only shrink the step: a 2-D step lies between 0.5 and 1 x the rule."""
    torch.manual_seed(0)
    p = get_parametrization({"name": "mup", "base_width": 64})
    model = p.build_model(tiny(256))
    cfg = optim_cfg(name, weight_decay=0.0)
    opt = build_optimizer(p.param_groups(model, cfg.lr, 0.0, family=mup_family(name)), cfg)
    delta, grads = first_step(model, opt)
    for pname, d in delta.items():
        moved = d[grads[pname].abs() > 1e-6].abs()
        rule = gain * expected_mup_lr(name, pname, cfg)
        if name == "adafactor" and d.dim() == 2:
            assert 0.5 * rule < moved.median() <= 1.0001 * rule, pname
        else:
            assert moved.median().item() == pytest.approx(rule, rel=0.02), pname


def test_adafactor_relative_step_scales_by_weight_rms_and_is_off_by_default():
    """torch's Adafactor multiplies the step by max(eps2, RMS(w)); relative_step=false (eps2=1) removes that."""
    def step_size(relative, scale):
        w = torch.nn.Parameter(torch.randn(64, 64, generator=torch.Generator().manual_seed(0)) * scale)
        opt = build_optimizer([{"params": [w], "lr": 1e-2, "weight_decay": 0.0}],
                              optim_cfg("adafactor", relative_step=relative))
        w.grad = torch.randn(64, 64, generator=torch.Generator().manual_seed(1))
        before = w.detach().clone()
        opt.step()
        return (w.detach() - before).abs().mean().item()

    assert step_size(False, 0.2) == pytest.approx(step_size(False, 0.02), rel=1e-5)
    assert step_size(True, 0.2) / step_size(True, 0.02) == pytest.approx(10.0, rel=1e-3)


def test_muon_step_on_hidden_matrices_does_not_shrink_with_width():
    """Muon's orthogonalised step has the same spectral norm at every width (so µP adds no 1/m to it): the
    first update of each hidden matrix at 2x base width has the spectral norm it has at base width (with 1/m
    it would be half), about lr·sqrt(max(1, fan_out/fan_in)) (Newton-Schulz leaves singular values near, not
    at, 1). Two widths only: torch's Newton-Schulz runs in bfloat16, about 40x slower than fp32 on this CPU."""
    cfg = optim_cfg("muon", weight_decay=0.0)
    norms = {}
    for width in (64, 128):
        torch.manual_seed(0)
        p = get_parametrization({"name": "mup", "base_width": 64})
        model = p.build_model(tiny(width))
        delta, _ = first_step(model, build_optimizer(p.param_groups(model, cfg.lr, 0.0, family="muon"), cfg))
        norms[width] = {n: torch.linalg.matrix_norm(d, ord=2).item() for n, d in delta.items() if n.endswith(HIDDEN)}
    for pname, small in norms[64].items():
        aspect = {"qkv.weight": 3, "fc.weight": 4}.get(pname.split(".", 3)[-1], 1)
        assert small == pytest.approx(cfg.lr * math.sqrt(aspect), rel=0.35), pname
        assert norms[128][pname] == pytest.approx(small, rel=0.2), pname


def test_muon_rule_is_one_for_every_shape():
    model = get_parametrization({"name": "mup", "base_width": 64}).build_model(tiny(256))
    rule = MaximalUpdateParametrization.lr_multiplier
    assert {rule(s, "muon") for s in model.infshapes.values()} == {1.0}


def test_muon_wrapper_is_one_optimizer_for_schedulers_and_checkpoints():
    """A LambdaLR drives both inner optimizers; state_dict()/load_state_dict() restore both exactly."""
    def setup():
        torch.manual_seed(0)
        p = get_parametrization({"name": "mup", "base_width": 64})
        model = p.build_model(tiny(64))
        cfg = optim_cfg("muon", warmup_steps=2)
        opt = build_optimizer(p.param_groups(model, cfg.lr, cfg.weight_decay, family="muon"), cfg)
        return model, opt, build_scheduler(opt, cfg, 10), cfg

    def train(model, opt, sch, steps, seed):
        gen = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            x = torch.randint(0, 256, (2, 33), generator=gen)
            opt.zero_grad()
            model(x[:, :-1], x[:, 1:].contiguous())[1].backward()
            opt.step()
            sch.step()

    model, opt, sch, cfg = setup()
    assert isinstance(opt, MuonWithAdamW) and isinstance(opt, torch.optim.Optimizer)
    train(model, opt, sch, 3, seed=0)
    factor = lr_factor(3, cfg, 10)
    assert opt.muon.param_groups[0]["lr"] == pytest.approx(cfg.lr * factor)  # the scheduler reached Muon
    assert opt.adamw.param_groups[0]["lr"] == pytest.approx(cfg.adamw_lr * factor)  # ... and AdamW
    assert sum("momentum_buffer" in s for s in opt.state.values()) == 8  # 4 hidden matrices x 2 layers
    assert sum("exp_avg" in s for s in opt.state.values()) == len(list(model.parameters())) - 8

    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sch": sch.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)
    train(model, opt, sch, 2, seed=1)

    model2, opt2, sch2, _ = setup()
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    sch2.load_state_dict(saved["sch"])
    assert opt2.muon.param_groups[0] is opt2.param_groups[0]  # relinked after load_state_dict
    assert opt2.muon.state is opt2.state and opt2.adamw.state is opt2.state
    train(model2, opt2, sch2, 2, seed=1)
    for (n, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)


@pytest.mark.parametrize("tie", [True, False])
def test_muon_under_sp_takes_the_groups_of_kind_hidden(tie):
    model = get_parametrization({"name": "sp"}).build_model(GPTConfig(**{**tiny().to_dict(), "tie_embeddings": tie}))
    cfg = optim_cfg("muon")
    groups = get_parametrization({"name": "sp"}).param_groups(model, cfg.lr, cfg.weight_decay, family="muon")
    opt = build_optimizer(groups, cfg)  # embeddings, the readout and vectors go to AdamW
    muon_names = {n for g in opt.muon.param_groups for n in g["param_names"]}
    assert muon_names == {n for n, _ in model.named_parameters() if n.endswith(HIDDEN)}
    adamw_names = {n for g in opt.adamw.param_groups for n in g["param_names"]}
    assert ("lm_head.weight" in adamw_names) is not tie  # tied: the readout is tok_emb.weight
    assert {g["kind"] for g in opt.adamw.param_groups} == ({"embedding", "vector"} | (set() if tie else {"readout"}))
    assert all(g["lr"] == pytest.approx(cfg.adamw_lr) for g in opt.adamw.param_groups)
    unkinded = [{k: v for k, v in g.items() if k != "kind"} for g in groups]
    with pytest.raises(ValueError, match="optim.name=muon: every parameter group needs a 'kind'"):
        build_optimizer(unkinded, cfg)


@pytest.mark.parametrize(
    "name, kw, match",
    [("adafactor", dict(relative_step=True), "optim.relative_step=true scales each step by the weight's RMS"),
     ("muon", dict(adjust_lr_fn="match_rms_adamw"), "optim.adjust_lr_fn=match_rms_adamw grows Muon's step")],
)
def test_options_that_break_mup_are_refused_under_mup_only(name, kw, match):
    cfg = optim_cfg(name, **kw)
    p = get_parametrization({"name": "mup", "base_width": 64})
    model = p.build_model(tiny(128))
    with pytest.raises(ValueError, match=match):
        build_optimizer(p.param_groups(model, cfg.lr, cfg.weight_decay, family=mup_family(name)), cfg)
    sp_optimizer(get_parametrization({"name": "sp"}).build_model(tiny()), cfg)  # fine under SP


def test_nesterov_without_momentum_is_refused():
    with pytest.raises(ValueError, match="optim.nesterov=true needs optim.momentum > 0"):
        build_optimizer([{"params": [torch.nn.Parameter(torch.ones(2))]}], optim_cfg("sgd", momentum=0.0))


def test_adam8bit_without_its_library_fails_in_one_line(monkeypatch):
    monkeypatch.setattr("mugpt.core.optim._adam8bit_backend", lambda on_cuda: None)
    expected = "optim.name=adam8bit: needs torchao (pip install torchao; CPU or CUDA) or, on a CUDA GPU, bitsandbytes"
    with pytest.raises(ImportError) as err:
        check_optimizer(optim_cfg("adam8bit"), on_cuda=False)
    assert str(err.value) == expected
    with pytest.raises(ImportError, match="^optim.name=adam8bit: needs torchao"):
        build_optimizer([{"params": [torch.nn.Parameter(torch.ones(2))]}], optim_cfg("adam8bit"), on_cuda=True)


def test_adam8bit_prefers_bitsandbytes_on_cuda_only(monkeypatch):
    """bitsandbytes' 8-bit AdamW is CUDA-only: on the CPU the backend is torchao or nothing."""
    import sys
    import types

    fake = types.SimpleNamespace(optim=types.SimpleNamespace(AdamW8bit="bnb"))
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    assert _adam8bit_backend(on_cuda=True) == ("bitsandbytes", "bnb")
    cpu = _adam8bit_backend(on_cuda=False)
    assert cpu is None or cpu[0] == "torchao"


@pytest.mark.parametrize("name", [n for n in ZOO if n != "adam8bit"])
def test_optimizer_state_bytes_per_parameter(name):
    """Measured from the state tensors after one step, against what each algorithm keeps (fp32)."""
    torch.manual_seed(0)
    model = get_parametrization({"name": "sp"}).build_model(tiny())
    opt = sp_optimizer(model, optim_cfg(name))
    first_step(model, opt)
    got = optimizer_state_bytes(opt)
    params = list(model.parameters())
    n = sum(q.numel() for q in params)
    hidden = sum(q.numel() for k, q in model.named_parameters() if k.endswith(HIDDEN))
    factored = sum(4 * (q.shape[0] + q.shape[1]) if q.dim() == 2 else 4 * q.numel() for q in params)
    expected = {
        "adamw": 8 * n, "adam": 8 * n, "adam_atan2": 8 * n,  # exp_avg + exp_avg_sq
        "sgd": 4 * n, "adagrad": 4 * n, "rmsprop": 4 * n,  # one buffer (momentum / sum / square_avg)
        "adafactor": factored,                      # a row and a column vector per matrix, full for vectors
        "muon": 4 * hidden + 8 * (n - hidden),      # Muon's momentum on hidden matrices, AdamW's two on the rest
    }[name]
    assert got["params"] == n
    assert got["bytes"] == expected
    assert got["bytes_per_param"] == pytest.approx(expected / n)
    if name == "adamw":
        assert got["bytes_per_param"] == 8.0
    if name == "adafactor":
        assert got["bytes_per_param"] < 0.25  # measured 0.1 on this model


# ------------------------------------------------------------ ε, batch, decay time scale, warmup fraction
@pytest.mark.parametrize("name", ["adamw", "adam", "adagrad", "rmsprop", "muon"])
def test_mup_scales_each_groups_eps_with_width(name):
    """At width 4x base every group's ε is the optimizer's ε / 4 (µP's gradients are 1/m smaller); Muon's own
    groups keep Newton-Schulz's eps untouched (a normaliser, not a gradient floor)."""
    p = get_parametrization({"name": "mup", "base_width": 64})
    model = p.build_model(tiny(256))
    cfg = optim_cfg(name)
    opt = build_optimizer(p.param_groups(model, cfg.lr, 0.0, family=mup_family(name)), cfg)
    adam_like = opt.adamw.param_groups if name == "muon" else opt.param_groups
    assert [g["eps"] for g in adam_like] == [pytest.approx(cfg.eps / 4)] * len(adam_like)
    if name == "muon":
        assert {g["eps"] for g in opt.muon.param_groups} == {torch.optim.Muon([torch.zeros(2, 2)]).defaults["eps"]}


def test_sp_keeps_the_optimizers_eps():
    model = get_parametrization({"name": "sp"}).build_model(tiny(256))
    opt = sp_optimizer(model, optim_cfg("adamw"))
    assert {g["eps"] for g in opt.param_groups} == {1e-8}


@pytest.mark.parametrize("rule, batch, factor", [("none", 64, 1.0), ("sqrt", 64, 2.0), ("linear", 64, 4.0),
                                                 ("sqrt", 4, 0.5), ("linear", 16, 1.0)])
def test_batch_lr_rule(rule, batch, factor):
    from mugpt.core.recipe import Recipe

    cfg = optim_cfg("adamw", batch_lr_rule=rule, base_batch=16, lr=1e-3)
    recipe = Recipe(tiny(64), {"name": "mup", "base_width": 64}, cfg, global_batch=batch)
    assert recipe.lr == pytest.approx(1e-3 * factor)
    groups = recipe.param_groups(recipe.build_model())
    assert [g["lr"] for g in groups] == [pytest.approx(1e-3 * factor)] * len(groups)


def test_weight_decay_timescale_sets_each_groups_decay():
    """λ = 1/(η_group·τ·T): the per-step shrink η·λ is 1/(τ·T) for every decayed group, whatever its lr."""
    from mugpt.core.recipe import Recipe

    cfg = optim_cfg("adamw", weight_decay_timescale=0.25, weight_decay=0.0, lr=1e-2)
    recipe = Recipe(tiny(256), {"name": "mup", "base_width": 64}, cfg)
    opt, _ = recipe.build_optimizer(recipe.build_model(), max_steps=400)
    decayed = [g for g in opt.param_groups if g["decay"]]
    assert {g["lr_mult"] for g in decayed} == {1.0, 0.25}  # embedding and hidden groups both covered
    for g in decayed:
        assert g["lr_mult"] * 1e-2 * g["weight_decay"] == pytest.approx(1 / 100)
    assert all(g["weight_decay"] == 0.0 for g in opt.param_groups if not g["decay"])


def test_warmup_fraction_replaces_warmup_steps():
    cfg = sched(warmup_fraction=0.25, warmup_steps=3, schedule="constant")
    assert [lr_factor(s, cfg, 40) for s in (0, 4, 9, 10)] == [pytest.approx(0.1), pytest.approx(0.5), 1.0, 1.0]
    assert lr_factor(19, cfg, 80) == pytest.approx(1.0) and lr_factor(18, cfg, 80) == pytest.approx(0.95)


@pytest.mark.parametrize("kw, match", [
    (dict(batch_lr_rule="cubic"), "optim.batch_lr_rule: unknown rule 'cubic'"),
    (dict(batch_lr_rule="sqrt"), "optim.batch_lr_rule=sqrt needs optim.base_batch"),
    (dict(weight_decay_timescale=0.0), "optim.weight_decay_timescale must be positive"),
    (dict(warmup_fraction=1.0), "optim.warmup_fraction must be in \\[0, 1\\)"),
])
def test_bad_transfer_options_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        check_optimizer(optim_cfg("adamw", **kw))


def test_weight_decay_timescale_needs_decoupled_decay():
    with pytest.raises(ValueError, match="optim.weight_decay_timescale: optim=adam has no single decoupled decay"):
        check_optimizer(optim_cfg("adam", weight_decay_timescale=0.5))


def test_adam_atan2_without_its_package_fails_in_one_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "adam_atan2_pytorch" else real(n, *a))
    with pytest.raises(ImportError, match="optim.name=adam_atan2: needs the adam-atan2-pytorch package"):
        check_optimizer(optim_cfg("adam_atan2"))


def test_muon_matched_to_adamw_takes_adams_mup_rule():
    """adjust_lr_fn=match_rms_adamw makes every entry of Muon's step ~0.2·lr at any width, as AdamW's: under µP
    its family is Adam's, so the hidden matrices get lr/m and their step shrinks 4x from m = 1 to m = 4, while the
    spectral rule (family muon) keeps lr. Groups built with Muon's own rule are refused."""
    cfg = optim_cfg("muon", adjust_lr_fn="match_rms_adamw")
    assert mup_family("muon", cfg) == "adam" and mup_family("muon") == "muon"
    p = get_parametrization({"name": "mup", "base_width": 64})
    rms = {}
    for width in (64, 256):
        torch.manual_seed(0)
        model = p.build_model(tiny(width))
        groups = p.param_groups(model, cfg.lr, 0.0, family=mup_family("muon", cfg))
        hidden = [g for g in groups if g["kind"] == "hidden"]
        assert all(g["lr"] == pytest.approx(cfg.lr * 64 / width) for g in hidden)
        opt = build_optimizer(groups, cfg)
        weight = model.blocks[0].attn.qkv.weight
        before = weight.detach().clone()
        for q in model.parameters():
            q.grad = torch.randn_like(q)
        opt.step()
        rms[width] = (weight.detach() - before).pow(2).mean().sqrt().item()
    assert rms[64] == pytest.approx(0.2 * cfg.lr, rel=0.35)
    assert rms[256] / rms[64] == pytest.approx(0.25, rel=0.2)
    model = p.build_model(tiny(256))
    with pytest.raises(ValueError, match="match_rms_adamw grows Muon's step like sqrt\\(width\\)"):
        build_optimizer(p.param_groups(model, cfg.lr, 0.0, family="muon"), cfg)


def test_adam_and_adamw_take_the_same_steps_without_weight_decay():
    """Why the optimizer-transfer table has no Adam row: at weight decay 0 (the µTransfer experiment's), Adam's L2
    and AdamW's decoupled decay are both absent, and µP's groups give both the same per-group lrs, so five steps
    leave the same weights, bit for bit."""
    p = get_parametrization({"name": "mup", "base_width": 64})
    weights = {}
    for name in ("adam", "adamw"):
        torch.manual_seed(0)
        model = p.build_model(tiny(128))
        init = {n: q.detach().clone() for n, q in model.named_parameters()}
        cfg = optim_cfg(name, weight_decay=0.0)
        opt = build_optimizer(p.param_groups(model, cfg.lr, 0.0, family=mup_family(name)), cfg)
        for step in range(5):
            x = torch.randint(0, 256, (4, 33), generator=torch.Generator().manual_seed(step))
            _, loss = model(x[:, :-1], x[:, 1:].contiguous())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        weights[name] = {n: q.detach().clone() for n, q in model.named_parameters()}
    assert weights["adam"].keys() == weights["adamw"].keys() and len(init) > 10
    for n, w in weights["adam"].items():
        assert torch.equal(w, weights["adamw"][n]), n
        assert not torch.equal(w, init[n]), n  # every tensor moved: the equality is of real steps
