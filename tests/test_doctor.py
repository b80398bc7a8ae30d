"""The µP doctor (studies.doctor) against known bugs: each injected into the project's own parametrization, and each
caught by the check that names it; every correct configuration passes over 3 seeds; SP held to µP fails; the
probes read what was built; a user's own model; the script's exit status."""

import json
import math
import subprocess
import sys
from dataclasses import replace

import mup.infshape
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import mugpt.core.parametrization as P
import mugpt.core.recipe as R
from conftest import ROOT
from mugpt.config import load_optim_config
from mugpt.core.model import GPT, GPTConfig
from mugpt.studies.coord_check import load_tokens
from mugpt.studies.doctor import TOLERANCES, diagnose, diagnose_training
from mugpt.studies.doctor.probes import default_kind_of, forward_entries, optimizer_entries, weight_entries
from mugpt.studies.doctor.steps import default_forward

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models on a busy 2-core machine

MUP = {"name": "mup"}  # µP's shipped defaults: parametrization=mup composes the same from the class
MODEL = {"n_layer": 2, "n_head": 2, "block_size": 32}
UNTIED = {**MODEL, "tie_embeddings": False}
MP = P.MaximalUpdateParametrization
DYNAMIC = ("update", "activation", "stream_change", "logits_change")  # what the steps measure


@pytest.fixture(scope="module")
def tokens():
    return load_tokens("byte")


def optim(name: str = "adamw", **overrides):
    """The optimizer as conf/mup_doctor.yaml sets it: constant lr 1e-2, no warmup, no clipping."""
    return load_optim_config(name, **{"schedule": "constant", "warmup_steps": 0, "grad_clip": None, "lr": 1e-2,
                                      **overrides})


def run(tokens, parametrization=None, optimizer=None, model=MODEL, seeds=(0, 1), **kw):
    return diagnose_training(model, parametrization or MUP, optimizer or optim(), tokens=tokens, seeds=seeds, **kw)


# ----------------------------------------------------------------------------------- correct configurations
CORRECT = {
    "sp": ({"name": "sp"}, optim(), MODEL),
    "mup-adamw": (MUP, optim(), MODEL),
    "completep-adamw": ({**MUP, "depth_alpha": 1.0}, optim(), MODEL),
    "umup-adamw": ({"name": "umup"}, optim(lr=0.25, weight_decay=1e-4), UNTIED),
    "mup-muon": (MUP, optim("muon"), MODEL),
    "mup-sgd": (MUP, optim("sgd", lr=0.1, weight_decay=1e-4), MODEL),
}
# Quantities each configuration must have measured and passed (no promise may go unmeasured by accident).
MEASURED = {"init.hidden", "mult.readout", "attn_scale", "lr.hidden", "lr.embedding", "lr.vector", "lr_wd.hidden",
            "update.hidden", "update.embedding", "activation.hidden", "logits_change", "stream_change"}


# The fast tier holds SP and µP with AdamW; the other correct configurations (about a second apiece) run in the
# slow tier, while the bugs the doctor must catch under Muon and CompleteP stay fast (test_injected_bug_...).
SLOW_CORRECT = {"completep-adamw", "umup-adamw", "mup-muon", "mup-sgd"}


@pytest.mark.parametrize("label", [pytest.param(label, marks=pytest.mark.slow) if label in SLOW_CORRECT else label
                                   for label in CORRECT])
