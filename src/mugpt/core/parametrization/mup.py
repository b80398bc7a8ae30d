"""Maximal Update Parametrization (µP) through Microsoft's `mup` package, in width and (CompleteP) in depth."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
import torch.nn as nn
from mup import MuReadout, MuSharedReadout, set_base_shapes
from mup import init as mup_init
from mup.infshape import InfShape

from mugpt.core.model import GPT, GPTConfig
from mugpt.core.parametrization.base import (
    KINDS,
    Parametrization,
    _group,
    _named_unique_parameters,
    param_kind,
    record_shapes,
)

# µP's learning-rate rules by optimizer family (Tensor Programs V, table 3 and appendix B); each optimizer in
# mugpt.core.optim declares its family. "adam": entrywise-normalised steps, hidden matrices lr/m, the rest lr.
# "sgd": mup's MuSGD rules. "muon": orthogonalised hidden steps, no 1/m (see lr_multiplier).
MUP_FAMILIES = ("adam", "sgd", "muon")
# Families with a depth rule (CompleteP's Table 1 is derived for Adam; Muon's orthogonalised hidden step has the
# same size-η entrywise-normalised argument). SGD's depth rule is not implemented: depth_alpha > 0 is refused.
DEPTH_FAMILIES = ("adam", "muon")
# The options under which µP at its base width is GPT-2's SP weight for weight (GPT-2's init, mup's output
# multiplier 1), in place of the measured defaults: {"name": "mup", "base_width": B, **GPT2_INIT}.
GPT2_INIT = {"hidden_init_scale": None, "embedding_init_std": None, "output_mult": 1.0}
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
    title = "µP (maximal update parametrization)"
    label = "µP"
    sweep_offsets = range(-2, 3)
    follows_mup_family_rules = True

    # µP's defaults, measured at base widths 64 to 256 with byte and GPT-2 BPE tokens (README, "µP's defaults
    # that win"), in place of GPT-2's init 0.02 and mup's output multiplier 1 (GPT2_INIT below). This signature is
    # their one home: conf/parametrization/mup.yaml composes its keys from it (mugpt.config).
    def __init__(self, base_width: int = 256, attn_alpha: float | None = None, input_mult: float = 1.0,
                 output_mult: float | None = None, readout_zero_init: bool = False, query_zero_init: bool = False,
                 embedding_lr_mult: float = 1.0, depth_alpha: float = 0.0, base_depth: int | None = None,
                 scale_eps: bool = True, hidden_init_scale: float | None = 0.5,
                 embedding_init_std: float | None = 0.08, output_alpha: float | None = 128.0) -> None:
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

