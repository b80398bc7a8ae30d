"""The registries are the one place an optimizer or a parametrization is declared: one added at run time (no project
file edited) composes, trains through the project's recipe, and is named by its title wherever the registries are
read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

import mugpt.core.optim as optim
import mugpt.core.parametrization as parametrization
from conftest import compose_script
from mugpt.config import OptimConfig, optim_schemas, register_configs
from mugpt.core.model import GPT, GPTConfig
from mugpt.core.parametrization.base import Parametrization, _group, _named_unique_parameters, param_kind, record_shapes
from mugpt.core.recipe import Recipe, train_step

MODEL = GPTConfig(vocab_size=64, block_size=16, width=32, n_layer=2, n_head=2)


# ----------------------------------------------------------------------------------------- the toys
@dataclass
class SignConfig(OptimConfig):
    momentum: float = 0.0


class SignDescent(torch.optim.Optimizer):
    """Steps every entry by lr·sign(g): the smallest optimizer with a step of its own."""

    def __init__(self, groups: list[dict], lr: float) -> None:
        super().__init__(groups, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad.sign(), alpha=-group["lr"])


class HalfHidden(Parametrization):
    """SP's model with the hidden matrices at half the learning rate."""

    name = "toy_half_hidden"
    title = "Toy (SP, hidden matrices at half the lr)"
    label = "toy"
    sweep_offsets = range(-1, 2)
    model_needs = {"tie_embeddings": False}

    def build_model(self, config: GPTConfig) -> GPT:
        return record_shapes(GPT(self.model_config(config)))

    def param_groups(self, model: torch.nn.Module, lr: float, weight_decay: float, family: str = "adam") -> list[dict]:
        groups: dict[tuple, dict] = {}
        for name, p, ndim in _named_unique_parameters(model):
            kind = param_kind(name, ndim)
            mult = 0.5 if kind == "hidden" else 1.0
            group = _group(groups, (kind, ndim >= 2), kind=kind, decay=ndim >= 2, lr=lr, mult=mult,
                           weight_decay=weight_decay, parametrization=self.name)
            group["params"].append(p)
            group["param_names"].append(name)
        return list(groups.values())


@pytest.fixture
def toys():
    """The toy optimizer and parametrization registered for one test, and taken out again afterwards."""
    spec = optim.register_optimizer(optim.OptimizerSpec(
        name="toy_sign", factory=lambda groups, cfg, on_cuda: SignDescent(groups, lr=cfg.lr), mup_family="adam",
        schema=SignConfig, title="Sign descent (toy)", decoupled_decay=False, lr_log2_grid=range(-12, -6)))
    parametrization.register_parametrization(HalfHidden)
    yield spec, HalfHidden
    del optim.OPTIMIZERS["toy_sign"], parametrization.PARAMETRIZATIONS["toy_half_hidden"]
    register_configs()  # the store keeps the toy schemas: harmless, named after nothing the conf/ files use


def train_five_steps(recipe: Recipe) -> list[float]:
    torch.manual_seed(0)
    model = recipe.build_model()
    optimizer, scheduler = recipe.build_optimizer(model, max_steps=5)
    # one batch, five times: its loss must fall whatever the data
    b = torch.randint(0, MODEL.vocab_size, (4, MODEL.block_size + 1), generator=torch.Generator().manual_seed(1))
    return [train_step(model, optimizer, scheduler, [(b[:, :-1], b[:, 1:])], grad_clip=recipe.grad_clip).loss.item()
            for _ in range(5)]