def test_correct_configurations_raise_no_alarm_over_3_seeds(tokens, label):
    parametrization, optimizer, model = CORRECT[label]
    report = run(tokens, parametrization, optimizer, model, seeds=(0, 1, 2))
    assert report.broken == [], report.table()
    assert report.exit_code == 0
    if label == "sp":  # SP promises nothing: every row is information, and what it shows is SP's growth
        assert {c.verdict for c in report.checks} == {"info"}
        assert report.check("width:update.hidden").measured > 0.7  # measured +1.18: Adam's ΔW·x grows ~ width
        assert report.check("width:lr.hidden").measured == pytest.approx(0.0, abs=1e-6)
        return
    passed = {c.quantity for c in report.checks if c.axis == "width" and c.verdict == "ok"}
    assert MEASURED <= passed, MEASURED - passed
    for c in report.checks:
        if c.verdict == "ok":
            assert len(c.per_seed) == 3 and abs(c.measured - c.expected) <= c.tolerance
    if label == "completep-adamw":
        depth = {c.quantity for c in report.checks if c.axis == "depth" and c.verdict == "ok"}
        assert {"branch", "lr.hidden", "eps.hidden", "update.hidden", "stream_change"} <= depth
        assert report.check("depth:branch").measured == pytest.approx(-1.0, abs=0.01)
    if label == "umup-adamw":  # u-µP's own rules, measured: unit init, 1/sqrt(fan_in) in the op, lr/sqrt(fan_in)
        assert report.check("width:init.hidden").measured == pytest.approx(0.0, abs=0.05)
        assert report.check("width:mult.hidden").measured == pytest.approx(-0.5, abs=0.01)
        assert report.check("width:lr.hidden").measured == pytest.approx(-0.5, abs=0.01)
    if label == "mup-muon":
        assert report.check("width:lr.hidden").measured == pytest.approx(0.0, abs=0.01)
        assert "width:eps.hidden" not in {c.name for c in report.checks}  # Muon's ε is not Adam's


def test_sp_held_to_mup_fails_by_the_checks_that_say_why(tokens):
    report = run(tokens, {"name": "sp"}, expect="mup")
    assert report.exit_code == 1
    assert {"width:init.hidden", "width:mult.readout", "width:attn_scale", "width:lr.hidden", "width:eps.hidden",
            "width:update.hidden"} <= set(report.broken)
    assert report.check("width:update.hidden").measured > 0.7  # ΔW·x ~ width: what µP's promise rules out
    row = report.check("width:lr.hidden")
    assert row.hint.startswith("lr.hidden scales as width^-0.00, expected width^-1.00") and "lr_multiplier" in row.hint


# ------------------------------------------------------------------------------------------- injected bugs
def _lr_rule(mp, rule):
    original = MP.lr_multiplier
    mp.setattr(MP, "lr_multiplier", staticmethod(lambda shape, family: rule(original, shape, family)))


def _edit_groups(mp, edit):
    original = MP.param_groups

    def param_groups(self, model, lr, weight_decay, family="adam"):
        groups = original(self, model, lr, weight_decay, family)
        for g in groups:
            edit(self, model, g, weight_decay)
        return groups

    mp.setattr(MP, "param_groups", param_groups)


def readout_not_divided(mp):  # output_mult not divided by width_mult
    mp.setattr(P._CachedWidthMult, "width_mult", lambda self: 1.0)


def readout_divided_twice(mp):
    original = P._CachedWidthMult.width_mult
    mp.setattr(P._CachedWidthMult, "width_mult", lambda self: original(self) ** 2)


def hidden_lr_not_divided(mp):
    _lr_rule(mp, lambda rule, shape, family: 1.0 if family == "adam" else rule(shape, family))


def sgd_rule_under_adam(mp):  # the optimizer declared with the wrong µP family
    mp.setattr(R, "mup_family", lambda name, options=None: "sgd")


def embedding_lr_times_width(mp):
    def edit(self, model, g, weight_decay):
        if g["kind"] == "embedding":
            g["lr"] *= model.config.width / self.base_width

    _edit_groups(mp, edit)


def attention_one_over_sqrt_d(mp):
    original = MP._with_multipliers
    mp.setattr(MP, "_with_multipliers", lambda self, config, width: replace(original(self, config, width),
                                                                             attn_scale=None))


def hidden_init_constant_std(mp):  # a plain std after set_base_shapes: SP's init
    mp.setattr(MP, "init_weights", lambda self, model: model.init_weights(normal_=nn.init.normal_))


def tied_readout_scales_the_table(mp):  # mup #55: 1/width on the shared weight instead of on the logits
    original = MP.build_model

    def build_model(self, config):
        model = original(self, config)
        with torch.no_grad():
            model.tok_emb.weight /= model.lm_head.width_mult()
        model.lm_head.cached_width_mult = 1.0
        return model

    mp.setattr(MP, "build_model", build_model)


def eps_not_scaled(mp):
    mp.setattr(MP, "eps_mult", lambda self, in_block, width, n_layer: 1.0)


def decay_not_divided_by_lr_mult(mp):
    def edit(self, model, g, weight_decay):
        if g["decay"]:
            g["weight_decay"] = weight_decay

    _edit_groups(mp, edit)


