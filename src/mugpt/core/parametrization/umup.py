"""Unit-scaled µP (u-µP) through Graphcore's `unit-scaling` package (imported only when a u-µP model is built)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from mugpt.core.model import GPTConfig
from mugpt.core.parametrization.base import (
    KINDS,
    Parametrization,
    _group,
    _named_unique_parameters,
    param_kind,
    record_shapes,
)

# GPT options that SP and µP set for themselves; u-µP has its own multipliers (its options below).
_SP_MUP_MULTIPLIERS = {"attn_scale": None, "embed_mult": 1.0, "branch_mult": 1.0, "init_depth": None}


@dataclass(frozen=True)
class UnitScalingTag:
    """What unit-scaling's learning-rate rule reads off a parameter (its ParameterData protocol), kept by name on
    the model at build time: the tags are attributes of the parameter tensors, which FSDP's flat parameters do
    not carry."""

    mup_type: str  # weight | bias | norm | output
    mup_scaling_depth: int | None  # the number of blocks, for parameters inside them
    shape: tuple[int, ...]


class UnitScaledParametrization(Parametrization):
    """u-µP (Blake et al., ICLR 2025, "u-µP: The Unit-Scaled Maximal Update Parametrization") through Graphcore's
    `unit-scaling` package: the same GPT (GPTConfig's architecture, parameter names and shapes) built from the
    package's unit-scaled layers (mugpt.core.unit_scaled), every weight drawn N(0, 1), and the package's Adam rule for
    the learning rates. Its rules are absolute, not relative to a base model: there is no base width or depth,
    and optim.lr is u-µP's global η (O(1), not SP's 3e-3).

    Learning rates (unit_scaling.optim.lr_scale_func_adam, per parameter): hidden matrices and the token and
    position tables lr / sqrt(fan_in) (a table's fan_in is the width: u-µP's embedding rule), the readout lr,
    LayerNorm gains and biases lr; every parameter inside the blocks × n_layer^-1/2. Weight decay is
    lr-independent (the package's independent_weight_decay): each decayed group's weight_decay is
    optim.weight_decay / its lr, so decoupled decay shrinks every weight by optim.weight_decay per step (times
    the schedule), whatever the learning rate. Adam-family optimizers only; ε is not scaled (eps_mult 1: the
    gradients are unit-scaled).

    The options are u-µP's five tunable multipliers, each 1 by default (the package's defaults):
    residual_mult: α_res, the contribution of the residual branches relative to the embedding
        (unit_scaling.transformer_residual_scaling_rule's residual_mult).
    residual_attn_ratio: α_res-attn-ratio, attention branches' contribution relative to the MLPs'.
    attn_softmax_mult: α_attn, attention logits are attn_softmax_mult · q·k / d_head.
    ffn_act_mult: α_ffn-act, the GELU's input multiplier.
    loss_softmax_mult: α_loss-softmax, the output multiplier: logits = loss_softmax_mult · W h / width.

    The embeddings are untied whatever model.tie_embeddings says (model_needs; a command line that sets it true
    is refused). Refused (check_model, check_run): post-norm, loss_impl=fused, SP/µP's model multipliers, fp8,
    and torch.compile together with activation checkpointing; model.init_std is ignored (u-µP draws unit-variance
    weights). torch.compile, loss_impl=chunked, activation checkpointing, DDP and FSDP (the unit-scaled blocks as
    its units) run.
    """

    name = "umup"
    title = "u-µP (unit-scaled µP)"
    label = "u-µP"
    sweep_offsets = range(-2, 3)
    # unit scaling gives the token table and the readout different backward scales and u-µP different learning
    # rates (lr/sqrt(width) and lr): one shared matrix cannot follow both
    model_needs = {"tie_embeddings": False}

    def __init__(self, residual_mult: float = 1.0, residual_attn_ratio: float = 1.0, attn_softmax_mult: float = 1.0,
                 ffn_act_mult: float = 1.0, loss_softmax_mult: float = 1.0) -> None:
        if importlib.util.find_spec("unit_scaling") is None:
            raise ImportError("parametrization=umup needs Graphcore's unit-scaling package: "
                              "pip install 'mugpt[umup]' (unit-scaling>=0.3.5)")
        self.mults = {"residual_mult": residual_mult, "residual_attn_ratio": residual_attn_ratio,
                      "attn_softmax_mult": attn_softmax_mult, "ffn_act_mult": ffn_act_mult,
                      "loss_softmax_mult": loss_softmax_mult}
        for key, value in self.mults.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"parametrization.{key} must be a positive number, got {value!r}")
        self.mults = {key: float(value) for key, value in self.mults.items()}

    @staticmethod
    def check_family(family: str) -> None:
        if family != "adam":
            raise ValueError(f"parametrization=umup: the '{family}' optimizer family is not supported: u-µP's "
                             f"learning-rate rule (unit-scaling's lr_scale_func_adam) is for Adam's "
                             f"entrywise-normalised steps; use an Adam-family optimizer (optim=adamw, adam, ...)")

    def promises(self, family: str) -> dict[str, dict[str, float]]:
        """u-µP's rules as exponents of width (see Parametrization.promises; Blake et al. 2025, Table 2, as the
        unit-scaling package builds them): every weight drawn with RMS 1 at any width, the widths moved into the
        ops instead: a hidden linear ×1/sqrt(fan_in), the readout ×1/fan_in, attention α/d_head. Adam learning
        rates (lr_scale_func_adam): hidden matrices and the tables lr/sqrt(fan_in) (a table's fan_in is the width),
        the readout and the gains and biases lr; ε unscaled; decay lr-independent (lr·wd fixed). So ΔW·x is Θ(1)
        for the hidden layers and the readout and shrinks as width^-1/2 for the tables. Its depth rule (block
        learning rates ×L^-1/2, the residual τ rule) is not declared here."""
        self.check_family(family)
        width = {**{f"init.{k}": 0.0 for k in KINDS}, "mult.hidden": -0.5, "mult.readout": -1.0,
                 "mult.embedding": 0.0, "attn_scale": -1.0, "branch": 0.0,
                 "lr.hidden": -0.5, "lr.embedding": -0.5, "lr.vector": 0.0, "lr.readout": 0.0,
                 **{f"eps.{k}": 0.0 for k in KINDS}, **{f"lr_wd.{k}": 0.0 for k in KINDS},
                 "update.hidden": 0.0, "update.readout": 0.0, "update.embedding": -0.5, "update.vector": 0.0,
                 "activation.hidden": 0.0, "stream_change": 0.0, "logits_change": 0.0}
        return {"width": width}

    @staticmethod
    def check_model(config: GPTConfig) -> None:
        """Refuse, in one line, a model option that the unit-scaled GPT cannot build faithfully (its model_needs
        applied first)."""
        if config.norm != "pre":
            raise ValueError(f"parametrization=umup: model.norm={config.norm} is not supported: u-µP's residual rule "
                             f"(unit-scaling's residual_split/residual_add) is for pre-norm blocks; use model.norm=pre")
        if config.loss_impl == "fused":
            raise ValueError("parametrization=umup: model.loss_impl=fused is not supported: liger-kernel's fused loss "
                             "is untested with u-µP's unit-scaled readout; use model.loss_impl=chunked (the same "
                             "memory saving, on CPU and GPU)")
        for key, default in _SP_MUP_MULTIPLIERS.items():
            if getattr(config, key) != default:
                raise ValueError(f"parametrization=umup: model.{key}={getattr(config, key)} is SP/µP's multiplier; "
                                 f"u-µP has its own (parametrization.residual_mult, attn_softmax_mult, ...): "
                                 f"leave model.{key} unset")

    def check_run(self, model: GPTConfig, cfg: Any) -> None:
        """Refuse, before anything is built, the training options u-µP cannot run here."""
        self.check_model(self.model_config(model))
        if cfg.compile.get("mode") and model.activation_checkpointing:
            raise ValueError(f"parametrization=umup: compile={cfg.compile.mode} with activation_checkpointing=blocks "
                             f"is not supported: inductor fails on unit-scaling's scale_bwd autograd function inside "
                             f"a checkpointed block (torch {torch.__version__}); use one of the two")
        if cfg.precision.get("float8"):
            raise ValueError("parametrization=umup: precision=fp8 (and fp8-emulated) is not supported: torchao "
                             "swaps the blocks' linear layers for Float8Linear, which drops unit-scaling's scale "
                             "factors; use precision=bf16-mixed")

    def build_model(self, config: GPTConfig) -> nn.Module:
        """The unit-scaled GPT, drawn from the current torch RNG state (every weight N(0, 1), biases 0, gains 1)."""
        config = self.model_config(config)
        self.check_model(config)
        from mugpt.core.unit_scaled import UnitScaledGPT

        model = UnitScaledGPT(config, **self.mults)
        model.unit_scaling_tags = {name: UnitScalingTag(p.mup_type, p.mup_scaling_depth, tuple(p.shape))
                                   for name, p in model.named_parameters()}
        return record_shapes(model)

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float, family: str = "adam") -> list[dict]:
        """One group per (kind, learning-rate multiplier, decay or not), with unit-scaling's Adam multiplier (its
        lr_scale_func_adam on each parameter's tags) and its lr-independent decay: lr_group·weight_decay_group =
        weight_decay. Groups carry µP's keys; eps_mult is 1."""
        from unit_scaling.optim import lr_scale_func_adam

        self.check_family(family)
        tags = model.unit_scaling_tags
        groups: dict[tuple, dict] = {}
        for name, p, ndim in _named_unique_parameters(model):
            kind, decay = param_kind(name, ndim), ndim >= 2
            mult = float(lr_scale_func_adam(tags[name]))
            group = _group(groups, (kind, mult, decay), kind=kind, decay=decay, lr=lr, mult=mult,
                           weight_decay=weight_decay / (lr * mult), parametrization=self.name)
            group["eps_mult"] = 1.0
            group["params"].append(p)
            group["param_names"].append(name)
        return list(groups.values())

