"""Standard parametrization (SP) and Maximal Update Parametrization (µP), in one place.

A parametrization decides three things about a GPT of a given width:
  1. how it is built and initialised (µP: base shapes, `mup.init`, a width-aware readout),
  2. its forward multipliers (µP: attention scale α/d_head, input and output multipliers),
  3. the per-group learning rates and weight decay handed to the optimizer.
Everything else in the project is parametrization-agnostic and asks this module.

The boundary with the optimizers: every parameter group carries a `kind` (hidden, embedding, vector, readout)
and the name of the parametrization that made it; optimizers read those and nothing else (no `p.infshape`, no
parameter names). The learning-rate rule for an optimizer is chosen by its µP *family* ("adam", "sgd",
"muon"), which each optimizer declares next to its factory in `mugpt.optim`.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import replace
from typing import Any

import torch
import torch.nn as nn
from mup import MuReadout, MuSharedReadout, set_base_shapes
from mup import init as mup_init
from mup.infshape import InfShape

from mugpt.model import GPT, GPTConfig

# What a parameter is to an optimizer. Hidden: a matrix both of whose dimensions grow with width; embedding:
# the token and position tables (and the readout tied to the token table); readout: an untied output matrix;
# vector: biases and LayerNorm gains (anything below 2-D).
KINDS = ("hidden", "embedding", "vector", "readout")
EMBEDDING_TABLES = {"tok_emb.weight", "pos_emb.weight"}  # the input weights (the tied readout is tok_emb)
READOUT = "lm_head."


def param_kind(name: str, ndim: int) -> str:
    """The kind of one of this GPT's parameters, from its name (wrappers stripped) and its dimensions as built."""
    if name in EMBEDDING_TABLES:
        return "embedding"
    if ndim < 2:
        return "vector"
    return "readout" if name.startswith(READOUT) else "hidden"


def _group(groups: dict, key: tuple, *, kind: str, decay: bool, lr: float, mult: float, weight_decay: float,
           parametrization: str) -> dict:
    """The group for `key`, created on first use: lr = base lr × the parametrization's multiplier."""
    if key not in groups:
        groups[key] = {"name": f"{kind}{'' if decay else '_no_decay'}_x{mult:g}", "kind": kind,
                       "parametrization": parametrization, "params": [], "param_names": [], "lr": lr * mult,
                       "lr_mult": mult, "weight_decay": weight_decay if decay else 0.0}
    return groups[key]


class StandardParametrization:
    """GPT-2 as published: N(0, 0.02) init, 1/sqrt(d_head) attention, one learning rate for all."""

    name = "sp"

    def __init__(self, **options: Any) -> None:
        # SP has no options. µP's are accepted and ignored, so that one sweep can run parametrization=sp,mup with
        # shared overrides (parametrization.base_width=64); anything else is a typo and refused.
        unknown = sorted(set(options) - set(inspect.signature(MaximalUpdateParametrization).parameters))
        if unknown:
            raise ValueError(f"parametrization.{unknown[0]}: not an option of parametrization={self.name} (SP has "
                             f"none; it ignores µP's, so that sp,mup sweeps can share overrides)")

    @staticmethod
    def options_for_widths(options: dict, widths: list[int]) -> dict:
        """The options for a run over several widths (the coordinate check): SP has none that depend on width."""
        return dict(options)

    def build_model(self, config: GPTConfig) -> GPT:
        return record_shapes(GPT(config))

    def param_groups(self, model: GPT, lr: float, weight_decay: float, family: str = "adam") -> list[dict]:
        """One learning rate for all; decay only matrices and embeddings (≥2-D), not biases or LayerNorm gains.
        One group per kind, so optimizers that treat kinds differently (Muon) can tell them apart."""
        groups: dict[tuple, dict] = {}
        for name, p, ndim in _named_unique_parameters(model):
            kind, decay = param_kind(name, ndim), ndim >= 2
            group = _group(groups, (kind, decay), kind=kind, decay=decay, lr=lr, mult=1.0,
                           weight_decay=weight_decay, parametrization=self.name)
            group["params"].append(p)
            group["param_names"].append(name)
        return list(groups.values())


# Wrappers that insert themselves into parameter names: FSDP's units, checkpoint wrappers, torch.compile.
_WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def record_shapes(model: GPT) -> GPT:
    """Keep each parameter's shape, by name, on the model. Under FSDP the optimizer is built after sharding,
    when parameters are flat 1-D pieces of their matrices: grouping then reads these shapes instead."""
    model.param_shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    return model


def _named_unique_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter, int]]:
    """(name, parameter, its number of dimensions) for each trainable parameter once (the tied head shares
    the embedding). Names are the model's own, without wrapper segments; dimensions are as built."""
    shapes = getattr(model, "param_shapes", {})
    seen: set[int] = set()
    out = []
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            for segment in _WRAPPER_SEGMENTS:
                name = name.replace(segment, "")
            out.append((name, p, len(shapes[name]) if name in shapes else p.dim()))
    return out