# ---------------------------------------------------------------------------------------------- tests
def test_a_toy_optimizer_composes_trains_and_is_named_by_its_title(toys):
    spec, _ = toys
    register_configs()
    assert optim_schemas()["toy_sign"] is SignConfig
    assert ConfigStore.instance().load("schema_optim_toy_sign.yaml").node.momentum == 0.0  # Hydra can compose it
    cfg = OmegaConf.merge(OmegaConf.structured(SignConfig), {"name": "toy_sign", "lr": 1e-3, "warmup_steps": 1})
    optim.check_optimizer(cfg)
    losses = train_five_steps(Recipe(MODEL, {"name": "sp"}, cfg))
    assert len(losses) == 5 and all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert optim.titles()["toy_sign"] == "Sign descent (toy)"
    assert optim.lr_log2_grids()["toy_sign"] == (["optim=toy_sign"], range(-12, -6))
    assert optim.mup_family("toy_sign") == "adam"
    with pytest.raises(ValueError, match="optim.weight_decay_timescale: optim=toy_sign has no single decoupled"):
        optim.check_transfer_rules(OmegaConf.merge(cfg, {"weight_decay_timescale": 0.1}))


def test_a_toy_parametrization_trains_and_is_named_by_its_title(toys):
    register_configs()
    assert ConfigStore.instance().load("schema_parametrization_toy_half_hidden.yaml").node.name == "toy_half_hidden"
    cfg = OmegaConf.merge(OmegaConf.structured(optim.OPTIMIZERS["adamw"].schema),
                          {"name": "adamw", "lr": 1e-2, "warmup_steps": 1})
    recipe = Recipe(MODEL, {"name": "toy_half_hidden"}, cfg)
    assert not recipe.model.tie_embeddings  # what it needs of the model, set for it
    groups = {g["kind"]: g["lr"] for g in recipe.param_groups(recipe.build_model())}
    assert groups["hidden"] == pytest.approx(0.5e-2) and groups["embedding"] == pytest.approx(1e-2)
    losses = train_five_steps(recipe)
    assert len(losses) == 5 and losses[-1] < losses[0]
    assert parametrization.titles()["toy_half_hidden"] == "Toy (SP, hidden matrices at half the lr)"
    assert parametrization.sweep_offsets()["toy_half_hidden"] == range(-1, 2)
    with pytest.raises(ValueError, match="parametrization=toy_half_hidden needs model.tie_embeddings=false"):
        HalfHidden.check_written({"tie_embeddings": True})


def test_both_toys_together(toys):
    """The toy optimizer over the toy parametrization's groups: neither knows the other."""
    cfg = OmegaConf.merge(OmegaConf.structured(SignConfig), {"name": "toy_sign", "lr": 1e-3, "warmup_steps": 1})
    losses = train_five_steps(Recipe(MODEL, {"name": "toy_half_hidden"}, cfg))
    assert losses[-1] < losses[0]


def test_the_shipped_declarations():
    """Every optimizer and parametrization the project ships declares what the comparisons read."""
    assert list(optim.titles()) == ["adamw", "adam", "sgd", "adagrad", "rmsprop", "adafactor", "adam_atan2",
                                    "adam8bit", "muon"]
    assert [n for n, s in optim.OPTIMIZERS.items() if s.decoupled_decay] == ["adamw", "adafactor", "adam_atan2",
                                                                             "adam8bit"]
    assert {n for n, s in optim.OPTIMIZERS.items() if s.needs_whole_matrices} == {"muon", "adafactor"}
    assert parametrization.titles() == {"sp": "SP (standard parametrization)",
                                        "mup": "µP (maximal update parametrization)",
                                        "umup": "u-µP (unit-scaled µP)",
                                        "abc": "abc-parametrization (per-kind exponents)"}
    assert parametrization.sweep_offsets() == {"sp": range(-3, 2), "mup": range(-2, 3), "umup": range(-2, 3),
                                               "abc": range(-3, 3)}


# ------------------------------------------------------------------------- the toys in the studies' tables
@pytest.fixture
def toy_yaml(toys):
    """What the toy optimizer's conf/optim/ file would hold, given to Hydra through its store instead (no project
    file written), and taken out again afterwards."""
    register_configs()
    store = ConfigStore.instance()
    store.store(group="optim", name="toy_sign", node={"defaults": ["/schema_optim_toy_sign@_here_", "_self_"],
                                                     "name": "toy_sign", "lr": 1e-3, "warmup_steps": 1})
    yield toys
    store.repo["optim"].pop("toy_sign.yaml", None)


