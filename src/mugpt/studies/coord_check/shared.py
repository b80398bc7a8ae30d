"""What both axes of the coordinate check share: one model trained a few steps and measured after each, the
batches every model of a sweep sees, the sweep's loop over parametrizations, models and seeds, and the CSV and
figure helpers."""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mugpt.core.model import GPT, GPTConfig
from mugpt.core.recipe import Recipe, train_step
from mugpt.data.windows import sample_batches
from mugpt.training.probe import mean_abs, measure, probe_outputs

log = logging.getLogger(__package__)  # the package's logger: its lines keep the name they always had

AXIS_FIELDS = {"width": "width", "depth": "n_layer"}  # the GPTConfig field each axis sweeps


def train_steps(parametrization: Mapping[str, Any], model_config: GPTConfig, optim_cfg: Any,
                train_batches: Sequence[tuple[torch.Tensor, torch.Tensor]], steps: int, seed: int,
                device: str = "cpu") -> Iterator[GPT]:
    """Build one model (init seeded by `seed`) and yield it after 0, 1, ..., steps-1 updates, each update the
    trainer's own step (mugpt.core.recipe.train_step) on train_batches[t]. Measure it before asking for the next."""
    if len(train_batches) < steps - 1:
        raise ValueError(f"{steps} steps need {steps - 1} training batches, got {len(train_batches)}")
    recipe = Recipe(model_config, dict(parametrization), optim_cfg)
    torch.manual_seed(seed)
    model = recipe.build_model(device)
    model.train()
    optimizer, scheduler = recipe.build_optimizer(model, max(steps - 1, 1), on_cuda=str(device).startswith("cuda"))
    for t in range(steps):
        yield model
        if t == steps - 1:
            break
        batch = tuple(b.to(device) for b in train_batches[t])
        loss = train_step(model, optimizer, scheduler, [batch], grad_clip=recipe.grad_clip).loss
        if not torch.isfinite(loss):
            log.warning("%s width=%d n_layer=%d seed=%d: loss is %s at step %d", parametrization["name"],
                        model_config.width, model_config.n_layer, seed, loss.item(), t)


def trace_one(parametrization: Mapping[str, Any], model_config: GPTConfig, optim_cfg: Any,
              train_batches: Sequence[tuple[torch.Tensor, torch.Tensor]], probe: torch.Tensor, steps: int,
              seed: int, device: str = "cpu") -> list[dict[str, float]]:
    """Build one model (init seeded by `seed`), then measure on `probe` after 0, 1, ..., steps-1 updates.

    Returns one {module: l1} dict per step. Update t uses train_batches[t]."""
    probe = probe.to(device)
    return [measure(model, probe)
            for model in train_steps(parametrization, model_config, optim_cfg, train_batches, steps, seed, device)]


def trace_updates(parametrization: Mapping[str, Any], model_config: GPTConfig, optim_cfg: Any,
                  train_batches: Sequence[tuple[torch.Tensor, torch.Tensor]], probe: torch.Tensor, steps: int,
                  seed: int, device: str = "cpu") -> list[dict[str, dict[str, float]]]:
    """As trace_one, and also how far each activation has moved: per step {"l1": {module: mean |x_t|},
    "update_l1": {module: mean |x_t - x_0|}}, x_0 the same module's output on `probe` before any update
    (so update_l1 is 0 at step 0). A mean of differences, not a difference of means: an update that turns
    features around without changing their size still counts."""
    probe = probe.to(device)
    trace: list[dict[str, dict[str, float]]] = []
    reference: dict[str, torch.Tensor] = {}
    for model in train_steps(parametrization, model_config, optim_cfg, train_batches, steps, seed, device):
        outputs = probe_outputs(model, probe)
        reference = reference or outputs
        trace.append({"l1": {name: mean_abs(h) for name, h in outputs.items()},
                      "update_l1": {name: mean_abs(h.to(torch.float64) - reference[name].to(torch.float64))
                                    for name, h in outputs.items()}})
    return trace