# ---------------------------------------------------------------------------------------------- µP
# µP's learning-rate rules by optimizer family (Tensor Programs V, table 3 and appendix B); each optimizer in
# mugpt.optim declares its family. "adam": entrywise-normalised steps, hidden matrices lr/m, the rest lr.
# "sgd": mup's MuSGD rules. "muon": orthogonalised hidden steps, no 1/m (see lr_multiplier).
MUP_FAMILIES = ("adam", "sgd", "muon")


class _CachedWidthMult:
    """mup's readouts read `weight.infshape` on every forward. `copy.deepcopy`, FSDP's flat parameters and
    torch.compile lose or trip on that attribute (mup #59, #60), so the multiplier is cached as a float."""

    cached_width_mult: float | None = None

    def width_mult(self) -> float:
        if self.cached_width_mult is None:
            self.cached_width_mult = float(super().width_mult())
        return self.cached_width_mult

    def input_scale(self) -> float:
        """The factor mup's forward puts on the readout's input (output_mult / m): what a fused loss kernel,
        which takes the weight and the input rather than the module, must apply itself."""
        return self.output_mult / self.width_mult()


class Readout(_CachedWidthMult, MuReadout):
    """Untied µP readout: logits = output_mult / m · W h."""


class SharedReadout(_CachedWidthMult, MuSharedReadout):
    """µP readout tied to the token embedding."""


