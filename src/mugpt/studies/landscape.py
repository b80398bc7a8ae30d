"""Loss landscapes around trained weights (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets").

The loss is evaluated at θ + α·δ (1-D) and θ + α·δ + β·η (2-D) for random Gaussian directions δ, η that are
filter-normalised: every row of a direction's weight matrix (the weights into one output unit, the paper's
"filter"; for an embedding, one token's or position's vector) is rescaled to the norm of the same row of θ.
Without this, a step α means different things in layers of different scale, and two networks (SP and µP,
or two widths) could not be compared on one α axis; with it, α = 1 moves every row by its own length.
Biases and LayerNorm parameters (1-D) get a zero direction, as the paper does by default.

The loss at each point is the mean token cross-entropy on a fixed list of validation batches of the run's own
data, through the model's own forward (µP's multipliers included); at α = β = 0 it is the trained model's
validation loss on those batches. Everything runs in float32: a run trained under bf16-mixed logged its
validation loss under autocast, a few thousandths away.

Entry points: `compute_landscape(run, ...)` for one run, `write_landscape(results, out)` for the CSVs and plots
of one or two runs; the pieces (`filter_normalize`, `random_direction`, `loss_on_grid`) are importable alone.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from mugpt.studies.inspection import LoadedRun, evaluate_loss, validation_batches

Direction = dict[str, torch.Tensor]
COLUMNS_1D = ("alpha", "loss")
COLUMNS_2D = ("alpha", "beta", "loss")


# ------------------------------------------------------------------------------------- directions
def trainable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Each parameter once under its first name: a tied readout is the token embedding, perturbed once."""
    return {name: p for name, p in model.named_parameters()}


