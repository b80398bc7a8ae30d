"""Parametrizations: standard (SP), Maximal Update (µP, with CompleteP's depth rules) and unit-scaled µP (u-µP).

A parametrization decides three things about a GPT of a given width:
  1. how it is built and initialised (µP: base shapes, `mup.init`, a width-aware readout),
  2. its forward multipliers (µP: attention scale α/d_head, input and output multipliers),
  3. the per-group learning rates and weight decay handed to the optimizer.
Everything else in the project is parametrization-agnostic and asks this package.

Each lives in its own module (sp, mup, umup) as a subclass of `base.Parametrization` that declares its name,
title, sweep offsets and model needs once, and is entered here with `register_parametrization`. The learning-rate
rule for an optimizer is chosen by its µP *family* ("adam", "sgd", "muon"), which each optimizer declares in
`mugpt.core.optim`. A new parametrization is one module with a registered class and a conf/parametrization/ file.
"""

from __future__ import annotations

import inspect
from typing import Any

from mugpt.core.parametrization.abc import AbcParametrization
from mugpt.core.parametrization.base import (
    EMBEDDING_TABLES,
    KINDS,
    READOUT,
    Parametrization,
    _group,
    _named_unique_parameters,
    param_kind,
    record_shapes,
)
from mugpt.core.parametrization.mup import (
    BLOCKS,
    DEPTH_FAMILIES,
    GPT2_INIT,
    MUP_FAMILIES,
    MaximalUpdateParametrization,
    Readout,
    SharedReadout,
    _CachedWidthMult,
)
from mugpt.core.parametrization.sp import StandardParametrization
from mugpt.core.parametrization.umup import UnitScaledParametrization, UnitScalingTag

__all__ = ["BLOCKS", "DEPTH_FAMILIES", "EMBEDDING_TABLES", "GPT2_INIT", "KINDS", "MUP_FAMILIES", "PARAMETRIZATIONS",
           "READOUT", "MaximalUpdateParametrization", "Parametrization", "Readout", "SharedReadout",
           "StandardParametrization", "UnitScaledParametrization", "UnitScalingTag", "get_parametrization",
           "labels", "param_kind", "parametrization_class", "record_shapes", "register_parametrization",
           "sweep_offsets", "titles", "_CachedWidthMult", "_group", "_named_unique_parameters",
           "AbcParametrization"]

PARAMETRIZATIONS: dict[str, type[Parametrization]] = {}


def register_parametrization(cls: type[Parametrization]) -> type[Parametrization]:
    """Enter a Parametrization subclass as parametrization=cls.name (a class decorator, or a call at run time)."""
    for attribute in ("name", "title", "label"):
        if not isinstance(getattr(cls, attribute, None), str):
            raise TypeError(f"{cls.__name__} must declare `{attribute}` (a string) to be registered")
    PARAMETRIZATIONS[cls.name] = cls
    return cls


for _cls in (StandardParametrization, MaximalUpdateParametrization, UnitScaledParametrization, AbcParametrization):
    register_parametrization(_cls)


def get_parametrization(cfg: Any) -> Parametrization:
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


def parametrization_class(name: str) -> type[Parametrization]:
    """The parametrization class named `name`, or a one-line error listing the known ones."""
    try:
        return PARAMETRIZATIONS[name]
    except KeyError:
        raise ValueError(f"parametrization: unknown option '{name}' "
                         f"(choose one of {', '.join(PARAMETRIZATIONS)})") from None


def titles() -> dict[str, str]:
    """Every registered parametrization's title by name: what tables and figures call it."""
    return {name: cls.title for name, cls in PARAMETRIZATIONS.items()}


def labels() -> dict[str, str]:
    """Every registered parametrization's short name (SP, µP, u-µP) by name: for legends and column heads."""
    return {name: cls.label for name, cls in PARAMETRIZATIONS.items()}


def sweep_offsets() -> dict[str, range]:
    """Every registered parametrization's target grid in a transfer experiment (octaves around the donor's best)."""
    return {name: cls.sweep_offsets for name, cls in PARAMETRIZATIONS.items()}