class MaximalUpdateParametrization:
    """µP through Microsoft's `mup` package, with its known gaps closed here.

    base_width: the width at which µP and SP coincide (the donor's width in a µTransfer experiment).
    attn_alpha: attention logits are scaled by attn_alpha / d_head; None picks sqrt(base d_head), so that at
        base width the scale equals SP's 1/sqrt(d_head) and the two parametrizations compute the same function.
    input_mult, output_mult: forward multipliers on the embedding output and on the logits (tunable).
    readout_zero_init: zero the untied readout (mup's suggestion); the tied readout is the embedding.
    query_zero_init: zero the query projection, so attention starts uniform at every width.
    embedding_lr_mult: a factor on the learning rate of the token and position tables (and of the readout
        tied to the token table), tuned on the donor like the global learning rate; µP keeps it at every width.
    """

    name = "mup"

    def __init__(self, base_width: int = 256, attn_alpha: float | None = None, input_mult: float = 1.0,
                 output_mult: float = 1.0, readout_zero_init: bool = False, query_zero_init: bool = False,
                 embedding_lr_mult: float = 1.0) -> None:
        if not isinstance(base_width, int) or base_width <= 0:
            raise ValueError(f"parametrization.base_width must be a positive integer, got {base_width!r}")
        for key, value in (("input_mult", input_mult), ("output_mult", output_mult),
                           ("embedding_lr_mult", embedding_lr_mult)):
            if value <= 0:
                raise ValueError(f"parametrization.{key} must be positive, got {value}")
        self.base_width = base_width
        self.attn_alpha = attn_alpha
        self.input_mult = input_mult
        self.output_mult = output_mult
        self.readout_zero_init = readout_zero_init
        self.query_zero_init = query_zero_init
        self.embedding_lr_mult = embedding_lr_mult

    # ---------------------------------------------------------------- build
    def _with_multipliers(self, config: GPTConfig, width: int) -> GPTConfig:
        if width % config.n_head:
            raise ValueError(f"parametrization.base_width: width {width} is not divisible by "
                             f"model.n_head={config.n_head}")
        alpha = self.attn_alpha if self.attn_alpha is not None else math.sqrt(self.base_width // config.n_head)
        return replace(config, width=width, attn_scale=alpha / (width // config.n_head), embed_mult=self.input_mult)

    def _assemble(self, config: GPTConfig) -> GPT:
        model = GPT(config, init=False)
        # SP's constructor would draw its init from here: µP draws its own from the same point (build_model)
        self._init_rng = torch.random.get_rng_state()
        if config.tie_embeddings:
            model.lm_head = SharedReadout(model.tok_emb.weight, bias=False, output_mult=self.output_mult)
        else:
            model.lm_head = Readout(config.width, config.padded_vocab_size, bias=False,
                                    output_mult=self.output_mult, readout_zero_init=self.readout_zero_init)
        return model

    def build_model(self, config: GPTConfig) -> GPT:
        if config.width % config.n_head:
            raise ValueError(f"model.width={config.width} is not divisible by model.n_head={config.n_head}")
        model = self._assemble(self._with_multipliers(config, config.width))
        rng = self._init_rng
        # Base and delta differ in every width dimension (d_model, MLP width, head size); built on the meta
        # device, they cost no memory. Shapes are set before any torch.compile.
        with torch.device("meta"):
            base = self._assemble(self._with_multipliers(config, self.base_width))
            delta = self._assemble(self._with_multipliers(config, 2 * self.base_width))
        set_base_shapes(model, base, delta=delta, rescale_params=False)
        # Kept on the module as a plain dict too: tensor attributes like p.infshape survive neither deepcopy nor
        # FSDP's flattening, and the learning-rate rule needs them after both.
        model.infshapes = {name: p.infshape for name, p in model.named_parameters()}
        model.lm_head.width_mult()  # cache the readout's multiplier while infshape is there
        torch.random.set_rng_state(rng)  # the random numbers SP would draw: at m = 1 the same model
        self.init_weights(model)
        return record_shapes(model)

    @torch.no_grad()
    def init_weights(self, model: GPT) -> None:
        """µP init: GPT-2's init drawn through mup.init, which reads each weight's infshape: hidden matrices
        N(0, σ²/m) (σ at base width = GPT-2's, 1/sqrt(2·n_layer) on residual projections kept), embeddings,
        readout and vectors width-independent. The random numbers are drawn in SP's order, so at m = 1 the
        µP model is SP's, weight for weight, and a donor tuned at the base width is an SP model."""
        model.init_weights(normal_=mup_init.normal_)
        if self.readout_zero_init and not model.config.tie_embeddings:
            nn.init.zeros_(model.lm_head.weight)
        if self.query_zero_init:
            c = model.config
            for block in model.blocks:
                block.attn.qkv.weight[: c.width].zero_()
                if block.attn.qkv.bias is not None:
                    block.attn.qkv.bias[: c.width].zero_()

    # --------------------------------------------------------- learning rates
    @staticmethod
    def lr_multiplier(shape: InfShape, family: str) -> float:
        """The µP factor on the base learning rate of a parameter of this shape, for an optimizer family."""
        if family == "muon":
            # Hidden matrices go to Muon, whose orthogonalised step already has a width-independent spectral
            # norm (µP's spectral condition): no 1/m on top. The rest goes to AdamW: Adam's rule, 1 for those.
            return 1.0
        if family == "adam":
            return 1.0 / shape.width_mult() if shape.ninf() == 2 else 1.0
        if family == "sgd":
            if shape.ninf() == 2:
                return 1.0 / shape.fanin_fanout_mult_ratio()
            return float(shape.width_mult()) if shape.ninf() == 1 else 1.0
        raise ValueError(f"parametrization=mup has no learning-rate rule for the optimizer family '{family}' "
                         f"(known: {', '.join(MUP_FAMILIES)}); declare the optimizer's family in mugpt.optim")

    @staticmethod
    def options_for_widths(options: dict, widths: list[int]) -> dict:
        """The options for a run over several widths (the coordinate check): base_width null = the narrowest."""
        options = dict(options)
        if options.get("base_width") is None:
            options["base_width"] = min(widths)
        return options

    def param_groups(self, model: GPT, lr: float, weight_decay: float, family: str = "adam") -> list[dict]:
        """One group per (kind, µP multiplier, decay or not). Weight decay is scaled inversely to the learning
        rate, so each step shrinks a weight by the same fraction lr·wd at every width: the donor's decay
        transfers."""
        groups: dict[tuple, dict] = {}
        for name, p, ndim in _named_unique_parameters(model):
            kind, decay = param_kind(name, ndim), ndim >= 2
            mult = self.lr_multiplier(model.infshapes[name], family)
            if kind == "embedding":
                mult *= self.embedding_lr_mult
            group = _group(groups, (kind, mult, decay), kind=kind, decay=decay, lr=lr, mult=mult,
                           weight_decay=weight_decay / mult, parametrization=self.name)
            group["params"].append(p)
            group["param_names"].append(name)
        return list(groups.values())


PARAMETRIZATIONS = {"sp": StandardParametrization, "mup": MaximalUpdateParametrization}


def get_parametrization(cfg: Any) -> StandardParametrization | MaximalUpdateParametrization:
    """Build the parametrization named by cfg['name'] with the rest of cfg as options."""
    options = dict(cfg)
    cls = parametrization_class(options.pop("name"))
    signature = inspect.signature(cls).parameters
    known = {k for k, v in signature.items() if v.kind is not inspect.Parameter.VAR_KEYWORD}
    unknown = sorted(set(options) - known)
    if unknown and len(known) == len(signature):  # a class taking **options checks them itself
        raise ValueError(f"parametrization.{unknown[0]}: not an option of parametrization={cls.name} "
                         f"(its options: {', '.join(sorted(known))})")
    return cls(**options)


def parametrization_class(name: str) -> type:
    """The parametrization class named `name`, or a one-line error listing the known ones."""
    try:
        return PARAMETRIZATIONS[name]
    except KeyError:
        raise ValueError(f"parametrization: unknown option '{name}' "
                         f"(choose one of {', '.join(PARAMETRIZATIONS)})") from None
