"""Standard parametrization (SP): GPT-2 as published, and the rivals to µP that keep its model."""

from __future__ import annotations

import inspect
import math
from typing import Any

from mugpt.core.model import GPT, GPTConfig
from mugpt.core.parametrization.base import Parametrization, _group, _named_unique_parameters, param_kind, record_shapes
from mugpt.core.parametrization.mup import MaximalUpdateParametrization


class StandardParametrization(Parametrization):
    """GPT-2 as published: N(0, 0.02) init, 1/sqrt(d_head) attention, one learning rate for all; with options,
    the rivals to µP that keep SP's model and change only its learning rates (conf/parametrization/sp.yaml).

    lr_mult_embedding, lr_mult_hidden, lr_mult_vector, lr_mult_readout: per-kind learning-rate constants (Everett
        et al. 2024's per-layer constants), tuned on the donor; 1.0 each is GPT-2's one learning rate.
    embedding_lr_rule: "global" (the tables follow the global lr) or "width" (Kalra & Barkeshli 2026: the tables'
        lr is the global lr × width / base_width, so that it stays at the donor's value when the global lr is
        re-tuned and falls as 1/width, as SP's best lr does under Adam).
    base_width: the donor's width, where the width rule is the identity; null: the model's own width.
    Weight decay is divided by each group's constant, as µP's is by its multiplier: a constant changes how fast a
    kind learns, not how much decoupled decay shrinks it per step (lr·wd).
    """

    name = "sp"
    title = "SP (standard parametrization)"
    label = "SP"
    sweep_offsets = range(-3, 2)  # SP's best lr falls with width: the target's grid reaches further down
    EMBEDDING_LR_RULES = ("global", "width")

    def __init__(self, lr_mult_embedding: float = 1.0, lr_mult_hidden: float = 1.0, lr_mult_vector: float = 1.0,
                 lr_mult_readout: float = 1.0, embedding_lr_rule: str = "global", base_width: int | None = None,
                 **options: Any) -> None:
        # µP's other options are accepted and ignored, so that one sweep can run parametrization=sp,mup with
        # shared overrides (parametrization.base_width=64); anything else is a typo and refused.
        unknown = sorted(set(options) - set(inspect.signature(MaximalUpdateParametrization).parameters))
        if unknown:
            raise ValueError(f"parametrization.{unknown[0]}: not an option of parametrization={self.name} (it "
                             f"ignores µP's, so that sp,mup sweeps can share overrides)")
        self.lr_mults = {"embedding": lr_mult_embedding, "hidden": lr_mult_hidden, "vector": lr_mult_vector,
                         "readout": lr_mult_readout}
        for kind, value in self.lr_mults.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"parametrization.lr_mult_{kind} must be a positive number, got {value!r}")
        self.lr_mults = {kind: float(value) for kind, value in self.lr_mults.items()}
        if embedding_lr_rule not in self.EMBEDDING_LR_RULES:
            raise ValueError(f"parametrization.embedding_lr_rule must be one of "
                             f"{', '.join(self.EMBEDDING_LR_RULES)}, got {embedding_lr_rule!r}")
        if base_width is not None and (isinstance(base_width, bool) or not isinstance(base_width, int)
                                       or base_width <= 0):
            raise ValueError(f"parametrization.base_width must be a positive integer or null (the model's own "
                             f"width), got {base_width!r}")
        self.embedding_lr_rule = embedding_lr_rule
        self.base_width = base_width

    @staticmethod
    def check_run(model: GPTConfig, cfg: Any) -> None:
        """SP runs every model and training option the project has."""

    @staticmethod
    def options_for_widths(options: dict, widths: list[int]) -> dict:
        """The options for a run over several widths: under the width rule, base_width null = the narrowest
        (as µP's), so that the rule acts across the widths compared."""
        options = dict(options)
        if options.get("embedding_lr_rule") == "width" and options.get("base_width") is None:
            options["base_width"] = min(widths)
        return options

    def build_model(self, config: GPTConfig) -> GPT:
        return record_shapes(GPT(config))

    def lr_mult(self, kind: str, width: int | None = None) -> float:
        """The factor on the global lr for a parameter of this kind in a model of this width."""
        mult = self.lr_mults[kind]
        if kind == "embedding" and self.embedding_lr_rule == "width" and self.base_width is not None:
            mult *= width / self.base_width
        return mult

    def param_groups(self, model: GPT, lr: float, weight_decay: float, family: str = "adam") -> list[dict]:
        """The global lr × each kind's factor (lr_mult); decay only matrices and embeddings (≥2-D), not biases or
        LayerNorm gains, at weight_decay / factor. One group per kind, so optimizers that treat kinds differently
        (Muon) can tell them apart."""
        # only the width rule reads the model's config (the global rule works on any module, wrapped or not)
        width = model.config.width if self.embedding_lr_rule == "width" else None
        groups: dict[tuple, dict] = {}
        for name, p, ndim in _named_unique_parameters(model):
            kind, decay = param_kind(name, ndim), ndim >= 2
            mult = self.lr_mult(kind, width)
            group = _group(groups, (kind, decay), kind=kind, decay=decay, lr=lr, mult=mult,
                           weight_decay=weight_decay / mult, parametrization=self.name)
            group["params"].append(p)
            group["param_names"].append(name)
        return list(groups.values())

