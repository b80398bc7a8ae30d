"""The doctor on this project's own training recipe: the GPT and optimizer a training config builds (`Recipe`),
at the doctor's widths and depths, held to the config's parametrization's promises (or to another's)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mugpt.core.model import GPTConfig
from mugpt.studies.doctor.core import Build, diagnose, shakespeare_batches
from mugpt.studies.doctor.report import Report

VOCAB = 256  # byte-level Shakespeare
EXPECTATIONS = ("sp", "mup", "umup")


def recipe_build(model: Mapping[str, Any], options: Mapping[str, Any], optim: Any) -> Build:
    """(width, depth) → the model and optimizer the training recipe builds (dropout off: a layer is applied twice
    to the same input to measure its update)."""
    from mugpt.core.recipe import Recipe

    known = {f.name for f in fields(GPTConfig)}
    base = {k: v for k, v in dict(model).items() if k in known}

    def build(width: int, depth: int):
        config = GPTConfig(**{**base, "width": width, "n_layer": depth, "vocab_size": VOCAB, "dropout": 0.0})
        recipe = Recipe(config, dict(options), optim)
        model = recipe.build_model()
        optimizer, _ = recipe.build_optimizer(model, max_steps=1, on_cuda=False)
        return model, optimizer

    return build


def diagnose_training(model: Mapping[str, Any], parametrization: Mapping[str, Any], optim: Any, *,
                      expect: str | None = None, widths: Sequence[int] = (32, 64, 128),
                      depths: Sequence[int] = (2, 4, 8), seeds: Sequence[int] = (0, 1, 2), steps: int = 3,
                      batch_size: int = 8, base_width: int | None = None, tokens: Any = None) -> Report:
    """The doctor on a training config's sections (model, parametrization, optim: DictConfigs or dicts).

    expect: None holds the model to its own parametrization's promises (SP: none); sp, mup or umup to that one's
    (with its defaults). base_width: µP's base width for the sweep (None: the narrowest width); depths are swept
    only when the expected parametrization declares depth rules (µP with depth_alpha > 0), base_depth null = the
    shallowest."""
    from mugpt.core.optim import check_optimizer, mup_family
    from mugpt.core.parametrization import get_parametrization, parametrization_class
    from mugpt.studies.doctor.core import check_sweep

    check_sweep(list(widths), [], list(seeds), steps)
    options = OmegaConf.to_container(parametrization, resolve=True) if isinstance(parametrization, DictConfig) \
        else dict(parametrization)
    optim = optim if isinstance(optim, DictConfig) else OmegaConf.create(dict(optim))
    model = OmegaConf.to_container(model, resolve=True) if isinstance(model, DictConfig) else dict(model)
    if expect is not None and expect not in EXPECTATIONS:
        raise ValueError(f"expect={expect}: must be null (the parametrization's own promises) or one of "
                         f"{', '.join(EXPECTATIONS)}")
    cls = parametrization_class(options.get("name", "sp"))
    if "base_width" in inspect.signature(cls).parameters:
        options["base_width"] = int(base_width or min(widths))
    check_optimizer(optim)
    family = mup_family(optim.name, optim)
    if depths:  # base_depth null: the shallowest (α = 0 ignores it)
        options = cls.options_for_depths(options, list(depths))
    rule = get_parametrization(options)  # refuses unknown options in one line
    if getattr(rule, "depth_alpha", 0) > 0:
        check_sweep(list(widths), list(depths), list(seeds), steps)
    rule.check_family(family)
    target = rule if expect in (None, rule.name) else expect
    claims_depth = "depth" in (rule.promises(family) if target is rule else {})
    for w in widths:  # every width the sweep builds, checked before any model is
        if w % int(model.get("n_head", GPTConfig.n_head)):
            raise ValueError(f"widths={list(widths)}: {w} is not divisible by model.n_head={model.get('n_head')}")
        config = GPTConfig(**{**{k: v for k, v in model.items() if k in {f.name for f in fields(GPTConfig)}},
                              "width": int(w), "vocab_size": VOCAB, "dropout": 0.0})
        if hasattr(rule, "check_model"):
            rule.check_model(config)
    batches = shakespeare_batches(steps + 1, batch_size, int(model.get("block_size", 32)), tokens=tokens)
    return diagnose(recipe_build(model, options, optim), target, family=family, widths=widths,
                    depths=depths if claims_depth else (), depth=int(model.get("n_layer", 2)), width=min(widths),
                    batches=batches, seeds=seeds, steps=steps)


def run_doctor(cfg: DictConfig) -> tuple[Report, Path]:
    """The script's work (conf/mup_doctor.yaml): options checked, the doctor run, report.json written to `out`."""
    import time

    import torch

    from mugpt.config import script_option

    start = time.perf_counter()
    steps = script_option(cfg, "steps", int, positive=True)
    batch_size = script_option(cfg, "batch_size", int, positive=True)
    base_width = script_option(cfg, "base_width", int, nullable=True, positive=True)
    expect = script_option(cfg, "expect", str, nullable=True)
    out = Path(script_option(cfg, "out", str))
    threads = script_option(cfg, "threads", int, nullable=True, positive=True)
    lists = {}
    for key in ("widths", "depths", "seeds"):
        value = cfg.get(key)
        if not OmegaConf.is_list(value) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ValueError(f"{key}={value}: must be a list of integers, e.g. {key}=[2,4,8]")
        lists[key] = list(value)
    if threads:
        torch.set_num_threads(threads)
    report = diagnose_training(cfg.model, cfg.parametrization, cfg.optim, expect=expect, steps=steps,
                               batch_size=batch_size, base_width=base_width, **lists)
    report.wall_seconds = time.perf_counter() - start
    return report, report.write_json(out / "report.json")


def refused_overrides(overrides: Sequence[str]) -> str | None:
    """The one-line refusal of a command line that conf/mup_doctor.yaml cannot compose (a misspelt key or option,
    with the nearest names), or None: checked before Hydra's own run, whose errors exit like a broken promise."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from mugpt.config import CONF_DIR, composition_error_line, register_configs

    if any(o.startswith("-") for o in overrides):  # Hydra's own flags (--multirun, --cfg ...): Hydra's to judge
        return None
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            compose("mup_doctor", overrides=list(overrides), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as exc:
        return composition_error_line(exc, list(overrides))
    finally:
        GlobalHydra.instance().clear()
    return None
