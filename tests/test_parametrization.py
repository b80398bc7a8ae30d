"""µP against its rules: init stds, per-group learning rates, forward multipliers, and what it must survive."""

import copy
import io
import math

import pytest
import torch

from mugpt.model import GPTConfig
from mugpt.parametrization import MaximalUpdateParametrization, get_parametrization

BASE = 64


def config(width: int, **kw) -> GPTConfig:
    return GPTConfig(**{**dict(vocab_size=256, block_size=32, width=width, n_layer=2, n_head=4), **kw})


def mup(**kw) -> MaximalUpdateParametrization:
    return get_parametrization({"name": "mup", "base_width": BASE, **kw})


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
    from mugpt.optim import OPTIMIZERS
    from mugpt.parametrization import MUP_FAMILIES

    assert {name: spec.mup_family for name, spec in OPTIMIZERS.items()} == {
        "adamw": "adam", "adam": "adam", "sgd": "sgd", "adagrad": "adam", "rmsprop": "adam", "adafactor": "adam",
        "adam8bit": "adam", "muon": "muon"}
    assert set(MUP_FAMILIES) == {spec.mup_family for spec in OPTIMIZERS.values()}


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
    from mugpt.parametrization import param_kind

    assert [param_kind(n, d) for n, d in [("tok_emb.weight", 2), ("pos_emb.weight", 2), ("lm_head.weight", 2),
                                          ("blocks.0.mlp.fc.weight", 2), ("blocks.0.mlp.fc.bias", 1),
                                          ("ln_f.weight", 1)]] == [
        "embedding", "embedding", "readout", "hidden", "vector", "vector"]


def test_unknown_parametrization_is_rejected():
    with pytest.raises(ValueError, match="parametrization: unknown option 'ntk'"):
        get_parametrization({"name": "ntk"})
