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
        groups[key] = {"name": f"{kind}{'' if decay else '_no_decay'}_x{mult:g}", "kind": kind, "decay": decay,
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

    @staticmethod
    def options_for_depths(options: dict, depths: list[int]) -> dict:
        """The options for a run over several depths: SP has none that depend on depth."""
        return dict(options)

    @staticmethod
    def check_family(family: str) -> None:
        """Every optimizer family runs under SP (one learning rate for all)."""

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
# Families with a depth rule (CompleteP's Table 1 is derived for Adam; Muon's orthogonalised hidden step has the
# same size-η entrywise-normalised argument). SGD's depth rule is not implemented: depth_alpha > 0 is refused.
DEPTH_FAMILIES = ("adam", "muon")
BLOCKS = "blocks."  # parameters inside the residual blocks (the depth rules apply to them)


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
    depth_alpha: the depth exponent α. 0: width-only µP (GPT-2's 1/sqrt(2L) init, no branch multiplier);
        0.5: depth-µP (Tensor Programs VI; Bordelon et al. 2024); 1: CompleteP (Dey et al. 2025).
    base_depth: the depth at which the depth rules are the identity (the donor's n_layer); required when α > 0.
    scale_eps: scale Adam-like optimizers' ε with width and depth as the gradients scale (CompleteP, Eq. 40).
        At base width and base depth it changes nothing.
    """

    name = "mup"

    def __init__(self, base_width: int = 256, attn_alpha: float | None = None, input_mult: float = 1.0,
                 output_mult: float = 1.0, readout_zero_init: bool = False, query_zero_init: bool = False,
                 embedding_lr_mult: float = 1.0, depth_alpha: float = 0.0, base_depth: int | None = None,
                 scale_eps: bool = True) -> None:
        if not isinstance(base_width, int) or base_width <= 0:
            raise ValueError(f"parametrization.base_width must be a positive integer, got {base_width!r}")
        if not isinstance(depth_alpha, (int, float)) or not 0.0 <= depth_alpha <= 1.0:
            raise ValueError(f"parametrization.depth_alpha must be in [0, 1] (0: width-only µP, 0.5: depth-µP, "
                             f"1: CompleteP), got {depth_alpha!r}")
        if base_depth is not None and (not isinstance(base_depth, int) or base_depth <= 0):
            raise ValueError(f"parametrization.base_depth must be a positive integer (the donor's model.n_layer), "
                             f"got {base_depth!r}")
        if depth_alpha > 0 and base_depth is None:
            raise ValueError(f"parametrization.depth_alpha={depth_alpha:g} needs parametrization.base_depth (the "
                             f"donor's model.n_layer, where the depth rules are the identity)")
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
        self.depth_alpha = float(depth_alpha)
        self.base_depth = base_depth
        self.scale_eps = bool(scale_eps)

    # ---------------------------------------------------------------- depth
    # Depth rules of CompleteP (Dey et al. 2025, "Don't be lazy", Table 1 and Eq. 40), with the depth multiplier
    # m_L = L / base_depth. At m_L = 1, and always at α = 0, each factor below is 1: width-only µP.
    def depth_mult(self, n_layer: int) -> float:
        return n_layer / self.base_depth if self.base_depth else 1.0

    def branch_mult(self, n_layer: int) -> float:
        """Table 1, residual branch multiplier: every block's attention and MLP output is scaled by m_L^-α."""
        return self.depth_mult(n_layer) ** -self.depth_alpha

    def block_lr_factor(self, n_layer: int) -> float:
        """Table 1, learning rate of every parameter inside a block (hidden matrices, their biases, the block
        LayerNorms) under an entrywise-normalised optimizer: η · m_L^(α-1). Each block's update moves the output
        by m_L^-α · η · m_L^(α-1) = η / m_L: the L blocks together move it by O(1) at every depth."""
        if self.depth_alpha == 0:  # α = 0 is width-only µP: no depth rule at all, whatever base_depth says
            return 1.0
        return self.depth_mult(n_layer) ** (self.depth_alpha - 1.0)

    def eps_mult(self, in_block: bool, width: int, n_layer: int) -> float:
        """Eq. 40, Adam's ε: the gradients of µP's parameters shrink like 1/m_N (the readout's 1/m multiplier is in
        every backward path), and those inside blocks by a further m_L^-α (the branch multiplier); ε scaled the
        same keeps its ratio to √v, so it neither damps wide models' updates nor vanishes against narrow ones'."""
        if not self.scale_eps:
            return 1.0
        factor = self.base_width / width
        return factor * self.depth_mult(n_layer) ** -self.depth_alpha if in_block else factor

    def check_family(self, family: str) -> None:
        """Refuse an optimizer family that has no depth rule here, in one line, before anything is built."""
        if self.depth_alpha > 0 and family not in DEPTH_FAMILIES:
            raise ValueError(f"parametrization.depth_alpha={self.depth_alpha:g}: the '{family}' optimizer family has "
                             f"no depth rule in this project (CompleteP's is for entrywise-normalised and "
                             f"orthogonalised steps: {', '.join(DEPTH_FAMILIES)}); use depth_alpha=0")

    # ---------------------------------------------------------------- build
    def _with_multipliers(self, config: GPTConfig, width: int) -> GPTConfig:
        if width % config.n_head:
            raise ValueError(f"parametrization.base_width: width {width} is not divisible by "
                             f"model.n_head={config.n_head}")
        alpha = self.attn_alpha if self.attn_alpha is not None else math.sqrt(self.base_width // config.n_head)
        depth = dict(branch_mult=self.branch_mult(config.n_layer),
                     init_depth=self.base_depth if self.depth_alpha > 0 else None)  # Table 1: init at base depth
        return replace(config, width=width, attn_scale=alpha / (width // config.n_head), embed_mult=self.input_mult,
                       **depth)

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
        µP model is SP's, weight for weight, and a donor tuned at the base width is an SP model. With α > 0 the
        residual projections' 1/sqrt(2L) is taken at the base depth (model.init_depth)."""
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

    @staticmethod
    def options_for_depths(options: dict, depths: list[int]) -> dict:
        """The options for a run over several depths (the depth coordinate check): base_depth null = the
        shallowest."""
        options = dict(options)
        if options.get("base_depth") is None:
            options["base_depth"] = min(depths)
        return options

    def param_groups(self, model: GPT, lr: float, weight_decay: float, family: str = "adam") -> list[dict]:
        """One group per (kind, µP multiplier, decay or not, ε multiplier). Weight decay is scaled inversely to the
        learning rate, so each step shrinks a weight by the same fraction lr·wd at every width and depth: the
        donor's decay transfers. Groups carry `eps_mult` (the factor on an Adam-like optimizer's ε)."""
        self.check_family(family)
        config = model.config
        block_factor = self.block_lr_factor(config.n_layer)
        groups: dict[tuple, dict] = {}
        for name, p, ndim in _named_unique_parameters(model):
            kind, decay, in_block = param_kind(name, ndim), ndim >= 2, name.startswith(BLOCKS)
            mult = self.lr_multiplier(model.infshapes[name], family)
            if kind == "embedding":
                mult *= self.embedding_lr_mult
            if in_block:
                mult *= block_factor
            eps_mult = self.eps_mult(in_block, config.width, config.n_layer)
            group = _group(groups, (kind, mult, decay, eps_mult), kind=kind, decay=decay, lr=lr, mult=mult,
                           weight_decay=weight_decay / mult, parametrization=self.name)
            group["eps_mult"] = eps_mult
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