def test_compare_optimizers_plans_the_toy(toy_yaml, monkeypatch, tmp_path):
    """The comparison takes any registered optimizer: the toy is accepted, offered, and planned as a run."""
    import mugpt.studies.compare_optimizers as compare

    opts = compare.read_options(compose_script("compare_optimizers", "optimizers=[toy_sign,adamw]",
                                               "lr_factors=[1]", "steps=10", f"out={tmp_path}"))
    assert opts.optimizers == ("toy_sign", "adamw")
    with pytest.raises(ValueError, match=r"unknown optimizer 'nope' \(choose from .*toy_sign"):
        compare.read_options(compose_script("compare_optimizers", "optimizers=[nope]"))
    written = compare.default_optim  # conf/optim/NAME.yaml; the toy's lives in Hydra's store
    monkeypatch.setattr(compare, "default_optim", lambda name: OmegaConf.merge(
        OmegaConf.structured(SignConfig), {"name": "toy_sign", "lr": 1e-3, "warmup_steps": 1})
        if name == "toy_sign" else written(name))
    runs, skipped = compare.plan_runs(opts)
    assert not skipped and [r.optimizer for r in runs] == ["toy_sign", "adamw"]
    assert runs[0].cfg.optim.name == "toy_sign" and runs[0].cfg.optim.lr == pytest.approx(1e-3)


def test_optimizer_transfer_sweeps_the_toys(toys, tmp_path):
    """The transfer experiment's grids, default optimizers, target offsets, options and table read the registries."""
    import mugpt.studies.optimizer_transfer as transfer
    from mugpt.studies.stats import mean_ci

    assert transfer.grids()["toy_sign"] == (["optim=toy_sign"], range(-12, -6))
    assert "toy_sign" in transfer.default_optimizers().split(",")
    assert transfer.target_offsets()["toy_half_hidden"] == range(-1, 2)
    assert transfer.setting("toy_sign", "toy_half_hidden") == (["optim=toy_sign"], range(-12, -6))
    overrides = transfer.sweep_overrides("toy_sign", "toy_half_hidden", 64, [-12, -11], [0])
    assert {"parametrization=toy_half_hidden", "optim=toy_sign", "lr_log2=-12,-11"} <= set(overrides)
    with pytest.raises(FileNotFoundError, match="no finished sweeps"):  # the options pass; nothing ran yet
        transfer.optimizer_transfer(tmp_path, stage="report", optimizers="toy_sign",
                                    parametrizations="toy_half_hidden")
    stats = mean_ci([0.1, 0.2, 0.3])
    row = {"optimizer": "toy_sign", "parametrization": "toy_half_hidden", "donor_log2_lr": -9, "donor_edge": False,
           "target_log2_lr": -10, "target_edge": True, "shift": stats, "regret": stats, "target_best_loss": stats,
           "donor_best_loss": stats, "coord": None, "runs": 30, "diverged": 0}
    assert "| toy_sign | toy | -9 | -10* |" in transfer.format_table([row])


def test_the_figures_title_the_toys(toys):
    """The coordinate check's figure title names the toy optimizer, the transfer report's panels the toy
    parametrization, by their titles."""
    from mugpt.studies.coord_check.run import _training_text
    from mugpt.studies.transfer import series_title

    cfg = OmegaConf.create({"optim": {"name": "toy_sign", "lr": 0.01}, "data": {"batch_size": 8},
                            "model": {"block_size": 64}, "seeds": [0, 1]})
    assert _training_text(cfg) == "Sign descent (toy) lr=0.01, batch 8x64, 2 seed(s)"
    assert series_title("toy_half_hidden") == "Toy (SP, hidden matrices at half the lr)"
    assert series_title("toy_half_hidden tuned") == "Toy (SP, hidden matrices at half the lr), tuned"
    assert series_title("mup") == "µP (maximal update parametrization)"
