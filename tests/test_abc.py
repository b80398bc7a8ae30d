"""The abc-family (parametrization=abc): its sp and mup presets are the project's SP and µP, weight for weight and
group for group; ntk and mf follow their tables; bad options are refused in one line; it trains."""

import math

import pytest
import torch

from conftest import compose_script
from mugpt.config import load_optim_config
from mugpt.core.model import GPTConfig, readout_input_scale
from mugpt.core.parametrization import AbcParametrization, MaximalUpdateParametrization, get_parametrization
from mugpt.core.recipe import Recipe, plain_dict, train_step

BASE, VOCAB = 64, 100


def recipe(parametrization: dict, width: int, tie: bool = True) -> Recipe:
    model = GPTConfig(vocab_size=VOCAB, block_size=16, width=width, n_layer=2, n_head=4, tie_embeddings=tie)
    return Recipe(model, parametrization, load_optim_config("adamw", lr=1e-3, weight_decay=0.1))


def built(parametrization: dict, width: int, tie: bool = True):
    r = recipe(parametrization, width, tie)
    torch.manual_seed(0)
    model = r.build_model()
    optimizer, _ = r.build_optimizer(model, max_steps=10)
    return model, optimizer


def group_rows(optimizer) -> list[tuple]:
    """What the optimizer does with each group: its parameters' shapes in order, lr, decay, ε."""
    return [([tuple(p.shape) for p in g["params"]], g["lr"], g["weight_decay"], g["eps"])
            for g in optimizer.param_groups]


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("width", [BASE, 4 * BASE])
@pytest.mark.parametrize("today, preset", [({"name": "sp"}, {"name": "abc", "preset": "sp", "base_width": BASE}),
                                           ({"name": "mup", "base_width": BASE},
                                            {"name": "abc", "preset": "mup", "base_width": BASE})])
def test_sp_and_mup_presets_are_todays_sp_and_mup_exactly(today, preset, width, tie):
    model_today, opt_today = built(today, width, tie)
    model_abc, opt_abc = built(preset, width, tie)
    state_today, state_abc = model_today.state_dict(), model_abc.state_dict()
    assert state_today.keys() == state_abc.keys()
    for key in state_today:
        assert torch.equal(state_today[key], state_abc[key]), key
    assert group_rows(opt_today) == group_rows(opt_abc)
    for g_today, g_abc in zip(opt_today.param_groups, opt_abc.param_groups, strict=True):
        assert g_today["param_names"] == g_abc["param_names"]
    x = torch.randint(0, VOCAB, (2, 16))
    assert torch.equal(model_today(x)[0], model_abc(x)[0])  # the same function: multipliers and attention too


def lr_by_kind(parametrization: dict, width: int) -> dict[str, float]:
    r = recipe(parametrization, width, tie=False)
    torch.manual_seed(0)
    model = r.build_model()
    return {g["kind"]: g["lr"] for g in r.param_groups(model)}


@pytest.mark.parametrize("preset, lr_exp", [("ntk", {"embedding": 0.0, "hidden": 0.5, "vector": 0.0, "readout": 0.5}),
                                            ("mf", {"embedding": 0.5, "hidden": 0.5, "vector": 0.0, "readout": 0.0}),
                                            ("mup", {"embedding": 0.0, "hidden": 1.0, "vector": 0.0, "readout": 0.0})])
def test_group_lr_ratios_between_two_widths_follow_the_presets_exponents(preset, lr_exp):
    options = {"name": "abc", "preset": preset, "base_width": BASE}
    narrow, wide = lr_by_kind(options, BASE), lr_by_kind(options, 4 * BASE)
    for kind, c in lr_exp.items():
        assert wide[kind] / narrow[kind] == pytest.approx(4.0 ** -c), kind


def rms(t: torch.Tensor) -> float:
    return t.float().pow(2).mean().sqrt().item()