def shared_batches(tokens: np.ndarray, steps: int, batch_size: int, block_size: int,
                   data_seed: int) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """One probe batch and one stream of steps - 1 training batches, shared by every parametrization, width (or
    depth) and seed of a sweep, so that their traces differ only by the model."""
    probe_x, _ = sample_batches(tokens, 1, batch_size, block_size, seed=data_seed)[0]
    return probe_x, sample_batches(tokens, max(steps - 1, 0), batch_size, block_size, seed=data_seed + 1)


def check_steps(steps: int) -> None:
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")


def model_configs(model_cfg: Mapping[str, Any], vocab_size: int, axis: str, values: Sequence[int]) -> list[GPTConfig]:
    """One model config per value on the axis, every other GPTConfig field from model_cfg (other keys ignored)."""
    fields = {k: v for k, v in dict(model_cfg).items() if k in GPTConfig.__dataclass_fields__}
    return [GPTConfig(**{**fields, "vocab_size": vocab_size, AXIS_FIELDS[axis]: v}) for v in values]


def sweep(plans: Mapping[str, Mapping[str, Any]], configs: Sequence[GPTConfig], seeds: Sequence[int], axis: str,
          trace: Callable[[Mapping[str, Any], GPTConfig, int], list]) -> Iterator[tuple[str, GPTConfig, int, list]]:
    """Every parametrization × model × seed in that order, traced by trace(options, config, seed) and its time
    logged: (label, config, seed, trace)."""
    for label, options in plans.items():
        for config in configs:
            for seed in seeds:
                start = time.perf_counter()
                result = trace(options, config, int(seed))
                log.info("%s %s=%d seed=%d: %.1fs", label, axis, getattr(config, AXIS_FIELDS[axis]), seed,
                         time.perf_counter() - start)
                yield label, config, int(seed), result


def write_csv(rows: Iterable[Mapping[str, Any]], path: Path, columns: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        for r in rows:
            writer.writerow({c: r[c] for c in columns})


def read_csv(path: Path) -> list[dict]:
    """Rows of coord_check.csv or coord_check_depth.csv, numbers as numbers."""
    types = {"width": int, "depth": int, "step": int, "seed": int, "l1": float, "update_l1": float}
    with open(path, newline="") as f:
        return [{k: types[k](v) if k in types else v for k, v in r.items()} for r in csv.DictReader(f)]


def _log_log_panel(ax: Any, xs: Sequence[int], note: str) -> None:
    """log2 x (ticks at the swept values), log y, a grid, and `note` (the slopes) in the top left corner."""
    ax.text(0.03, 0.97, note, transform=ax.transAxes, va="top", fontsize=8,
            bbox=dict(boxstyle="round", fc="white", ec="0.8", alpha=0.85))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels([str(x) for x in xs], fontsize=8)
    ax.grid(True, which="both", alpha=0.3)


def pyplot() -> tuple[Any, Any]:
    """matplotlib's pyplot on the file-only Agg backend, and Line2D for the legends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    return plt, Line2D


def step_colours(plt: Any, steps: Sequence[int]) -> dict[int, Any]:
    """One viridis colour per training step, dark (init) to light (last)."""
    cmap = plt.get_cmap("viridis")
    return {t: cmap(0.9 * i / max(1, len(steps) - 1)) for i, t in enumerate(steps)}


def step_handles(line: Any, colours: Mapping[int, Any]) -> list:
    """Legend entries for the steps' colours (`line`: matplotlib's Line2D)."""
    return [line([], [], color=c, marker="o", ms=3, label=f"step {t}") for t, c in colours.items()]


def save_figure(plt: Any, fig: Any, handles: list, title: str, bottom: float, path: Path) -> None:
    """The legend in one row below the panels (they end at `bottom`), the title above, written to path."""
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False,
               bbox_to_anchor=(0.5, 0.0), fontsize=9)
    fig.suptitle(title, fontsize=13)
    fig.tight_layout(rect=(0, bottom, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
