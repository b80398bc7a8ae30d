"""Standard parametrization (SP), Maximal Update Parametrization (µP) and unit-scaled µP (u-µP), in one place.

A parametrization decides three things about a GPT of a given width:
  1. how it is built and initialised (µP: base shapes, `mup.init`, a width-aware readout),
  2. its forward multipliers (µP: attention scale α/d_head, input and output multipliers),
  3. the per-group learning rates and weight decay handed to the optimizer.
Everything else in the project is parametrization-agnostic and asks this module.

The boundary with the optimizers: every parameter group carries a `kind` (hidden, embedding, vector, readout)
and the name of the parametrization that made it; optimizers read those and nothing else (no `p.infshape`, no
parameter names). The learning-rate rule for an optimizer is chosen by its µP *family* ("adam", "sgd",
"muon"), which each optimizer declares next to its factory in `mugpt.core.optim`.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn as nn
from mup import MuReadout, MuSharedReadout, set_base_shapes
from mup import init as mup_init
from mup.infshape import InfShape

from mugpt.core.model import GPT, GPTConfig

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


class Parametrization:
    """What every parametrization answers besides building and grouping: by default no option depends on the
    widths or depths of a sweep (the coordinate check), and every optimizer family is accepted."""

    @staticmethod
    def options_for_widths(options: dict, widths: list[int]) -> dict:
        """The options for a run over several widths (the coordinate check)."""
        return dict(options)

    @staticmethod
    def options_for_depths(options: dict, depths: list[int]) -> dict:
        """The options for a run over several depths (the depth coordinate check)."""
        return dict(options)

    @staticmethod
    def check_family(family: str) -> None:
        """Refuse an optimizer family this parametrization has no rule for (none here)."""

    def promises(self, family: str) -> dict[str, dict[str, float]]:
        """How the built model and its first steps must scale, as exponents per axis ("width", "depth"), under an
        optimizer of this µP family: what the doctor measures a model against. Keys: init.KIND (RMS of the weights
        as built), mult.hidden / mult.readout / mult.embedding (forward multipliers), attn_scale (attention logits
        per q·k), branch (residual branch multiplier), lr.KIND, eps.KIND (Adam's ε), lr_wd.KIND (decoupled decay's
        lr·wd), update.KIND (a step's ΔW·x), activation.hidden, logits_change, stream_change. None here: a
        parametrization without rules (SP) promises nothing."""
        return {}


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
# mugpt.core.optim declares its family. "adam": entrywise-normalised steps, hidden matrices lr/m, the rest lr.
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


class MaximalUpdateParametrization(Parametrization):
    """µP through Microsoft's `mup` package, with its known gaps closed here.

    base_width: the width at which µP and SP coincide (the donor's width in a µTransfer experiment).
    attn_alpha: attention logits are scaled by attn_alpha / d_head; None picks sqrt(base d_head), so that at
        base width the scale equals SP's 1/sqrt(d_head) and the two parametrizations compute the same function.
    input_mult, output_mult: forward multipliers on the embedding output and on the logits (tunable); the logits
        are output_mult / m · W h.
    output_alpha: the output multiplier in Tensor Programs V's width-explicit form, logits = output_alpha / width
        · W h, i.e. output_mult = output_alpha / base_width; used when output_mult is None. A tied readout's logit
        for the input token itself starts at about output_alpha · embedding std (W h then sums width aligned
        products): fixed output_alpha keeps that the same whatever the base width, a fixed output_mult does not.
    readout_zero_init: zero the untied readout (mup's suggestion); the tied readout is the embedding.
    query_zero_init: zero the query projection, so attention starts uniform at every width.
    embedding_lr_mult: a factor on the learning rate of the token and position tables (and of the readout
        tied to the token table), tuned on the donor like the global learning rate; µP keeps it at every width.
    depth_alpha: the depth exponent α. 0: width-only µP (GPT-2's 1/sqrt(2L) init, no branch multiplier);
        0.5: depth-µP (Tensor Programs VI; Bordelon et al. 2024); 1: CompleteP (Dey et al. 2025).
    base_depth: the depth at which the depth rules are the identity (the donor's n_layer); required when α > 0.
    scale_eps: scale Adam-like optimizers' ε with width and depth as the gradients scale (CompleteP, Eq. 40).
        At base width and base depth it changes nothing.
    hidden_init_scale: c in the hidden matrices' init std c/sqrt(base_width) at the base width, which µP's init
        turns into c/sqrt(width) at any width: the init is set relative to the donor's width instead of GPT-2's
        absolute 0.02 (chosen at width 768). None: model.init_std (or model.hidden_init_std) as given.
    embedding_init_std: the init std of the token and position tables (with them the tied readout, or the untied
        readout's), width-independent as µP's input weights are. None: model.init_std.
    """

    name = "mup"

    def __init__(self, base_width: int = 256, attn_alpha: float | None = None, input_mult: float = 1.0,
                 output_mult: float | None = 1.0, readout_zero_init: bool = False, query_zero_init: bool = False,
                 embedding_lr_mult: float = 1.0, depth_alpha: float = 0.0, base_depth: int | None = None,
                 scale_eps: bool = True, hidden_init_scale: float | None = None,
                 embedding_init_std: float | None = None, output_alpha: float | None = None) -> None:
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
        if output_mult is None:
            if output_alpha is None:
                raise ValueError("parametrization.output_mult and output_alpha are both null: set one (output_mult = "
                                 "output_alpha / base_width)")
            if output_alpha <= 0:
                raise ValueError(f"parametrization.output_alpha must be positive, got {output_alpha}")
            output_mult = output_alpha / base_width
        for key, value in (("input_mult", input_mult), ("output_mult", output_mult),
                           ("embedding_lr_mult", embedding_lr_mult)):
            if value <= 0:
                raise ValueError(f"parametrization.{key} must be positive, got {value}")
        for key, value in (("hidden_init_scale", hidden_init_scale), ("embedding_init_std", embedding_init_std)):
            if value is not None and (not isinstance(value, (int, float)) or value < 0):
                raise ValueError(f"parametrization.{key} must be a non-negative number or null (model.init_std as "
                                 f"given), got {value!r}")
        self.embedding_init_std = embedding_init_std
        self.base_width = base_width
        self.hidden_init_scale = hidden_init_scale
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

    def check_run(self, model: GPTConfig, cfg: Any) -> None:
        """µP runs every model and training option the project has (the optimizers refuse their own misfits). With
        its own init set for both the tables and the hidden matrices, a model.init_std other than GPT-2's would
        reach no weight: refused rather than ignored, as is a second hidden init (model.hidden_init_std)."""
        if self.hidden_init_scale is not None and model.hidden_init_std is not None:
            self.base_init_std(model)  # raises: the two would set the same weights
        if (self.hidden_init_scale is not None and self.embedding_init_std is not None
                and model.init_std != GPTConfig.init_std):
            raise ValueError(f"model.init_std={model.init_std:g} reaches no weight under parametrization=mup's init "
                             f"(hidden_init_scale={self.hidden_init_scale:g}, embedding_init_std="
                             f"{self.embedding_init_std:g}): set those, or null them to use model.init_std")

    # ---------------------------------------------------------------- build
    def _with_multipliers(self, config: GPTConfig, width: int) -> GPTConfig:
        if width % config.n_head:
            raise ValueError(f"parametrization.base_width: width {width} is not divisible by "
                             f"model.n_head={config.n_head}")
        alpha = self.attn_alpha if self.attn_alpha is not None else math.sqrt(self.base_width // config.n_head)
        changes = dict(branch_mult=self.branch_mult(config.n_layer),
                       init_depth=self.base_depth if self.depth_alpha > 0 else None)  # Table 1: init at base depth
        if self.hidden_init_scale is not None:  # the std at base width; mup.init divides it by sqrt(m) at width
            changes["hidden_init_std"] = self.base_init_std(config)
        if self.embedding_init_std is not None:
            changes["init_std"] = self.embedding_init_std
            if self.hidden_init_scale is None and config.hidden_init_std is None:
                changes["hidden_init_std"] = config.init_std  # the hidden matrices keep model.init_std
        return replace(config, width=width, attn_scale=alpha / (width // config.n_head), embed_mult=self.input_mult,
                       **changes)

    def base_init_std(self, config: GPTConfig) -> float:
        """The hidden matrices' init std at the base width: c/sqrt(base_width). Set together with
        model.hidden_init_std, one would silently override the other: refused."""
        if config.hidden_init_std is not None:
            raise ValueError(f"model.hidden_init_std={config.hidden_init_std:g} and parametrization.hidden_init_scale="
                             f"{self.hidden_init_scale:g} both set the hidden init: set hidden_init_scale=null to "
                             f"give an absolute std")
        return self.hidden_init_scale / math.sqrt(self.base_width)

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
                         f"(known: {', '.join(MUP_FAMILIES)}); declare the optimizer's family in mugpt.core.optim")

    def promises(self, family: str) -> dict[str, dict[str, float]]:
        """µP's rules as exponents (see Parametrization.promises). Width, Tensor Programs V's Table 3 (the µP with
        a 1/fan_in output multiplier that mup implements): hidden init variance 1/fan_in (RMS width^-1/2), the rest
        width-independent; logits = output_mult/m · W h; attention α/d_head (d_head ∝ width at fixed heads). The
        learning rates are lr_multiplier's, by family: adam, hidden 1/m and the rest 1 (Table 3's Adam column);
        sgd, Table 3's SGD column as mup's MuSGD applies it, hidden by the fan_in/fan_out multiplier ratio (1 here:
        both dimensions of every hidden matrix grow with width) and every parameter with one width dimension
        (tables, biases, gains, an untied readout) ×m; muon, hidden 1 (the orthogonalised step's spectral norm is
        already width-independent: no 1/m on top) and the AdamW part 1. Adam's ε ×1/m when scale_eps (Adam-like
        groups only: Muon's ε is Newton-Schulz's); decoupled decay keeps lr·wd fixed (weight_decay / lr_mult). So
        every layer's ΔW·x, the hidden activations and the logits' change are Θ(1). Depth, for α > 0 (CompleteP,
        Dey et al. 2025, Table 1 and Eq. 40; parameters inside the blocks): branches ×L^-α, learning rates
        ×L^(α-1) (so ΔW·x of a block's layers too), ε ×L^-α, init held at base depth; the stream's and the
        logits' change Θ(1)."""
        if family not in MUP_FAMILIES:
            raise ValueError(f"parametrization=mup has no rules for the optimizer family '{family}' "
                             f"(known: {', '.join(MUP_FAMILIES)})")
        self.check_family(family)
        lr = {"adam": {"hidden": -1.0}, "sgd": {"embedding": 1.0, "vector": 1.0, "readout": 1.0}}.get(family, {})
        eps_kinds = {"adam": KINDS, "sgd": (), "muon": ("embedding", "vector", "readout")}[family]
        width = {"init.hidden": -0.5, "init.embedding": 0.0, "init.vector": 0.0, "init.readout": 0.0,
                 "mult.hidden": 0.0, "mult.readout": -1.0, "mult.embedding": 0.0, "attn_scale": -1.0, "branch": 0.0,
                 **{f"lr.{k}": lr.get(k, 0.0) for k in KINDS}, **{f"lr_wd.{k}": 0.0 for k in KINDS},
                 **{f"eps.{k}": -1.0 if self.scale_eps else 0.0 for k in eps_kinds},
                 **{f"update.{k}": 0.0 for k in KINDS}, "activation.hidden": 0.0, "stream_change": 0.0,
                 "logits_change": 0.0}
        if self.depth_alpha == 0:
            return {"width": width}
        a = self.depth_alpha
        depth = {**{f"init.{k}": 0.0 for k in KINDS}, "mult.hidden": 0.0, "mult.readout": 0.0, "mult.embedding": 0.0,
                 "attn_scale": 0.0, "branch": -a, "lr.hidden": a - 1, "lr.vector": a - 1, "lr.embedding": 0.0,
                 "lr.readout": 0.0, **{f"lr_wd.{k}": 0.0 for k in KINDS},
                 **{f"eps.{k}": (-a if k in ("hidden", "vector") else 0.0) if self.scale_eps else 0.0
                    for k in eps_kinds},
                 "update.hidden": a - 1, "update.vector": a - 1, "update.embedding": 0.0, "update.readout": 0.0,
                 "activation.hidden": 0.0, "stream_change": 0.0, "logits_change": 0.0}
        return {"width": width, "depth": depth}

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
            group["mup_family"] = family  # whose rule set lr_mult (Muon's options check it)
            group["params"].append(p)
            group["param_names"].append(name)
        return list(groups.values())


# -------------------------------------------------------------------------------------------- u-µP
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

    Refused (check_model, check_run): tied embeddings, post-norm, loss_impl=fused, SP/µP's model multipliers, fp8,
    and torch.compile together with activation checkpointing; model.init_std is ignored (u-µP draws unit-variance
    weights). torch.compile, loss_impl=chunked, activation checkpointing, DDP and FSDP (the unit-scaled blocks as
    its units) run.
    """

    name = "umup"

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
        """Refuse, in one line, a model option that the unit-scaled GPT cannot build faithfully."""
        if config.tie_embeddings:
            raise ValueError("parametrization=umup: model.tie_embeddings=true is not supported: unit scaling gives "
                             "the token table and the readout different backward scales and u-µP different "
                             "learning-rate rules (lr/sqrt(width) and lr), which one shared matrix cannot follow; "
                             "set model.tie_embeddings=false")
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
        self.check_model(model)
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


PARAMETRIZATIONS = {"sp": StandardParametrization, "mup": MaximalUpdateParametrization,
                    "umup": UnitScaledParametrization}


def get_parametrization(cfg: Any) -> StandardParametrization | MaximalUpdateParametrization | UnitScaledParametrization:
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