@pytest.mark.parametrize("preset, init_exp, mult_exp", [("ntk", {"embedding": 0.0, "hidden": 0.0}, {"embedding": 0.0,
                                                                                                      "hidden": 0.5,
                                                                                                      "readout": 0.5}),
                                                        ("mf", {"embedding": 0.5, "hidden": 0.0}, {"embedding": -0.5,
                                                                                                    "hidden": 0.5,
                                                                                                    "readout": 1.0})])
def test_ntk_and_mf_inits_and_multipliers_follow_their_exponents(preset, init_exp, mult_exp):
    options = {"name": "abc", "preset": preset, "base_width": BASE}
    models = {}
    for width in (BASE, 4 * BASE):
        torch.manual_seed(0)
        models[width] = recipe(options, width, tie=False).build_model()
    narrow, wide = models[BASE], models[4 * BASE]
    # init: RMS of the token table and of a non-residual hidden matrix (sampled: 10% tolerance)
    assert rms(wide.tok_emb.weight) / rms(narrow.tok_emb.weight) == pytest.approx(4.0 ** -init_exp["embedding"],
                                                                                   rel=0.1)
    fc = rms(wide.blocks[0].mlp.fc.weight) / rms(narrow.blocks[0].mlp.fc.weight)
    assert fc == pytest.approx(4.0 ** -init_exp["hidden"], rel=0.1)
    # forward multipliers, exactly
    assert wide.config.embed_mult / narrow.config.embed_mult == pytest.approx(4.0 ** -mult_exp["embedding"])
    rule = get_parametrization(options)
    for kind in ("hidden", "readout"):
        assert rule.factor(kind, "mult", 4 * BASE) / rule.factor(kind, "mult", BASE) == pytest.approx(
            4.0 ** -mult_exp[kind])
    ratio = readout_input_scale(wide.lm_head) / readout_input_scale(narrow.lm_head)
    assert ratio == pytest.approx(4.0 ** -mult_exp["readout"])
    # the hidden multiplier reaches the forward pass: a hook on each block matrix
    assert len(wide.blocks[0].mlp.fc._forward_pre_hooks) == 1


def test_ntk_and_sp_presets_are_gpt2_sp_at_the_base_width():
    sp, _ = built({"name": "sp"}, BASE)
    ntk, _ = built({"name": "abc", "preset": "ntk", "base_width": BASE}, BASE)
    x = torch.randint(0, VOCAB, (2, 16))
    assert torch.equal(sp(x)[0], ntk(x)[0])


def test_an_override_changes_one_entry_of_the_preset():
    base = AbcParametrization(preset="ntk", base_width=BASE)
    changed = AbcParametrization(preset="ntk", base_width=BASE, readout={"lr_exp": 1.0, "mult_exp": None})
    table, expected = changed.exponents(), base.exponents()
    expected["readout"]["lr_exp"] = 1.0
    assert table == expected
    assert lr_by_kind({"name": "abc", "preset": "ntk", "base_width": BASE, "readout": {"lr_exp": 1}}, 2 * BASE)[
        "readout"] == pytest.approx(1e-3 / 2)


def test_the_attention_scale_follows_its_exponent():
    config = GPTConfig(vocab_size=VOCAB, width=4 * BASE, n_head=4)
    d = config.width // 4
    assert AbcParametrization(preset="sp", base_width=BASE).attn_scale(config) == 1 / math.sqrt(d)
    assert AbcParametrization(preset="mf", base_width=BASE).attn_scale(config) == pytest.approx(math.sqrt(BASE / 4) / d)
    scale = AbcParametrization(preset="sp", base_width=BASE, attention={"exp": 0.75, "const": 2.0}).attn_scale(config)
    assert scale == pytest.approx(2.0 / math.sqrt(BASE / 4) * 4.0 ** -0.75)


