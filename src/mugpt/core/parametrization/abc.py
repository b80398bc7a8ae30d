"""The abc-family of parametrizations (Tensor Programs V; Everett et al. 2024, arXiv 2407.05872) as options.

Each parameter kind k (embedding, hidden, vector, readout) gets, relative to the base width n0 (r = width / n0):

    init std        = init_const_k · r^(-init_exp_k)   (hidden: GPT-2's 1/sqrt(2·n_layer) kept on residual writes)
    forward mult    = mult_const_k · r^(-mult_exp_k)   (embedding: on the tables' output; hidden: on every block
                                                        matrix's input; readout: on the logits' input)
    learning rate   = lr · lr_const_k · r^(-lr_exp_k)
    Adam's ε        = eps · r^(-eps_exp_k)

and the attention logits are scaled by attention.const · sqrt(d0)/d · r^(1 - attention.exp) (d the head size,
d0 its value at n0): exp 0.5 is 1/sqrt(d), exp 1 is µP's sqrt(d0)/d. Biases and LayerNorm gains (vector) start
at 0 and 1 and carry no multiplier: their table holds only the lr and ε columns.

Named presets fill the table; per-kind overrides change single entries. The sp and mup presets are this project's
SP and µP (under Adam-family optimizers: same weights from the same seed, same groups, learning rates, weight
decay and ε at every width; tests/test_abc.py). ntk and mf are Everett et al.'s Table 1 (Adam, full alignment)
written relative to n0 with GPT-2's constants at n0, so at the base width every preset but mup is GPT-2's SP.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import replace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mugpt.core.model import GPT, GPTConfig
from mugpt.core.parametrization.base import (
    KINDS,
    Parametrization,
    _group,
    _named_unique_parameters,
    param_kind,
    record_shapes,
)
from mugpt.core.parametrization.mup import MaximalUpdateParametrization

ENTRIES = ("init_exp", "init_const", "mult_exp", "mult_const", "lr_exp", "lr_const", "eps_exp")
ATTENTION_ENTRIES = ("exp", "const")
# Entries that mean nothing for biases and gains (they start at 0 and 1 and have no multiplier knob).
VECTOR_FIXED = ("init_exp", "init_const", "mult_exp", "mult_const")



def mup_default(option: str) -> Any:
    """µP's measured default for `option`, read from MaximalUpdateParametrization's signature (their one home):
    hidden std hidden_init_scale/sqrt(n0), tables embedding_init_std, logits output_alpha/width · W h."""
    return inspect.signature(MaximalUpdateParametrization).parameters[option].default


def _sp() -> dict:
    # init_const None: model.init_std (model.hidden_init_std for hidden), GPT-2's 0.02
    row = {"init_exp": 0.0, "init_const": None, "mult_exp": 0.0, "mult_const": 1.0, "lr_exp": 0.0, "lr_const": 1.0,
           "eps_exp": 0.0}
    return {"embedding": dict(row), "hidden": dict(row), "vector": dict(row), "readout": dict(row),
            "attention": {"exp": 0.5, "const": 1.0}}


def preset_table(preset: str, base_width: int) -> dict[str, dict]:
    """The exponents and constants of a named preset at base width `base_width`."""
    table = _sp()
    if preset == "sp":
        return table
    if preset == "mup":  # mup's Adam rule with this project's init, output multiplier and ε
        embedding_std = mup_default("embedding_init_std")
        table["hidden"].update(init_exp=0.5, init_const=mup_default("hidden_init_scale") / math.sqrt(base_width),
                               lr_exp=1.0)
        table["embedding"].update(init_const=embedding_std)
        table["readout"].update(init_const=embedding_std, mult_exp=1.0,
                                mult_const=mup_default("output_alpha") / base_width)
        for kind in KINDS:
            table[kind]["eps_exp"] = 1.0
        table["attention"]["exp"] = 1.0
        return table
    if preset == "ntk":  # Everett et al.'s standard shifted by θ = 1/2 on hidden and readout (Adam: c - θ)
        table["hidden"].update(mult_exp=0.5, lr_exp=0.5)
        table["readout"].update(mult_exp=0.5, lr_exp=0.5)
        return table
    if preset == "mf":  # µP's class: tables ×√r at init r^-1/2, hidden r^-1/2, readout 1/r
        table["embedding"].update(mult_exp=-0.5, init_exp=0.5, lr_exp=0.5)
        table["hidden"].update(mult_exp=0.5, lr_exp=0.5)
        table["readout"].update(mult_exp=1.0)
        table["attention"]["exp"] = 1.0
        return table
    raise ValueError(f"parametrization.preset: unknown preset {preset!r} (choose one of {', '.join(PRESETS)})")


PRESETS = ("sp", "mup", "ntk", "mf")


def width_power(ratio: float, exponent: float) -> float:
    """ratio^exponent, computed as mup computes its factors where they coincide (1, m, 1/m), so that the mup
    preset is µP to the last bit."""
    if exponent == 0:
        return 1.0
    if exponent == 1:
        return ratio
    if exponent == -1:
        return 1.0 / ratio
    return ratio ** exponent


class ScaledReadout(nn.Linear):
    """A readout whose input is multiplied by const / divisor (µP's output_mult / m): the same arithmetic as mup's
    MuReadout, and `input_scale` for the losses that take the weight rather than the module."""

    def __init__(self, in_features: int, out_features: int, const: float, divisor: float) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.const, self.divisor = const, divisor

    def input_scale(self) -> float:
        return self.const / self.divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.const * x / self.divisor, self.weight, self.bias)


class _ScaleInput:
    """A forward pre-hook multiplying a hidden matrix's input by a constant (a class, so a model with it pickles)."""

    def __init__(self, mult: float) -> None:
        self.mult = mult

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (args[0] * self.mult, *args[1:])


class AbcParametrization(Parametrization):
    """The abc-family as options: `preset` (sp, mup, ntk, mf) fills a table of exponents and constants per kind,
    and `embedding`, `hidden`, `vector`, `readout` ({entry: value}) and `attention` ({exp, const}) override single
    entries (module docstring: the rules). base_width: n0, where every exponent is the identity."""

    name = "abc"
    title = "abc-parametrization (per-kind exponents)"
    label = "abc"
    sweep_offsets = range(-3, 3)  # a preset may transfer or not: the grid reaches both ways
    follows_mup_family_rules = True  # its groups can carry per-width learning rates

    def __init__(self, preset: str = "mup", base_width: int = mup_default("base_width"), embedding: dict | None = None,
                 hidden: dict | None = None, vector: dict | None = None, readout: dict | None = None,
                 attention: dict | None = None) -> None:
        if isinstance(base_width, bool) or not isinstance(base_width, int) or base_width <= 0:
            raise ValueError(f"parametrization.base_width must be a positive integer, got {base_width!r}")
        if preset not in PRESETS:
            raise ValueError(f"parametrization.preset: unknown preset {preset!r} (choose one of {', '.join(PRESETS)})")
        self.preset, self.base_width = preset, base_width
        self.table = preset_table(preset, base_width)
        overrides = {"embedding": embedding, "hidden": hidden, "vector": vector, "readout": readout,
                     "attention": attention}
        for kind, given in overrides.items():
            entries = ATTENTION_ENTRIES if kind == "attention" else ENTRIES
            for entry, value in dict(given or {}).items():
                if entry not in entries:
                    raise ValueError(f"parametrization.{kind}.{entry}: not an entry of the abc table (its entries: "
                                     f"{', '.join(entries)})")
                if value is None:  # null in the config: the preset's value
                    continue
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ValueError(f"parametrization.{kind}.{entry} must be a finite number or null (the "
                                     f"preset's), got {value!r}")
                if (entry.endswith("const") or entry == "const") and value <= 0:
                    raise ValueError(f"parametrization.{kind}.{entry} must be positive, got {value!r}")
                if kind == "vector" and entry in VECTOR_FIXED:
                    raise ValueError(f"parametrization.vector.{entry}: biases and LayerNorm gains start at 0 and 1 "
                                     f"and have no multiplier; only lr_exp, lr_const and eps_exp apply to them")
                self.table[kind][entry] = float(value)

    # ----------------------------------------------------------------- rules
    def exponents(self) -> dict[str, dict[str, float]]:
        """The table as built (exponents and constants per kind; init_const None = model.init_std)."""
        return {kind: dict(row) for kind, row in self.table.items()}

    def ratio(self, width: int) -> float:
        return width / self.base_width

    def factor(self, kind: str, column: str, width: int) -> float:
        """const · r^(-exp) for column init (without its constant), mult or lr of `kind` at `width`."""
        row = self.table[kind]
        power = width_power(self.ratio(width), -row[f"{column}_exp"])
        const = 1.0 if column == "init" else row[f"{column}_const"]
        return power if const == 1.0 else const * power

    def lr_mult(self, kind: str, width: int) -> float:
        return self.factor(kind, "lr", width)

    def eps_mult(self, kind: str, width: int) -> float:
        exponent = self.table[kind]["eps_exp"]
        # µP's ε factor is base_width / width: computed the same way
        return self.base_width / width if exponent == 1 else width_power(self.ratio(width), -exponent)

    def attn_scale(self, config: GPTConfig) -> float:
        d, d0 = config.width // config.n_head, self.base_width // config.n_head
        row = self.table["attention"]
        # exp 1/2 (SP) and 1 (µP) are computed as those compute them: 1/sqrt(d) and sqrt(d0)/d
        scale = 1.0 / math.sqrt(d) if row["exp"] == 0.5 else math.sqrt(d0) / d * width_power(
            self.ratio(config.width), 1.0 - row["exp"])
        return scale if row["const"] == 1.0 else row["const"] * scale

    @staticmethod
    def options_for_widths(options: dict, widths: list[int]) -> dict:
        """The options for a run over several widths (the coordinate check): base_width null = the narrowest."""
        options = dict(options)
        if options.get("base_width") is None:
            options["base_width"] = min(widths)
        return options

    def check_family(self, family: str) -> None:
        """The presets' learning-rate exponents are Adam's (entrywise-normalised steps); other optimizer families
        scale differently, so a table with any lr exponent is refused for them."""
        if family != "adam" and any(self.table[k]["lr_exp"] for k in KINDS):
            raise ValueError(f"parametrization=abc preset={self.preset}: its learning-rate exponents are Adam's; the "
                             f"'{family}' optimizer family needs its own (set every parametrization.KIND.lr_exp=0, "
                             f"or use parametrization=mup)")

    def promises(self, family: str) -> dict[str, dict[str, float]]:
        """The table's width exponents in the doctor's terms (see Parametrization.promises): the rules themselves
        (init RMS, forward multipliers, attention scale, learning rates, ε, decoupled decay's lr·wd held), not
        the behaviour they lead to, which depends on the preset. Adam's family only: the table is Adam's."""
        if family != "adam":
            return {}
        t = self.table
        width = {**{f"init.{k}": -t[k]["init_exp"] for k in KINDS},
                 **{f"mult.{k}": -t[k]["mult_exp"] for k in ("hidden", "readout", "embedding")},
                 "attn_scale": -t["attention"]["exp"], "branch": 0.0,
                 **{f"lr.{k}": -t[k]["lr_exp"] for k in KINDS}, **{f"lr_wd.{k}": 0.0 for k in KINDS},
                 **{f"eps.{k}": -t[k]["eps_exp"] for k in KINDS}}
        return {"width": width}

    def check_run(self, model: GPTConfig, cfg: Any) -> None:
        """A model init option that a constant of the table overrides would reach no weight: refused rather than
        ignored (the mup preset sets all three, as parametrization=mup does)."""
        for kind, option, given, default in (("embedding", "init_std", model.init_std, GPTConfig.init_std),
                                             ("hidden", "hidden_init_std", model.hidden_init_std, None)):
            const = self.table[kind]["init_const"]
            if const is not None and given != default:
                raise ValueError(f"model.{option}={given:g} reaches no weight under parametrization=abc preset="
                                 f"{self.preset}, whose {kind}.init_const={const:g}: drop it, or set "
                                 f"parametrization.preset=sp or ntk or mf, whose init is model.init_std")

    # ----------------------------------------------------------------- build
    def build_model(self, config: GPTConfig) -> GPT:
        if config.width % config.n_head or self.base_width % config.n_head:
            raise ValueError(f"model.width={config.width} and parametrization.base_width={self.base_width} must both "
                             f"be divisible by model.n_head={config.n_head}")
        width = config.width
        changes: dict[str, Any] = {"attn_scale": self.attn_scale(config),
                                   "embed_mult": self.factor("embedding", "mult", width)}
        hidden_const, embedding_const = self.table["hidden"]["init_const"], self.table["embedding"]["init_const"]
        if hidden_const is not None:
            changes["hidden_init_std"] = hidden_const
        if embedding_const is not None:
            changes["init_std"] = embedding_const
            if hidden_const is None and config.hidden_init_std is None:
                changes["hidden_init_std"] = config.init_std  # the hidden matrices keep model.init_std
        config = replace(config, **changes)
        model = GPT(config, init=False)
        rng = torch.random.get_rng_state()  # SP's constructor draws its init from here: so does this one
        readout_mult = self.factor("readout", "mult", width)
        if readout_mult != 1.0:
            row = self.table["readout"]
            head = ScaledReadout(width, config.padded_vocab_size, row["mult_const"],
                                 width_power(self.ratio(width), row["mult_exp"]))
            if config.tie_embeddings:
                head.weight = model.tok_emb.weight
            model.lm_head = head
        hidden_mult = self.factor("hidden", "mult", width)
        if hidden_mult != 1.0:
            for block in model.blocks:
                for linear in (block.attn.qkv, block.attn.proj, block.mlp.fc, block.mlp.proj):
                    linear.register_forward_pre_hook(_ScaleInput(hidden_mult))
        torch.random.set_rng_state(rng)
        self.init_weights(model)
        return record_shapes(model)

    @torch.no_grad()
    def init_weights(self, model: GPT) -> None:
        """GPT-2's init, each draw's std times its kind's width factor r^(-init_exp) (and the readout's own
        constant when untied): the random numbers are SP's, in SP's order."""
        width = model.config.width
        kinds = {id(p): param_kind(name, p.dim()) for name, p in model.named_parameters()}
        readout_const = self.table["readout"]["init_const"]

        def normal_(tensor: torch.Tensor, mean: float, std: float) -> torch.Tensor:
            kind = kinds[id(tensor)]
            if kind == "readout" and readout_const is not None:
                std = readout_const
            factor = self.factor(kind, "init", width)
            return nn.init.normal_(tensor, mean, std * factor if factor != 1.0 else std)

        model.init_weights(normal_=normal_)

    # -------------------------------------------------------- learning rates
    def param_groups(self, model: GPT, lr: float, weight_decay: float, family: str = "adam") -> list[dict]:
        """One group per (kind, decay or not): lr × the kind's factor, weight decay divided by it (lr·wd is the
        kind's shrink per step at every width, as under µP), and `eps_mult` for Adam-like optimizers."""
        self.check_family(family)
        width = model.config.width
        groups: dict[tuple, dict] = {}
        for name, p, ndim in _named_unique_parameters(model):
            kind, decay = param_kind(name, ndim), ndim >= 2
            mult = self.lr_mult(kind, width)
            group = _group(groups, (kind, decay), kind=kind, decay=decay, lr=lr, mult=mult,
                           weight_decay=weight_decay / mult, parametrization=self.name)
            group["eps_mult"] = self.eps_mult(kind, width)
            group["mup_family"] = family
            group["params"].append(p)
            group["param_names"].append(name)
        return list(groups.values())
