"""µP against its rules: init stds, per-group learning rates, forward multipliers, and what it must survive."""

import copy
import inspect
import io
import math

import pytest
import torch
from omegaconf import OmegaConf

from mugpt.core.model import GPTConfig
from mugpt.core.parametrization import GPT2_INIT, MaximalUpdateParametrization, get_parametrization

BASE = 64


def config(width: int, **kw) -> GPTConfig:
    return GPTConfig(**{**dict(vocab_size=256, block_size=32, width=width, n_layer=2, n_head=4), **kw})


def mup(**kw) -> MaximalUpdateParametrization:
    """µP with GPT-2's init and mup's output multiplier (GPT2_INIT): at its base width, SP's model."""
    return get_parametrization({"name": "mup", "base_width": BASE, **GPT2_INIT, **kw})


def test_mup_equals_sp_at_base_width():
    """With the default α, µP at its base width computes exactly SP's function on the same weights."""
    torch.manual_seed(0)
    sp_model = get_parametrization({"name": "sp"}).build_model(config(BASE))
    mup_model = mup().build_model(config(BASE))
    mup_model.load_state_dict(sp_model.state_dict())
    x = torch.randint(0, 256, (2, 32))
    torch.testing.assert_close(mup_model(x)[0], sp_model(x)[0], rtol=1e-6, atol=1e-6)
    assert mup_model.blocks[0].attn.scale == pytest.approx(1 / math.sqrt(BASE // 4))


@pytest.mark.parametrize("tie", [True, False])
def test_mup_at_base_width_is_sps_model_weight_for_weight(tie):
    """Same seed, base width: µP draws SP's init (so a donor tuned at the base width is an SP model)."""
    torch.manual_seed(0)
    sp_model = get_parametrization({"name": "sp"}).build_model(config(BASE, tie_embeddings=tie))
    torch.manual_seed(0)
    mup_model = mup().build_model(config(BASE, tie_embeddings=tie))
    for (name, a), b in zip(sp_model.state_dict().items(), mup_model.state_dict().values()):
        assert torch.equal(a, b), name


def test_mup_attention_scale_is_alpha_over_head_size():
    model = mup().build_model(config(4 * BASE))
    alpha = math.sqrt(BASE // 4)
    assert model.blocks[0].attn.scale == pytest.approx(alpha / (4 * BASE // 4))
    model = mup(attn_alpha=2.0).build_model(config(4 * BASE))
    assert model.blocks[0].attn.scale == pytest.approx(2.0 / 64)


def test_mup_init_stds_at_four_times_base_width():
    torch.manual_seed(0)
    width = 4 * BASE  # width multiplier m = 4
    model = mup().build_model(config(width))
    std = 0.02
    resid = std / math.sqrt(2 * 2)
    b = model.blocks[0]
    # hidden matrices: σ/sqrt(m); embeddings stay width-independent (even when tied to the readout)
    assert b.attn.qkv.weight.std().item() == pytest.approx(std / 2, rel=0.03)
    assert b.mlp.fc.weight.std().item() == pytest.approx(std / 2, rel=0.03)
    assert b.attn.proj.weight.std().item() == pytest.approx(resid / 2, rel=0.05)
    assert b.mlp.proj.weight.std().item() == pytest.approx(resid / 2, rel=0.03)
    assert model.tok_emb.weight.std().item() == pytest.approx(std, rel=0.03)
    assert model.pos_emb.weight.std().item() == pytest.approx(std, rel=0.05)
    assert model.lm_head.weight is model.tok_emb.weight
    assert torch.all(b.ln_1.weight == 1) and torch.all(b.attn.qkv.bias == 0)


def test_untied_readout_zero_init_and_query_zero_init():
    model = mup(readout_zero_init=True, query_zero_init=True).build_model(config(2 * BASE, tie_embeddings=False))
    assert torch.count_nonzero(model.lm_head.weight) == 0
    assert model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.05)
    qkv = model.blocks[0].attn.qkv.weight
    assert torch.count_nonzero(qkv[: 2 * BASE]) == 0 and torch.count_nonzero(qkv[2 * BASE:]) > 0
    untied = mup().build_model(config(2 * BASE, tie_embeddings=False))
    assert untied.lm_head.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_output_multiplier_divides_by_width_and_applies_in_generate():
    model = mup(output_mult=3.0).build_model(config(4 * BASE))
    assert model.lm_head.width_mult() == 4.0
    h = torch.randn(1, 1, 4 * BASE)
    expected = 3.0 / 4.0 * h @ model.tok_emb.weight.t()
    torch.testing.assert_close(model.lm_head(h), expected)
    # generate() goes through forward, so the multiplier applies there as well: greedy decoding of the
    # µP model equals an argmax over the multiplied logits.
    idx = torch.zeros(1, 1, dtype=torch.long)
    out = model.generate(idx, 1, temperature=0)
    logits, _ = model(idx)
    assert out[0, 1].item() == logits[0, -1, :256].argmax().item()


def test_mup_adam_learning_rates_per_group():
    width = 4 * BASE
    model = mup().build_model(config(width))
    groups = mup_groups = mup().param_groups(model, lr=1e-2, weight_decay=0.1, family="adam")
    names = {n for n, _ in model.named_parameters()}
    by_param = {id(p): g for g in mup_groups for p in g["params"]}
    lookup = dict(model.named_parameters())
    assert len(by_param) == len(names)  # every parameter in exactly one group
    for name in names:
        g = by_param[id(lookup[name])]
        hidden = name.endswith(("qkv.weight", "attn.proj.weight", "fc.weight", "mlp.proj.weight"))
        assert g["lr"] == pytest.approx(1e-2 / 4 if hidden else 1e-2), name
        if lookup[name].dim() >= 2:
            # decay shrinks every ≥2-D weight by the same fraction lr·wd per step at any width
            assert g["lr"] * g["weight_decay"] == pytest.approx(1e-3), name
        else:
            assert g["weight_decay"] == 0.0, name
    assert {g["name"] for g in groups} == {"hidden_x0.25", "embedding_x1", "vector_no_decay_x1"}
    assert {g["kind"] for g in groups} == {"hidden", "embedding", "vector"}
    assert {g["parametrization"] for g in groups} == {"mup"}


def test_embedding_lr_mult_scales_the_tables_only():
    """A donor-tuned factor on the embedding tables' lr (the tied readout is the token table); the rest keeps
    µP's rule, and decay still shrinks the tables by lr·wd per step."""
    model = mup(embedding_lr_mult=0.5).build_model(config(4 * BASE))
    groups = mup(embedding_lr_mult=0.5).param_groups(model, lr=1e-2, weight_decay=0.1)
    lrs = {name: (g["lr"], g["weight_decay"]) for g in groups for name in g["param_names"]}
    assert lrs["tok_emb.weight"] == lrs["pos_emb.weight"] == (pytest.approx(5e-3), pytest.approx(0.2))
    assert lrs["blocks.0.attn.qkv.weight"] == (pytest.approx(2.5e-3), pytest.approx(0.4))
    assert lrs["blocks.0.ln_1.weight"] == (pytest.approx(1e-2), 0.0)
    with pytest.raises(ValueError, match="parametrization.embedding_lr_mult must be positive"):
        mup(embedding_lr_mult=0.0)


def test_mup_sgd_learning_rates_follow_mup_rules():
    model = mup().build_model(config(4 * BASE))
    rule = MaximalUpdateParametrization.lr_multiplier
    assert rule(model.infshapes["blocks.0.attn.qkv.weight"], "sgd") == pytest.approx(1.0)  # fan_in/fan_out ratio 1
    assert rule(model.infshapes["tok_emb.weight"], "sgd") == pytest.approx(4.0)  # vector-like: lr·m
    assert rule(model.infshapes["blocks.0.ln_1.weight"], "sgd") == pytest.approx(4.0)
    assert rule(model.infshapes["blocks.0.attn.qkv.weight"], "adam") == pytest.approx(0.25)


def test_sp_is_untouched():
    torch.manual_seed(0)
    model = get_parametrization({"name": "sp"}).build_model(config(4 * BASE))
    assert type(model.lm_head) is torch.nn.Linear
    assert model.blocks[0].attn.scale == pytest.approx(1 / math.sqrt(64))
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.03)
    groups = get_parametrization({"name": "sp"}).param_groups(model, lr=1e-3, weight_decay=0.1)
    assert {g["kind"]: (g["lr"], g["weight_decay"]) for g in groups} == {
        "embedding": (1e-3, 0.1), "hidden": (1e-3, 0.1), "vector": (1e-3, 0.0)}
    for g in groups:  # decay exactly the ≥2-D weights
        assert all((p.dim() >= 2) == (g["weight_decay"] > 0) for p in g["params"]), g["name"]


def test_mup_survives_deepcopy_and_checkpoint_roundtrip():
    torch.manual_seed(0)
    model = mup().build_model(config(4 * BASE))
    x = torch.randint(0, 256, (2, 32))
    expected = model(x)[0]
    torch.testing.assert_close(copy.deepcopy(model)(x)[0], expected)  # EMA/SWA copies
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = mup().build_model(config(4 * BASE))  # base shapes set anew, then weights loaded, no rescale
    fresh.load_state_dict(torch.load(buf))
    torch.testing.assert_close(fresh(x)[0], expected)
    assert fresh.lm_head.width_mult() == 4.0


@pytest.mark.slow  # torch.compile's first build; a compiled model stays fast in test_training.py's checkpoint test
def test_mup_survives_torch_compile():
    torch.manual_seed(0)
    model = mup().build_model(config(2 * BASE))
    x = torch.randint(0, 256, (2, 32))
    compiled = torch.compile(model, backend="aot_eager")
    torch.testing.assert_close(compiled(x)[0], model(x)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "options, match",
    [({"base_width": 0}, "parametrization.base_width must be a positive integer"),
     ({"base_width": 66}, "parametrization.base_width: width 66 is not divisible by model.n_head=4"),
     ({"output_mult": -1.0}, "parametrization.output_mult must be positive")],
)
def test_bad_mup_options_are_rejected(options, match):
    with pytest.raises(ValueError, match=match):
        mup(**options).build_model(config(128))


def test_optimizer_family_without_mup_rule_is_rejected():
    p = mup()
    model = p.build_model(config(128))
    with pytest.raises(ValueError, match="parametrization=mup has no learning-rate rule for the optimizer "
                                         "family 'lion'"):
        p.param_groups(model, 1e-3, 0.0, family="lion")


def test_every_optimizer_declares_a_family_with_a_mup_rule():
    from mugpt.core.optim import OPTIMIZERS, mup_family
    from mugpt.core.parametrization import MUP_FAMILIES

    assert {name: mup_family(name) for name in OPTIMIZERS} == {
        "adamw": "adam", "adam": "adam", "sgd": "sgd", "adagrad": "adam", "rmsprop": "adam", "adafactor": "adam",
        "adam8bit": "adam", "muon": "muon", "adam_atan2": "adam"}
    assert mup_family("muon", {"adjust_lr_fn": "match_rms_adamw"}) == "adam"  # Muon's step RMS-matched to AdamW
    assert set(MUP_FAMILIES) == {mup_family(name) for name in OPTIMIZERS}


@pytest.mark.parametrize("options, match", [
    ({"name": "sp", "base_witdh": 64}, "parametrization.base_witdh: not an option of parametrization=sp"),
    ({"name": "mup", "base_witdh": 64}, "parametrization.base_witdh: not an option of parametrization=mup"),
])
def test_unknown_parametrization_options_are_rejected(options, match):
    with pytest.raises(ValueError, match=match):
        get_parametrization(options)
    # µP's options under SP are ignored: `parametrization=sp,mup parametrization.base_width=64` is one sweep
    assert get_parametrization({"name": "sp", "base_width": 64, "output_mult": 2.0}).name == "sp"


def test_param_kind():
    from mugpt.core.parametrization import param_kind

    assert [param_kind(n, d) for n, d in [("tok_emb.weight", 2), ("pos_emb.weight", 2), ("lm_head.weight", 2),
                                          ("blocks.0.mlp.fc.weight", 2), ("blocks.0.mlp.fc.bias", 1),
                                          ("ln_f.weight", 1)]] == [
        "embedding", "embedding", "readout", "hidden", "vector", "vector"]


def test_unknown_parametrization_is_rejected():
    with pytest.raises(ValueError, match="parametrization: unknown option 'ntk'"):
        get_parametrization({"name": "ntk"})


# ------------------------------------------------------------------------------------ depth (CompleteP)
def completep(alpha: float = 1.0, base_depth: int = 2, **kw) -> MaximalUpdateParametrization:
    return mup(depth_alpha=alpha, base_depth=base_depth, **kw)


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_depth_mup_at_base_width_and_depth_is_sp(alpha):
    """At base width and base depth every depth rule is the identity: SP's weights, function and groups."""
    torch.manual_seed(0)
    sp_model = get_parametrization({"name": "sp"}).build_model(config(BASE))
    torch.manual_seed(0)
    model = completep(alpha).build_model(config(BASE))
    for (name, a), b in zip(sp_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    x = torch.randint(0, 256, (2, 32))
    assert torch.equal(model(x)[0], sp_model(x)[0])
    sp_groups = get_parametrization({"name": "sp"}).param_groups(sp_model, 1e-2, 0.1)
    groups = completep(alpha).param_groups(model, 1e-2, 0.1)
    by_name = lambda gs: {n: (g["lr"], g["weight_decay"], g.get("eps_mult", 1.0)) for g in gs  # noqa: E731
                          for n in g["param_names"]}
    assert by_name(groups) == by_name(sp_groups)


@pytest.mark.parametrize("alpha, depth", [(1.0, 8), (0.5, 8), (1.0, 4), (0.0, 8)])
def test_depth_rules_per_group(alpha, depth):
    """At L = 4·base_depth (or 2·), width 2·base: branch multiplier m_L^-α, block lr × m_L^(α-1) on top of µP's
    1/m_N for hidden matrices, ε × m_N^-1 (× m_L^-α inside blocks), lr·wd kept; outside blocks no depth factor."""
    p = completep(alpha) if alpha else mup()
    model = p.build_model(config(2 * BASE, n_layer=depth))
    m_l = depth / 2 if alpha else 1.0
    assert model.config.branch_mult == pytest.approx(m_l ** -alpha)
    assert all(b.branch_mult == pytest.approx(m_l ** -alpha) for b in model.blocks)
    groups = {n: g for g in p.param_groups(model, lr=1e-2, weight_decay=0.1, family="adam") for n in g["param_names"]}
    block = m_l ** (alpha - 1.0)
    expected_lr = {"blocks.3.attn.qkv.weight": 1e-2 / 2 * block, "blocks.0.mlp.proj.weight": 1e-2 / 2 * block,
                   "blocks.1.attn.qkv.bias": 1e-2 * block, "blocks.2.ln_1.weight": 1e-2 * block,
                   "ln_f.weight": 1e-2, "tok_emb.weight": 1e-2, "pos_emb.weight": 1e-2}
    expected_eps = {"blocks.3.attn.qkv.weight": 0.5 * m_l ** -alpha, "blocks.2.ln_1.weight": 0.5 * m_l ** -alpha,
                    "ln_f.weight": 0.5, "tok_emb.weight": 0.5}
    for name, lr in expected_lr.items():
        assert groups[name]["lr"] == pytest.approx(lr), name
        if groups[name]["decay"]:
            assert groups[name]["lr"] * groups[name]["weight_decay"] == pytest.approx(1e-3), name
    for name, eps in expected_eps.items():
        assert groups[name]["eps_mult"] == pytest.approx(eps), name


def test_depth_init_holds_gpt2_factor_at_base_depth():
    """α > 0: the residual projections' std is 0.02/sqrt(2·base_depth) at any depth (the branch multiplier does
    the 1/sqrt(L) job); α = 0 keeps GPT-2's 0.02/sqrt(2L). Other weights are depth-independent."""
    torch.manual_seed(0)
    deep = completep(1.0).build_model(config(BASE, n_layer=16))
    torch.manual_seed(0)
    width_only = mup().build_model(config(BASE, n_layer=16))
    proj = lambda m: torch.cat([p.weight.flatten() for p in m.residual_projections()]).std().item()  # noqa: E731
    assert proj(deep) == pytest.approx(0.02 / math.sqrt(4), rel=0.03)
    assert proj(width_only) == pytest.approx(0.02 / math.sqrt(32), rel=0.03)
    assert deep.blocks[5].mlp.fc.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert deep.config.init_depth == 2 and width_only.config.init_depth is None


def test_branch_multiplier_scales_each_residual_branch():
    """A block's output is x + m·attn(ln(x)) then + m·mlp(ln(·)): with m = 1/4 the update to the stream is a
    quarter of the unscaled block's, for the same weights."""
    torch.manual_seed(0)
    model = completep(1.0).build_model(config(BASE, n_layer=8))
    block = model.blocks[0]
    x = torch.randn(2, 8, BASE)
    scaled = block(x) - x
    attn = 0.25 * block.attn(block.ln_1(x))
    expected = attn + 0.25 * block.mlp(block.ln_2(x + attn))
    torch.testing.assert_close(scaled, expected)
    block.branch_mult = 1.0
    assert not torch.allclose(block(x) - x, scaled)


def test_scale_eps_false_keeps_adams_eps():
    model = mup(scale_eps=False).build_model(config(4 * BASE))
    assert {g["eps_mult"] for g in mup(scale_eps=False).param_groups(model, 1e-2, 0.0)} == {1.0}
    model = mup().build_model(config(4 * BASE))
    assert {g["eps_mult"] for g in mup().param_groups(model, 1e-2, 0.0)} == {0.25}


@pytest.mark.parametrize("options, match", [
    ({"depth_alpha": 1.5, "base_depth": 2}, "parametrization.depth_alpha must be in \\[0, 1\\]"),
    ({"depth_alpha": 1.0}, "parametrization.depth_alpha=1 needs parametrization.base_depth"),
    ({"depth_alpha": 1.0, "base_depth": 0}, "parametrization.base_depth must be a positive integer"),
])
def test_bad_depth_options_are_rejected(options, match):
    with pytest.raises(ValueError, match=match):
        mup(**options)


def test_sgd_has_no_depth_rule_and_is_refused():
    p = completep(1.0)
    model = p.build_model(config(BASE, n_layer=4))
    with pytest.raises(ValueError, match="parametrization.depth_alpha=1: the 'sgd' optimizer family has no depth"):
        p.param_groups(model, 1e-2, 0.0, family="sgd")
    assert p.param_groups(model, 1e-2, 0.0, family="muon")  # Muon has one
    mup().param_groups(model, 1e-2, 0.0, family="sgd")  # α = 0: SGD's width rules as before


def test_alpha_zero_ignores_base_depth():
    """depth_alpha=0 with base_depth given (a sweep over α shares the override) is today's width-only µP."""
    model = mup(depth_alpha=0.0, base_depth=2).build_model(config(BASE, n_layer=8))
    groups = mup(depth_alpha=0.0, base_depth=2).param_groups(model, 1e-2, 0.0)
    assert {g["lr"] for g in groups} == {1e-2} and model.config.branch_mult == 1.0
    assert model.config.init_depth is None


def test_options_for_depths_fills_base_depth():
    assert MaximalUpdateParametrization.options_for_depths({"depth_alpha": 1.0}, [8, 2, 4])["base_depth"] == 2
    assert MaximalUpdateParametrization.options_for_depths({"base_depth": 4}, [2, 8])["base_depth"] == 4


# ------------------------------------------------------------ the init relative to the base width (issue 21)
@pytest.mark.parametrize("width", [BASE, 4 * BASE])
def test_hidden_init_scale_gives_c_over_sqrt_width(width):
    """hidden_init_scale=c: every hidden matrix starts at c/sqrt(width) (c/sqrt(base_width) at the base width,
    µP's 1/sqrt(m) above it); the embeddings keep model.init_std at every width."""
    torch.manual_seed(0)
    c = 0.5
    model = mup(hidden_init_scale=c).build_model(config(width))
    b = model.blocks[0]
    assert b.attn.qkv.weight.std().item() == pytest.approx(c / math.sqrt(width), rel=0.03)
    assert b.mlp.fc.weight.std().item() == pytest.approx(c / math.sqrt(width), rel=0.03)
    assert b.mlp.proj.weight.std().item() == pytest.approx(c / math.sqrt(width) / math.sqrt(2 * 2), rel=0.03)
    assert model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert model.pos_emb.weight.std().item() == pytest.approx(0.02, rel=0.05)


@pytest.mark.parametrize("tie", [True, False])
def test_mup_with_hidden_init_scale_is_sp_with_the_same_init_at_base_width(tie):
    """µP's init relative to the base width is an init SP can be given too (model.hidden_init_std): at the base
    width the two models are the same, weight for weight, and compute the same function."""
    c = 0.64
    torch.manual_seed(0)
    sp_model = get_parametrization({"name": "sp"}).build_model(
        config(BASE, tie_embeddings=tie, hidden_init_std=c / math.sqrt(BASE)))
    torch.manual_seed(0)
    mup_model = mup(hidden_init_scale=c, output_mult=1.0).build_model(config(BASE, tie_embeddings=tie))
    for (name, a), b in zip(sp_model.state_dict().items(), mup_model.state_dict().values()):
        assert torch.equal(a, b), name
    assert sp_model.blocks[1].attn.qkv.weight.std().item() == pytest.approx(0.08, rel=0.03)
    x = torch.randint(0, 256, (2, 32))
    torch.testing.assert_close(mup_model(x)[0], sp_model(x)[0], rtol=1e-6, atol=1e-6)


def test_hidden_init_std_and_hidden_init_scale_together_are_refused():
    with pytest.raises(ValueError, match="model.hidden_init_std=0.01 and parametrization.hidden_init_scale=0.5 both "
                                         "set the hidden init"):
        mup(hidden_init_scale=0.5).build_model(config(BASE, hidden_init_std=0.01))
    with pytest.raises(ValueError, match="parametrization.hidden_init_scale must be a non-negative number"):
        mup(hidden_init_scale=-1.0)
    with pytest.raises(ValueError, match="model.hidden_init_std must be a non-negative number"):
        config(BASE, hidden_init_std=-0.1)


def test_embedding_init_std_sets_the_tables_only():
    """embedding_init_std: the token and position tables (and the tied readout) at that std at every width; the
    hidden matrices keep model.init_std when hidden_init_scale is null."""
    torch.manual_seed(0)
    model = mup(embedding_init_std=0.08).build_model(config(4 * BASE, init_std=0.04))
    assert model.tok_emb.weight.std().item() == pytest.approx(0.08, rel=0.03)
    assert model.pos_emb.weight.std().item() == pytest.approx(0.08, rel=0.05)
    assert model.lm_head.weight is model.tok_emb.weight
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.04 / 2, rel=0.03)  # σ/sqrt(m), m = 4


def test_output_alpha_is_the_output_multiplier_over_the_base_width():
    """output_mult null: output_mult = output_alpha / base_width, so the logits are output_alpha / width · W h at
    every base width (the same model at width 256 whether the base is 64 or 128)."""
    assert mup(output_mult=None, output_alpha=128.0).output_mult == 2.0
    assert get_parametrization({"name": "mup", "base_width": 128, "output_mult": None,
                                "output_alpha": 128.0}).output_mult == 1.0
    assert mup(output_mult=4.0, output_alpha=128.0).output_mult == 4.0  # an explicit output_mult is used as given
    model = mup(output_mult=None, output_alpha=128.0).build_model(config(4 * BASE))
    assert model.lm_head.input_scale() == pytest.approx(128.0 / (4 * BASE))
    with pytest.raises(ValueError, match="parametrization.output_mult and output_alpha are both null"):
        mup(output_mult=None, output_alpha=None)
    with pytest.raises(ValueError, match="parametrization.output_alpha must be positive"):
        mup(output_mult=None, output_alpha=0.0)


@pytest.mark.parametrize("base, width", [(64, 64), (64, 512), (128, 256)])
def test_shipped_mup_defaults_set_the_measured_init_scales(make_cfg, base, width):
    """conf/parametrization/mup.yaml as shipped: hidden matrices at 0.5/sqrt(width), the tables (and the tied
    readout) at 0.08 at every width, logits = 128/width · W h; GPT-2's init and mup's multiplier stay reachable."""
    from mugpt.core.recipe import Recipe

    cfg = make_cfg("parametrization=mup", f"parametrization.base_width={base}", f"model.width={width}",
                   "model.n_head=4")
    torch.manual_seed(0)
    model = Recipe.from_config(cfg.model, cfg.parametrization, cfg.optim, vocab_size=256).build_model()
    b = model.blocks[0]
    assert b.attn.qkv.weight.std().item() == pytest.approx(0.5 / math.sqrt(width), rel=0.03)
    assert b.mlp.fc.weight.std().item() == pytest.approx(0.5 / math.sqrt(width), rel=0.03)
    assert b.mlp.proj.weight.std().item() == pytest.approx(0.5 / math.sqrt(width) / math.sqrt(2 * 2), rel=0.03)
    assert model.tok_emb.weight.std().item() == pytest.approx(0.08, rel=0.05)
    assert model.lm_head.input_scale() == pytest.approx(128 / width)
    old = make_cfg("parametrization=mup", f"parametrization.base_width={base}", f"model.width={width}",
                   "model.n_head=4", "parametrization.hidden_init_scale=null",
                   "parametrization.embedding_init_std=null", "parametrization.output_mult=1")
    model = Recipe.from_config(old.model, old.parametrization, old.optim, vocab_size=256).build_model()
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02 * math.sqrt(base / width), rel=0.03)
    assert model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.lm_head.input_scale() == pytest.approx(base / width)


def test_model_init_std_that_reaches_no_weight_is_refused(make_cfg):
    from mugpt.errors import ConfigError
    from mugpt.training.train import check_config

    with pytest.raises(ConfigError, match="model.init_std=0.04 reaches no weight under parametrization=mup's init"):
        check_config(make_cfg("parametrization=mup", "model.init_std=0.04"))
    check_config(make_cfg("parametrization=mup", "model.init_std=0.04", "parametrization.hidden_init_scale=null"))
    with pytest.raises(ConfigError, match="model.hidden_init_std=0.01 and parametrization.hidden_init_scale=0.5"):
        check_config(make_cfg("parametrization=mup", "model.hidden_init_std=0.01"))


def test_output_alpha_keeps_the_initial_loss_across_base_widths():
    """Why output_alpha: a tied readout scores each position's own input token by ~output_mult · embedding std ·
    base_width at init (W h sums width aligned products), so a fixed output_mult starts ever higher as the base
    width grows, while output_alpha / base_width keeps the initial loss near ln(vocab) at every base width."""
    torch.manual_seed(0)
    x = torch.randint(0, 256, (8, 32))
    y = torch.randint(0, 256, (8, 32))
    losses = {}
    for base in (64, 512):
        for rule, options in (("mult", {"output_mult": 2.0}), ("alpha", {"output_mult": None, "output_alpha": 128.0})):
            torch.manual_seed(1)
            p = get_parametrization({"name": "mup", "base_width": base, "hidden_init_scale": 0.5,
                                     "embedding_init_std": 0.08, **options})
            with torch.no_grad():
                losses[rule, base] = p.build_model(config(base))(x, y)[1].item()
    assert losses["alpha", 64] == pytest.approx(losses["mult", 64])  # the same model at base width 64
    assert abs(losses["alpha", 512] - losses["alpha", 64]) < 1.0
    assert losses["alpha", 512] < math.log(256) + 1.5
    assert losses["mult", 512] > losses["mult", 64] + 10.0


# ------------------------------------------------------------------------------ µP's defaults, one home
def test_python_and_command_line_routes_build_the_same_mup(make_cfg):
    """get_parametrization({"name": "mup"}) and `parametrization=mup` agree: the same options (the class's
    signature is conf/parametrization/mup.yaml's schema), the same model weight for weight from the same seed,
    and the same parameter groups (lr, weight decay, ε per group)."""
    from mugpt.core.recipe import Recipe

    cfg = make_cfg("parametrization=mup", "model.width=64")
    composed = OmegaConf.to_container(cfg.parametrization)
    assert composed == {"name": "mup", **{k: p.default for k, p in
                                          inspect.signature(MaximalUpdateParametrization).parameters.items()}}
    routes = {"python": {"name": "mup"}, "command line": composed}
    built = {}
    for route, options in routes.items():
        recipe = Recipe.from_config(cfg.model, options, cfg.optim, vocab_size=256)
        torch.manual_seed(0)
        model = recipe.build_model()
        optimizer, _ = recipe.build_optimizer(model, max_steps=10)
        built[route] = (model, [(g["name"], g["lr"], g["weight_decay"], g["eps"], len(g["params"]))
                                for g in optimizer.param_groups])
    (python, python_groups), (command_line, command_line_groups) = built.values()
    assert python_groups == command_line_groups
    for (name, a), (_, b) in zip(python.state_dict().items(), command_line.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert python.lm_head.output_mult == 128.0 / 256  # output_alpha / base_width: the measured default


@pytest.mark.parametrize("name", ["sp", "umup"])
def test_sp_and_umup_files_hold_their_classes_defaults(name):
    """The files that list their options keep the classes' defaults (µP's file lists none: it composes them)."""
    from mugpt.config import CONF_DIR
    from mugpt.core.parametrization import parametrization_class

    written = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "parametrization" / f"{name}.yaml"))
    defaults = {k: p.default for k, p in inspect.signature(parametrization_class(name)).parameters.items()
                if p.kind is not inspect.Parameter.VAR_KEYWORD}
    assert written == {"name": name, **defaults}
