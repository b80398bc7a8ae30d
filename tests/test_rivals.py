"""SP's rivals to µP (per-kind learning-rate constants, the embedding's width rule) against their rules."""

import math

import pytest
import torch

from mugpt.core.model import GPTConfig
from mugpt.core.parametrization import StandardParametrization, get_parametrization

LR, WD = 1e-3, 0.1


def config(width: int, **kw) -> GPTConfig:
    return GPTConfig(**{**dict(vocab_size=256, block_size=32, width=width, n_layer=2, n_head=4), **kw})


def groups_of(options: dict, width: int = 128, **kw) -> tuple[torch.nn.Module, list[dict]]:
    rule = get_parametrization({"name": "sp", **options})
    torch.manual_seed(0)
    model = rule.build_model(config(width, **kw))
    return model, rule.param_groups(model, lr=LR, weight_decay=WD)


def per_param(groups: list[dict]) -> dict[str, tuple]:
    return {n: (g["kind"], g["lr"], g["weight_decay"], g["name"]) for g in groups for n in g["param_names"]}


def sp_as_before(model: torch.nn.Module) -> list[dict]:
    """GPT-2's SP grouping written out: one lr, decay on ≥2-D weights, one group per (kind, decay)."""
    from mugpt.core.parametrization import _named_unique_parameters, param_kind
    out: dict[tuple, dict] = {}
    for name, _, ndim in _named_unique_parameters(model):
        kind, decay = param_kind(name, ndim), ndim >= 2
        g = out.setdefault((kind, decay), {"name": f"{kind}{'' if decay else '_no_decay'}_x1", "kind": kind,
                                           "lr": LR, "weight_decay": WD if decay else 0.0, "param_names": []})
        g["param_names"].append(name)
    return list(out.values())


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("options", [{}, {"lr_mult_embedding": 1.0, "lr_mult_hidden": 1.0, "lr_mult_vector": 1.0,
                                          "lr_mult_readout": 1.0, "embedding_lr_rule": "global", "base_width": 64},
                                     {"embedding_lr_rule": "width"}])  # base_width null: the identity
def test_defaults_are_gpt2_sp_exactly(options, tie):
    model, groups = groups_of(options, tie_embeddings=tie)
    expected = sp_as_before(model)
    assert [g["param_names"] for g in groups] == [g["param_names"] for g in expected]
    assert [(g["name"], g["kind"], g["lr"], g["weight_decay"], g["lr_mult"]) for g in groups] == \
        [(g["name"], g["kind"], g["lr"], g["weight_decay"], 1.0) for g in expected]
    torch.manual_seed(0)  # the init is SP's: the same weights from the same seed
    plain = StandardParametrization().build_model(config(128, tie_embeddings=tie))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values()))
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.03)


@pytest.mark.parametrize("kind", ["embedding", "hidden", "vector", "readout"])
def test_each_constant_changes_only_its_kind(kind):
    _, before = groups_of({}, tie_embeddings=False)
    _, after = groups_of({f"lr_mult_{kind}": 4.0}, tie_embeddings=False)
    before, after = per_param(before), per_param(after)
    assert before.keys() == after.keys()
    for name, (k, lr, wd, _) in after.items():
        factor = 4.0 if k == kind else 1.0
        assert lr == pytest.approx(before[name][1] * factor), name
        assert wd == pytest.approx(before[name][2] / factor), name  # lr·wd kept: decoupled decay unchanged
    assert {k for k, *_ in after.values()} == {"embedding", "hidden", "vector", "readout"}


def test_tied_readout_follows_the_embedding_constant():
    model, groups = groups_of({"lr_mult_embedding": 0.25, "lr_mult_readout": 8.0})
    (emb,) = [g for g in groups if g["kind"] == "embedding"]
    assert emb["param_names"] == ["tok_emb.weight", "pos_emb.weight"] and emb["lr"] == pytest.approx(LR / 4)
    assert model.lm_head.weight is model.tok_emb.weight


