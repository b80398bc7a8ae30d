"""What every parametrization shares: the kinds of parameters, the group builder, and the contract a
parametrization fulfils (its declaration: name, title, sweep offsets, what it needs of the model).

The boundary with the optimizers: every parameter group carries a `kind` (hidden, embedding, vector, readout)
and the name of the parametrization that made it; optimizers read those and nothing else (no `p.infshape`, no
parameter names).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import torch.nn as nn

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
    """The contract of a parametrization. Each subclass declares, once, as class attributes:

    name: its value of `parametrization=` (conf/parametrization/NAME.yaml);
    title and label: how tables and figures name it (long and short);
    sweep_offsets: the target's learning-rate grid in a transfer experiment, as octaves around the donor's best
        lr (a rule that transfers needs fewer on the low side than one whose optimum moves with width);
    model_needs: the model options it requires ({"tie_embeddings": False}): the model is built with them
        (model_config), and a command line that sets another value is refused (check_written).

    and implements build_model(config) and param_groups(model, lr, weight_decay, family). By default no option
    depends on the widths or depths of a sweep (the coordinate check), and every optimizer family is accepted."""

    name: ClassVar[str]
    title: ClassVar[str]
    label: ClassVar[str]
    sweep_offsets: ClassVar[range] = range(-2, 3)
    model_needs: ClassVar[dict[str, Any]] = {}
    # Its groups follow µP's learning-rate rule of the optimizer's family (a per-width lr_mult), which some
    # optimizer options would undo: those optimizers ask this, never the parametrization's name.
    follows_mup_family_rules: ClassVar[bool] = False

    @classmethod
    def model_config(cls, config: GPTConfig) -> GPTConfig:
        """The model config this parametrization builds: `config` with its model_needs set."""
        changes = {k: v for k, v in cls.model_needs.items() if getattr(config, k) != v}
        return replace(config, **changes) if changes else config

    @classmethod
    def check_written(cls, written: dict[str, Any]) -> None:
        """Refuse, in one line, a model option the user wrote (`written`: model key -> value) that contradicts what
        this parametrization needs."""
        for key, needed in cls.model_needs.items():
            if key in written and written[key] != needed:
                raise ValueError(f"parametrization={cls.name} needs model.{key}={str(needed).lower()}, but the "
                                 f"command line sets model.{key}={str(written[key]).lower()}: drop that override")

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

    def check_run(self, model: GPTConfig, cfg: Any) -> None:
        """Refuse, before anything is built, the model and training options it cannot run (none here)."""

    @property
    def keeps_width_rules(self) -> bool:
        """Do its groups carry per-width learning rates that an optimizer option could undo (µP's 1/m)? Optimizers
        ask this instead of testing the parametrization's name."""
        return False

    def build_model(self, config: GPTConfig) -> nn.Module:
        raise NotImplementedError

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float, family: str = "adam") -> list[dict]:
        raise NotImplementedError

    def promises(self, family: str) -> dict[str, dict[str, float]]:
        """How the built model and its first steps must scale, as exponents per axis ("width", "depth"), under an
        optimizer of this µP family: what the doctor measures a model against. Keys: init.KIND (RMS of the weights
        as built), mult.hidden / mult.readout / mult.embedding (forward multipliers), attn_scale (attention logits
        per q·k), branch (residual branch multiplier), lr.KIND, eps.KIND (Adam's ε), lr_wd.KIND (decoupled decay's
        lr·wd), update.KIND (a step's ΔW·x), activation.hidden, logits_change, stream_change. None here: a
        parametrization without rules (SP) promises nothing."""
        return {}


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