def adam_rule_on_top_of_muon(mp):
    _lr_rule(mp, lambda rule, shape, family: rule(shape, "adam") if family == "muon" else rule(shape, family))


def no_branch_multiplier(mp):
    mp.setattr(MP, "branch_mult", lambda self, n_layer: 1.0)


def no_block_lr_rule(mp):
    mp.setattr(MP, "block_lr_factor", lambda self, n_layer: 1.0)


def block_lr_over_depth(mp):  # the rule's (α-1) written as -α: lr / L at α = 1
    mp.setattr(MP, "block_lr_factor", lambda self, n_layer: self.depth_mult(n_layer) ** -self.depth_alpha)


def shapes_lost(mp):  # mup #59: a flattened parameter's infshape gone, every dimension taken as finite
    mp.setattr(mup.infshape.InfDim, "isinf", lambda self: False)


COMPLETEP, DEPTH_MUP = {**MUP, "depth_alpha": 1.0}, {**MUP, "depth_alpha": 0.5}
# bug → (inject, parametrization, optimizer, the static checks that fire (exactly), dynamic ones that must too)
BUGS = {
    "readout_not_divided": (readout_not_divided, MUP, "adamw", {"width:mult.readout"}, {"width:update.readout"}),
    "readout_divided_twice": (readout_divided_twice, MUP, "adamw", {"width:mult.readout"},
                              {"width:update.readout", "width:logits_change"}),
    "hidden_lr_not_divided": (hidden_lr_not_divided, MUP, "adamw", {"width:lr.hidden"}, {"width:update.hidden"}),
    "sgd_rule_under_adam": (sgd_rule_under_adam, MUP, "adamw",
                            {"width:lr.hidden", "width:lr.embedding", "width:lr.vector"},
                            {"width:update.hidden", "width:update.embedding", "width:update.vector"}),
    "embedding_lr_times_width": (embedding_lr_times_width, MUP, "adamw", {"width:lr.embedding",
                                                                           "width:lr_wd.embedding"},
                                 {"width:update.embedding"}),
    "attention_one_over_sqrt_d": (attention_one_over_sqrt_d, MUP, "adamw", {"width:attn_scale"}, set()),
    "hidden_init_constant_std": (hidden_init_constant_std, MUP, "adamw", {"width:init.hidden"},
                                 {"width:activation.hidden"}),
    "tied_readout_scales_the_table": (tied_readout_scales_the_table, MUP, "adamw",
                                      {"width:mult.readout", "width:init.embedding"}, {"width:update.readout"}),
    "eps_not_scaled": (eps_not_scaled, MUP, "adamw", {"width:eps.hidden", "width:eps.embedding", "width:eps.vector"},
                       set()),
    "decay_not_divided_by_lr_mult": (decay_not_divided_by_lr_mult, MUP, "adamw", {"width:lr_wd.hidden"}, set()),
    "adam_rule_on_top_of_muon": (adam_rule_on_top_of_muon, MUP, "muon", {"width:lr.hidden"},
                                 {"width:update.hidden"}),
    "no_branch_multiplier": (no_branch_multiplier, COMPLETEP, "adamw", {"depth:branch"}, {"depth:stream_change"}),
    "no_block_lr_rule": (no_block_lr_rule, DEPTH_MUP, "adamw", {"depth:lr.hidden", "depth:lr.vector"},
                         {"depth:update.hidden"}),
    "block_lr_over_depth": (block_lr_over_depth, COMPLETEP, "adamw", {"depth:lr.hidden", "depth:lr.vector"},
                            {"depth:update.hidden", "depth:update.vector", "depth:stream_change"}),
    "shapes_lost": (shapes_lost, MUP, "adamw", {"width:lr.hidden", "width:init.hidden", "width:mult.readout"},
                    {"width:update.hidden", "width:activation.hidden"}),
}


def is_dynamic(name: str) -> bool:
    return name.split(":")[1].split(".")[0] in DYNAMIC