def filter_normalize(direction: torch.Tensor, weight: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """direction with each row (dim 0: one output unit's filter) rescaled to the norm of weight's row.

    A 1-D tensor (bias, LayerNorm gain) gets a zero direction; a zero row of weight gives a zero row."""
    if weight.dim() <= 1:
        return torch.zeros_like(weight)
    d = direction.reshape(direction.size(0), -1)
    w = weight.reshape(weight.size(0), -1)
    scale = w.norm(dim=1, keepdim=True) / (d.norm(dim=1, keepdim=True) + eps)
    return (d * scale).reshape(weight.shape)


def random_direction(weights: Mapping[str, torch.Tensor], generator: torch.Generator) -> Direction:
    """A filter-normalised Gaussian direction. Drawn on the CPU in the parameters' order, so a seed gives the
    same direction on any device."""
    out = {}
    for name, w in weights.items():
        raw = torch.randn(w.shape, generator=generator, dtype=torch.float32)
        out[name] = filter_normalize(raw, w.detach().float().cpu()).to(device=w.device, dtype=w.dtype)
    return out


# ---------------------------------------------------------------------------------------- the grid
@contextmanager
def perturbable(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Yields the trained weights θ (a copy); the model's weights are put back on exit, whatever happened."""
    weights = trainable_weights(model)
    theta = {name: p.detach().clone() for name, p in weights.items()}
    try:
        yield theta
    finally:
        with torch.no_grad():
            for name, p in weights.items():
                p.copy_(theta[name])


@torch.no_grad()
def set_weights(model: nn.Module, theta: Mapping[str, torch.Tensor], steps: Sequence[tuple[float, Direction]]) -> None:
    """model's weights := θ + Σ coefficient·direction. Only tensors with a nonzero direction are touched."""
    for name, p in trainable_weights(model).items():
        if theta[name].dim() <= 1:
            continue  # zero direction (Li et al.'s default for biases and norms): θ already
        value = theta[name].clone()
        for coefficient, direction in steps:
            value.add_(direction[name], alpha=coefficient)
        p.copy_(value)


def loss_on_grid(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                 directions: Sequence[Direction], points: Sequence[Sequence[float]]) -> list[float]:
    """The loss at θ + Σ_i point[i]·directions[i] for each point; the model is restored afterwards."""
    losses = []
    model.eval()
    with perturbable(model) as theta:
        for point in points:
            set_weights(model, theta, list(zip(point, directions)))
            losses.append(evaluate_loss(model, batches))
    return losses


def axis(resolution: int, span: float) -> np.ndarray:
    """resolution evenly spaced coefficients in [-span, span]; odd resolution puts the trained point, 0, on it."""
    return np.linspace(-span, span, resolution)


def check_options(resolution: int, span: float, batches: int) -> None:
    if not isinstance(resolution, int) or resolution < 3 or resolution % 2 == 0:
        raise ValueError(f"resolution={resolution}: must be an odd integer >= 3, so that alpha=0 (the trained "
                         f"weights) is on the grid")
    if not (isinstance(span, (int, float)) and span > 0 and math.isfinite(span)):
        raise ValueError(f"span={span}: must be a positive number")
    if not isinstance(batches, int) or batches <= 0:
        raise ValueError(f"batches={batches}: must be a positive integer")


# ---------------------------------------------------------------------------------------- one run
@dataclass
class Landscape:
    label: str
    description: str
    alphas: np.ndarray  # the 1-D axis, also the 2-D plane's alpha and beta axes
    loss_1d: np.ndarray  # (resolution,)
    loss_2d: np.ndarray  # (resolution, resolution), indexed [alpha, beta]
    loss_at_zero: float  # the unperturbed model on the same batches
    logged_val_loss: float | None = None  # summary.json's val_loss (data.val_batches batches)
    seconds: float = 0.0

    @property
    def center(self) -> int:
        return len(self.alphas) // 2


def compute_landscape(run: LoadedRun, resolution: int = 21, span: float = 1.0, batches: int = 4,
                      seed: int = 0) -> Landscape:
    """1-D (along δ) and 2-D (δ, η) landscapes of one run; δ is the same direction in both, so the 1-D curve
    is the 2-D plane's β = 0 line."""
    check_options(resolution, span, batches)
    started = time.time()
    data = validation_batches(run, batches)
    generator = torch.Generator().manual_seed(seed)
    weights = trainable_weights(run.model)
    delta = random_direction(weights, generator)
    eta = random_direction(weights, generator)
    alphas = axis(resolution, span)
    loss_at_zero = evaluate_loss(run.model, data)
    loss_1d = loss_on_grid(run.model, data, [delta], [(a,) for a in alphas])
    loss_2d = loss_on_grid(run.model, data, [delta, eta], [(a, b) for a in alphas for b in alphas])
    return Landscape(label=run.label, description=run.description, alphas=alphas, loss_1d=np.array(loss_1d),
                     loss_2d=np.array(loss_2d).reshape(resolution, resolution), loss_at_zero=loss_at_zero,
                     logged_val_loss=run.logged_val_loss(), seconds=time.time() - started)


# ------------------------------------------------------------------------------------------ output
def unique_labels(results: Sequence[Landscape]) -> list[str]:
    """Run labels for the `run` column; two runs of the same directory name get #1, #2."""
    labels = [r.label for r in results]
    if len(set(labels)) < len(labels):
        labels = [f"{label}#{i + 1}" for i, label in enumerate(labels)]
    return labels


def write_csvs(results: Sequence[Landscape], out: Path) -> tuple[Path, Path]:
    """landscape_1d.csv (alpha, loss) and landscape_2d.csv (alpha, beta, loss); a leading `run` column when
    there are several runs."""
    labels = unique_labels(results)
    several = len(results) > 1
    path_1d, path_2d = out / "landscape_1d.csv", out / "landscape_2d.csv"
    with open(path_1d, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow((["run"] if several else []) + list(COLUMNS_1D))
        for label, r in zip(labels, results):
            for a, loss in zip(r.alphas, r.loss_1d):
                writer.writerow(([label] if several else []) + [f"{a:.6g}", f"{loss:.6f}"])
    with open(path_2d, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow((["run"] if several else []) + list(COLUMNS_2D))
        for label, r in zip(labels, results):
            for i, a in enumerate(r.alphas):
                for j, b in enumerate(r.alphas):
                    writer.writerow(([label] if several else []) + [f"{a:.6g}", f"{b:.6g}", f"{r.loss_2d[i, j]:.6f}"])
    return path_1d, path_2d


def plot_1d(results: Sequence[Landscape], path: Path) -> None:
    """Every run's curve on one axis: filter normalisation makes α comparable across runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for label, r in zip(unique_labels(results), results):
        ax.plot(r.alphas, r.loss_1d, marker="o", ms=3, lw=1.5, label=f"{label} ({r.description})")
        ax.plot([0.0], [r.loss_at_zero], "k*", ms=9)
    ax.axvline(0.0, color="0.6", lw=0.8, ls=":")
    ax.set_xlabel("α (filter-normalised random direction)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("1-D loss landscape around the trained weights (★ = trained)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def contour_levels(results: Sequence[Landscape], count: int = 24) -> np.ndarray:
    """Shared levels, geometric between the lowest and highest loss of all runs: dense in the basin, where
    the runs differ, sparse on the walls, where the loss shoots up."""
    low = min(float(np.min(r.loss_2d)) for r in results)
    high = max(float(np.max(r.loss_2d)) for r in results)
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return np.linspace(low, low + 1.0, count) if math.isfinite(low) else np.linspace(0.0, 1.0, count)
    return np.geomspace(max(low, 1e-6), high, count)


def plot_2d(results: Sequence[Landscape], path: Path) -> None:
    """One contour panel per run, side by side, on the same levels and colours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = contour_levels(results)
    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results) + 1.2, 4.8), squeeze=False,
                             layout="constrained")  # room for every panel's labels and the shared colour bar
    filled = None
    for ax, label, r in zip(axes[0], unique_labels(results), results):
        # loss_2d is indexed [alpha, beta]: alpha on the x axis, beta on the y axis
        loss = np.nan_to_num(r.loss_2d.T, nan=levels[-1], posinf=levels[-1])
        filled = ax.contourf(r.alphas, r.alphas, loss, levels=levels, cmap="viridis", extend="both")
        ax.contour(r.alphas, r.alphas, loss, levels=levels, colors="white", linewidths=0.4, alpha=0.6)
        ax.plot([0.0], [0.0], "r*", ms=10)
        ax.set_title(f"{label}\n{r.description}; loss at ★ {r.loss_at_zero:.3f}", fontsize=10)
        ax.set_xlabel("α (direction δ)")
        ax.set_ylabel("β (direction η)")
        ax.set_aspect("equal")
        ax.locator_params(nbins=5)
    fig.colorbar(filled, ax=axes[0].tolist(), label="validation loss (nats/token)")
    fig.suptitle("2-D loss landscape (filter-normalised random directions)", fontsize=12)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write_landscape(results: Sequence[Landscape], out: str | Path) -> dict[str, Path]:
    """The two CSVs and the two PNGs of one or more runs, in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path_1d, path_2d = write_csvs(results, out)
    plot_1d(results, out / "landscape_1d.png")
    plot_2d(results, out / "landscape_2d.png")
    return {"csv_1d": path_1d, "csv_2d": path_2d, "png_1d": out / "landscape_1d.png",
            "png_2d": out / "landscape_2d.png"}


def format_summary(results: Sequence[Landscape]) -> str:
    """One line per run: the trained point's loss (and the run's own logged one), the curve's range."""
    lines = []
    for label, r in zip(unique_labels(results), results):
        logged = f", logged val loss {r.logged_val_loss:.4f}" if r.logged_val_loss is not None else ""
        best = int(np.argmin(r.loss_1d))
        lines.append(
            f"{label} ({r.description}): loss at 0 {r.loss_at_zero:.4f}{logged}; 1-D {r.loss_1d.min():.4f}.."
            f"{r.loss_1d.max():.4f} (min at alpha={r.alphas[best]:+.3g}), 2-D {r.loss_2d.min():.4f}.."
            f"{r.loss_2d.max():.4f}; {r.seconds:.1f}s")
    return "\n".join(lines)