@pytest.mark.parametrize("options, match", [
    ({"preset": "mu"}, r"parametrization.preset: unknown preset 'mu' \(choose one of sp, mup, ntk, mf\)"),
    ({"readout": {"lr_expo": 1}}, r"parametrization.readout.lr_expo: not an entry"),
    ({"hidden": {"init_exp": "half"}}, r"parametrization.hidden.init_exp must be a finite number"),
    ({"embedding": {"lr_const": 0}}, r"parametrization.embedding.lr_const must be positive"),
    ({"vector": {"mult_exp": 1}}, r"parametrization.vector.mult_exp: biases and LayerNorm gains"),
    ({"attention": {"lr_exp": 1}}, r"parametrization.attention.lr_exp: not an entry"),
    ({"base_width": 0}, r"parametrization.base_width must be a positive integer"),
    ({"width": 3}, r"parametrization.width: not an option of parametrization=abc"),
])
def test_bad_options_are_refused_in_one_line(options, match):
    with pytest.raises(ValueError, match=match) as error:
        get_parametrization({"name": "abc", **options})
    assert "\n" not in str(error.value)


def test_a_table_with_lr_exponents_refuses_non_adam_families_and_sp_takes_them():
    with pytest.raises(ValueError, match=r"learning-rate exponents are Adam's; the 'sgd' optimizer family"):
        AbcParametrization(preset="ntk").check_family("sgd")
    AbcParametrization(preset="sp").check_family("sgd")


def test_the_config_composes_with_a_preset_and_an_override():
    # the width-transfer sweep's experiment sets base_width=64, the donor's width (docs/parametrizations.md)
    cfg = compose_script("config", "+experiment=mutransfer_lr", "parametrization=abc", "parametrization.preset=ntk",
                         "parametrization.readout.lr_exp=1", "model.width=256")
    options = plain_dict(cfg.parametrization)
    rule = get_parametrization(options)
    assert rule.preset == "ntk" and rule.base_width == 64
    assert rule.exponents()["readout"]["lr_exp"] == 1.0 and rule.exponents()["hidden"]["lr_exp"] == 0.5
    default = plain_dict(compose_script("config", "parametrization=abc").parametrization)
    assert get_parametrization(default).preset == "mup" and default["base_width"] == 256


@pytest.mark.parametrize("preset", ["sp", "mup", "ntk", "mf"])
def test_five_steps_train_through_the_recipe(preset):
    r = recipe({"name": "abc", "preset": preset, "base_width": BASE}, 2 * BASE)
    torch.manual_seed(0)
    model = r.build_model()
    optimizer, scheduler = r.build_optimizer(model, max_steps=5)
    x = torch.randint(0, VOCAB, (4, 16))
    losses = [train_step(model, optimizer, scheduler, [(x, x)], grad_clip=r.grad_clip).loss.item() for _ in range(5)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


def test_the_mup_presets_rules_are_the_ones_mup_promises():
    """One set of µP rules: the preset's table, in the doctor's terms, is what MaximalUpdateParametrization
    promises for Adam (every rule it shares)."""
    ours = AbcParametrization(preset="mup", base_width=BASE).promises("adam")["width"]
    mups = MaximalUpdateParametrization(base_width=BASE).promises("adam")["width"]
    assert {k: mups[k] for k in ours} == ours
    assert AbcParametrization(preset="mup").promises("sgd") == {}


def test_a_model_init_that_the_table_overrides_is_refused():
    rule = AbcParametrization(preset="mup", base_width=BASE)
    with pytest.raises(ValueError, match=r"model.init_std=0.05 reaches no weight under parametrization=abc"):
        rule.check_run(GPTConfig(vocab_size=VOCAB, width=BASE, init_std=0.05), None)
    with pytest.raises(ValueError, match=r"model.hidden_init_std=0.01 reaches no weight"):
        rule.check_run(GPTConfig(vocab_size=VOCAB, width=BASE, hidden_init_std=0.01), None)
    AbcParametrization(preset="ntk").check_run(GPTConfig(vocab_size=VOCAB, init_std=0.05), None)