@pytest.mark.parametrize("bug", list(BUGS))
def test_injected_bug_is_caught_by_its_check(tokens, monkeypatch, bug):
    inject, parametrization, optimizer, static, dynamic = BUGS[bug]
    inject(monkeypatch)
    report = run(tokens, parametrization, optim(optimizer))
    broken = set(report.broken)
    assert report.exit_code == 1
    assert {name for name in broken if not is_dynamic(name)} == static, report.table()
    assert dynamic <= broken, report.table()
    for name in static:
        assert report.check(name).hint.startswith(name.split(":")[1])


def test_the_depth_rules_pass_at_depth_alpha_one_half(tokens):
    """The baseline of no_block_lr_rule: depth-µP (α = 1/2) as built is clean, lr ×L^-1/2 measured."""
    report = run(tokens, DEPTH_MUP)
    assert report.broken == [], report.table()
    assert report.check("depth:lr.hidden").measured == pytest.approx(-0.5, abs=0.01)
    assert report.check("depth:branch").measured == pytest.approx(-0.5, abs=0.01)


# --------------------------------------------------------------------------------------- the probes
def test_probes_read_the_multipliers_and_groups_as_built():
    config = GPTConfig(vocab_size=256, block_size=16, width=32, n_layer=2, n_head=2, attn_scale=0.123,
                       branch_mult=0.37, embed_mult=1.7)
    torch.manual_seed(0)
    model = GPT(config)
    x = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0))
    entries = forward_entries(model, default_kind_of, (x, x), default_forward)
    by = {}
    for e in entries:
        by.setdefault(e.quantity, []).append(e.value)
    assert by["attn_scale"] == pytest.approx([0.123, 0.123], rel=1e-3)  # fitted from the kernel's output
    assert by["branch"] == pytest.approx([0.37] * 4, rel=1e-6)
    assert by["mult"] == pytest.approx([1.7], rel=1e-6)
    qkv = [block.attn.qkv.weight for block in model.blocks]
    groups = [{"params": qkv, "lr": 0.5, "eps": 1e-9, "betas": (0.9, 0.9), "weight_decay": 0.2},
              {"params": [p for p in model.parameters() if all(p is not q for q in qkv)], "lr": 0.1}]
    read = {(e.quantity, e.key): e.value for e in optimizer_entries(model, torch.optim.SGD(groups), default_kind_of)}
    assert read[("lr", "blocks.*.attn.qkv.weight")] == 0.5
    assert read[("eps", "blocks.*.attn.qkv.weight")] == 1e-9
    assert read[("lr_wd", "blocks.*.attn.qkv.weight")] == pytest.approx(0.1)
    assert ("eps", "tok_emb.weight") not in read  # no betas: not an Adam ε
    mults = {e.key: e.value for e in weight_entries(model, default_kind_of) if e.quantity == "mult"}
    assert mults["lm_head"] == pytest.approx(1.0) and mults["blocks.*.mlp.fc"] == pytest.approx(1.0)


def test_options_refused_in_one_line_before_work(tokens):
    with pytest.raises(ValueError, match=r"^widths=\[32, 64\]: needs at least 3"):
        run(tokens, widths=(32, 64))
    with pytest.raises(ValueError, match=r"^seeds=\[0\]: needs at least 2"):
        run(tokens, seeds=(0,))
    with pytest.raises(ValueError, match=r"^expect=mu: must be null"):
        run(tokens, expect="mu")
    with pytest.raises(ValueError, match=r"^widths=\[32, 64, 66\]: 66 is not divisible by model.n_head=4"):
        run(tokens, model={**MODEL, "n_head": 4}, widths=(32, 64, 66))
    with pytest.raises(ValueError, match=r"^depths=\[2, 4\]: needs at least 3"):
        run(tokens, COMPLETEP, depths=(2, 4))


# ---------------------------------------------------------------------------------- a user's own model
class MuReadout(nn.Linear):
    """logits = (base/width) · W h: µP's output multiplier."""

    def __init__(self, width: int, out: int, base: int) -> None:
        super().__init__(width, out)
        self.mult = base / width

    def forward(self, h):
        return super().forward(h * self.mult)