@pytest.mark.parametrize("width, factor", [(64, 1.0), (128, 2.0), (256, 4.0)])
def test_width_rule_scales_the_tables_by_width_over_base(width, factor):
    _, groups = groups_of({"embedding_lr_rule": "width", "base_width": 64, "lr_mult_embedding": 0.5}, width=width)
    lrs = {g["kind"]: (g["lr"], g["weight_decay"]) for g in groups if g["decay"] or g["kind"] == "vector"}
    assert lrs["embedding"] == pytest.approx((LR * 0.5 * factor, WD / (0.5 * factor)))
    assert lrs["hidden"] == (LR, WD) and lrs["vector"] == (LR, 0.0)


def test_width_rule_keeps_the_tables_lr_when_the_global_lr_falls_as_one_over_width():
    rule = get_parametrization({"name": "sp", "embedding_lr_rule": "width", "base_width": 64})
    for width in (64, 128, 256, 512):
        model = rule.build_model(config(width))
        groups = rule.param_groups(model, lr=LR * 64 / width, weight_decay=0.0)
        assert next(g["lr"] for g in groups if g["kind"] == "embedding") == pytest.approx(LR)


def test_options_for_widths_fills_base_width_under_the_width_rule_only():
    assert StandardParametrization.options_for_widths({"embedding_lr_rule": "width"}, [256, 64])["base_width"] == 64
    assert "base_width" not in StandardParametrization.options_for_widths({}, [256, 64])


@pytest.mark.parametrize("options, match", [
    ({"lr_mult_embedding": 0}, r"^parametrization.lr_mult_embedding must be a positive number, got 0$"),
    ({"lr_mult_hidden": -1.0}, r"^parametrization.lr_mult_hidden must be a positive number"),
    ({"lr_mult_vector": math.inf}, r"^parametrization.lr_mult_vector must be a positive number"),
    ({"lr_mult_readout": "4"}, r"^parametrization.lr_mult_readout must be a positive number"),
    ({"lr_mult_readout": True}, r"^parametrization.lr_mult_readout must be a positive number"),
    ({"embedding_lr_rule": "sqrt"}, r"^parametrization.embedding_lr_rule must be one of global, width, got 'sqrt'$"),
    ({"base_width": 0}, r"^parametrization.base_width must be a positive integer or null"),
    ({"base_width": 64.0}, r"^parametrization.base_width must be a positive integer or null"),
    ({"lr_mult_embeding": 2.0}, r"^parametrization.lr_mult_embeding: not an option of parametrization=sp"),
])
def test_bad_values_are_refused_in_one_line(options, match):
    with pytest.raises(ValueError, match=match) as err:
        get_parametrization({"name": "sp", **options})
    assert "\n" not in str(err.value)


def test_mups_options_are_still_ignored_under_sp():
    rule = get_parametrization({"name": "sp", "base_width": 64, "output_mult": 2.0, "embedding_lr_mult": 4.0})
    _, groups = groups_of({"base_width": 64, "output_mult": 2.0, "embedding_lr_mult": 4.0})
    assert rule.name == "sp" and all(g["lr"] == LR for g in groups)


def test_fair_rivals_reads_sp_and_mup_from_the_optimizer_sweep_and_refuses_unknown_rivals(monkeypatch):
    """scripts/fair_rivals.py's study: SP's and µP's AdamW rows are optimizer_transfer's (8 donor lrs + 5 target lrs ×
    3 seeds, its donor best 2^-7 and 2^-6), nothing is run for them, and an unknown rival is refused in one line."""
    import mugpt.studies.fair_rivals as script
    for name, best in (("sp", -7), ("mup", -6)):
        rows, info = script.run_rival(name)
        assert len(rows) == 39 and info["tuning_runs"] == 24 and info["new_runs"] == 0
        a = script.analyse(rows)[name]
        assert math.log2(a["donor_lr"]) == best
    with pytest.raises(SystemExit, match=r"^error: rivals sp,spp: unknown 'spp' \(choose from sp, sp_width"):
        script.fair_rivals(["sp", "spp"])