class MLP(nn.Module):
    def __init__(self, width: int, depth: int, base: int = 32) -> None:
        super().__init__()
        self.inp = nn.Linear(16, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.out = MuReadout(width, 10, base)
        with torch.no_grad():
            for layer in self.hidden:
                layer.weight.normal_(0.0, width ** -0.5)  # µP: var 1/fan_in
            for layer in (self.inp, *self.hidden, self.out):
                layer.bias.zero_()
            self.out.weight.normal_(0.0, 0.1)

    def forward(self, x):
        h = F.relu(self.inp(x))
        for layer in self.hidden:
            h = F.relu(layer(h))
        return self.out(h)


def mlp_kind(name: str, param: torch.Tensor) -> str:
    if param.dim() < 2:
        return "vector"
    return {"inp": "embedding", "out": "readout"}.get(name.split(".")[0], "hidden")


def mlp_factory(divide_hidden_lr: bool):
    def build(width: int, depth: int):
        model = MLP(width, depth)
        m = width / 32
        hidden = [layer.weight for layer in model.hidden]
        rest = [p for p in model.parameters() if all(p is not h for h in hidden)]
        optimizer = torch.optim.AdamW([{"params": hidden, "lr": 1e-2 / (m if divide_hidden_lr else 1.0)},
                                       {"params": rest, "lr": 1e-2}], eps=1e-8 / m, weight_decay=0.0)
        return model, optimizer

    return build


def mlp_batches(count: int = 4):
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(16, 10, generator=g)
    batches = []
    for _ in range(count):
        x = torch.randn(64, 16, generator=g)
        batches.append((x, (x @ teacher).argmax(-1)))
    return batches


def mlp_loss(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


@pytest.mark.parametrize("correct", [True, False])
def test_a_users_own_model_and_optimizer(correct):
    report = diagnose(mlp_factory(divide_hidden_lr=correct), "mup", widths=(32, 64, 128), depth=2,
                      batches=mlp_batches(), seeds=(0, 1), steps=3, kind_of=mlp_kind, loss_fn=mlp_loss)
    measured = {c.quantity for c in report.checks if c.measured is not None and c.expected is not None}
    assert {"init.hidden", "mult.readout", "lr.hidden", "eps.hidden", "update.hidden", "logits_change"} <= measured
    if correct:
        assert report.broken == [], report.table()
    else:
        assert {"width:lr.hidden", "width:update.hidden"} <= set(report.broken)
        assert report.check("width:lr.hidden").measured == pytest.approx(0.0, abs=1e-6)
    # no attention and no blocks here: those promises are shown as not measured, never as kept
    assert report.check("width:attn_scale").verdict == "info" and report.check("width:attn_scale").measured is None


def test_report_json_holds_every_check(tmp_path, tokens):
    report = run(tokens, {"name": "sp"}, expect="mup")
    data = json.loads(report.write_json(tmp_path / "report.json").read_text())
    assert data["ok"] is False and data["broken"] == report.broken
    row = next(c for c in data["checks"] if c["name"] == "width:lr.hidden")
    assert row["expected"] == -1.0 and row["verdict"] == "BROKEN" and len(row["per_seed"]) == 2
    assert set(row["values"]) == {"32", "64", "128"} and row["tolerance"] == TOLERANCES["lr"]
    assert all(v is None or math.isfinite(v) for c in data["checks"] for v in c["per_seed"])


# --------------------------------------------------------------------------------------------- the script
def doctor(tmp_path, *overrides):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "mup_doctor.py"), f"out={tmp_path}",
                           "seeds=[0,1]", *overrides], capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.mark.slow
def test_script_exit_status(tmp_path):
    kept = doctor(tmp_path / "mup", "parametrization=mup", "optim=adamw", "parametrization.depth_alpha=1")
    assert kept.returncode == 0, kept.stderr[-2000:]
    assert "depth:branch" in kept.stdout and "no promise broken" in kept.stdout
    assert json.loads((tmp_path / "mup" / "report.json").read_text())["ok"] is True
    broken = doctor(tmp_path / "sp", "parametrization=sp", "expect=mup")
    assert broken.returncode == 1, broken.stderr[-2000:]
    assert "BROKEN" in broken.stdout and "width:lr.hidden" in json.loads(
        (tmp_path / "sp" / "report.json").read_text())["broken"]
    refused = doctor(tmp_path / "bad", "widths=[32,64]")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == ("error: widths=[32, 64]: needs at least 3 different values "
                                                       "(to fit an exponent and see its spread)")
    assert not (tmp_path / "bad" / "report.json").exists()
