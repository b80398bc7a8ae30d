"""µTransfer analysis: read a sweep's summary.json files, find each width's best learning rate, and measure
how well the narrowest (donor) model's best learning rate transfers to the widest (target) model.

Three numbers per parametrization, as in Tensor Programs V (figure 1):
- best log2 lr per width, from a parabola through the grid minimum and its two neighbours (loss against
  log2 lr is close to a parabola near its minimum; a bare argmin jumps between grid points on flat curves),
- shift: how many octaves the best lr moves across widths (µP: ~0, SP: drifts down as width grows),
- transfer regret: the target's loss at the donor's best grid lr minus the target's best loss.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from omegaconf import OmegaConf

log = logging.getLogger(__name__)

CSV_COLUMNS = ("parametrization", "width", "lr", "seed", "val_loss", "status", "output_dir")
PARAM_TITLES = {"sp": "SP (standard parametrization)", "mup": "µP (maximal update parametrization)"}


def read_summaries(sweep_dir: str | Path, keys: Sequence[str] = ()) -> list[dict]:
    """One row per job under sweep_dir (any depth) that left a summary.json; `keys` (dotted config keys, e.g.
    model.init_std) are added as columns from the job's config.yaml."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep directory not found: {sweep_dir}")
    rows = []
    for path in sorted(sweep_dir.rglob("summary.json")):
        s = json.loads(path.read_text())
        if s.get("lr") is None or s.get("width") is None:
            continue
        loss = s.get("val_loss")
        row = {"parametrization": s.get("parametrization", "?"), "width": int(s["width"]),
               "lr": float(s["lr"]), "seed": int(s.get("seed", 0)),
               "val_loss": float(loss) if loss is not None else math.nan,
               "status": s.get("status", "failed"), "output_dir": str(path.parent)}
        if keys:
            config = OmegaConf.load(path.parent / "config.yaml") if (path.parent / "config.yaml").is_file() else {}
            row.update({key: OmegaConf.select(config, key) if config else None for key in keys})
        rows.append(row)
    if not rows:
        raise FileNotFoundError(f"no summary.json with an lr and a width under {sweep_dir}")
    return rows


def write_csv(rows: Iterable[Mapping[str, Any]], path: Path, keys: Sequence[str] = ()) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = [*CSV_COLUMNS[:4], *keys, *CSV_COLUMNS[4:]]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in sorted(rows, key=lambda r: (r["parametrization"], r["width"], r["lr"], r["seed"],
                                              *(str(r[k]) for k in keys))):
            writer.writerow({c: r[c] for c in columns})


def loss_curves(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, int], dict[float, float]]:
    """(parametrization, width) -> {lr: mean val loss over seeds}; a diverged or failed run counts as +inf,
    so one bad seed makes that learning rate unusable, as it would be in practice."""
    losses: dict[tuple[str, int, float], list[float]] = defaultdict(list)
    for r in rows:
        ok = r["status"] == "completed" and math.isfinite(r["val_loss"])
        losses[(r["parametrization"], r["width"], r["lr"])].append(r["val_loss"] if ok else math.inf)
    curves: dict[tuple[str, int], dict[float, float]] = defaultdict(dict)
    for (param, width, lr), values in losses.items():
        curves[(param, width)][lr] = float(np.mean(values))
    return {k: dict(sorted(v.items())) for k, v in curves.items()}


def best_log2_lr(curve: Mapping[float, float]) -> tuple[float, float]:
    """(grid-min lr, refined log2 lr): a parabola through the grid minimum and its neighbours on a log2
    axis, its vertex kept within the neighbours; the grid point itself at an edge or without curvature."""
    lrs = [lr for lr in curve if math.isfinite(curve[lr])]
    if not lrs:
        return math.nan, math.nan
    grid = sorted(curve)
    best = min(lrs, key=lambda lr: curve[lr])
    i = grid.index(best)
    if 0 < i < len(grid) - 1 and all(math.isfinite(curve[grid[j]]) for j in (i - 1, i + 1)):
        x = np.log2(grid[i - 1: i + 2])
        y = np.array([curve[grid[j]] for j in (i - 1, i, i + 1)])
        a, b, _ = np.polyfit(x, y, 2)
        if a > 0:
            return best, float(np.clip(-b / (2 * a), x[0], x[2]))
    return best, math.log2(best)


def analyse(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per parametrization: widths, best lr per width (grid and refined), shift in octaves, donor and target
    widths, transfer regret (nats), the target's best loss and its loss at the donor's lr."""
    curves = loss_curves(rows)
    out: dict[str, dict[str, Any]] = {}
    for param in dict.fromkeys(r["parametrization"] for r in rows):
        widths = sorted(w for p, w in curves if p == param)
        best = {w: best_log2_lr(curves[(param, w)]) for w in widths}
        refined = [best[w][1] for w in widths if math.isfinite(best[w][1])]
        donor, target = widths[0], widths[-1]
        donor_lr = best[donor][0]
        target_curve = curves[(param, target)]
        target_best = min(target_curve.values())
        at_donor_lr = target_curve.get(donor_lr, math.nan) if math.isfinite(donor_lr) else math.nan
        out[param] = {
            "widths": widths,
            "best_lr": {w: best[w][0] for w in widths},
            "best_log2_lr": {w: best[w][1] for w in widths},
            "best_loss": {w: min(curves[(param, w)].values()) for w in widths},
            "shift_octaves": (max(refined) - min(refined)) if len(refined) > 1 else math.nan,
            "donor_width": donor, "target_width": target, "donor_lr": donor_lr,
            "target_loss_at_donor_lr": at_donor_lr,
            "target_best_loss": target_best,
            "regret": at_donor_lr - target_best,
        }
    return out


def format_report(analysis: Mapping[str, Mapping[str, Any]]) -> str:
    lines = []
    for param, a in analysis.items():
        lines.append(f"{param}: best learning rate per width (grid minimum; parabola-refined log2)")
        for w in a["widths"]:
            lines.append(f"  width {w:>5}: lr {a['best_lr'][w]:.3g}  log2 {a['best_log2_lr'][w]:+.2f}  "
                         f"best val loss {a['best_loss'][w]:.4f}")
        lines.append(f"  shift of the best lr across widths: {a['shift_octaves']:.2f} octaves")
        lines.append(f"  transfer: donor width {a['donor_width']} best lr {a['donor_lr']:.3g} -> target width "
                     f"{a['target_width']}: loss {a['target_loss_at_donor_lr']:.4f} vs its own best "
                     f"{a['target_best_loss']:.4f}, regret {a['regret']:.4f} nats")
    return "\n".join(lines)


def plot(rows: Sequence[Mapping[str, Any]], path: Path, title: str = "") -> None:
    """Validation loss vs log2 learning rate, one curve per width, one panel per parametrization, shared y
    axis. Diverged/failed runs are drawn as crosses at the top of the panel; stars mark each width's best."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = loss_curves(rows)
    params = list(dict.fromkeys(r["parametrization"] for r in rows))
    widths = sorted({w for _, w in curves})
    cmap = plt.get_cmap("viridis")
    colour = {w: cmap(0.9 * i / max(1, len(widths) - 1)) for i, w in enumerate(widths)}
    finite = [v for c in curves.values() for v in c.values() if math.isfinite(v)]
    lo = min(finite) if finite else 0.0
    hi = min(max(finite), lo + 2.0) if finite else 1.0
    top = hi + 0.08 * (hi - lo + 1e-9)

    fig, axes = plt.subplots(1, len(params), figsize=(6 * len(params), 4.6), sharey=True, squeeze=False)
    for ax, param in zip(axes[0], params):
        for w in widths:
            curve = curves.get((param, w))
            if not curve:
                continue
            x = np.log2(list(curve))
            y = np.array(list(curve.values()))
            ok = np.isfinite(y)
            ax.plot(x[ok], np.minimum(y[ok], top), "-o", ms=4, color=colour[w], label=f"width {w}")
            ax.plot(x[~ok], np.full((~ok).sum(), top), "x", ms=7, color=colour[w])
            best, _ = best_log2_lr(curve)
            if math.isfinite(best):
                ax.plot([math.log2(best)], [curve[best]], "*", ms=13, color=colour[w], mec="black", mew=0.6)
        ax.set_title(PARAM_TITLES.get(param, param))
        ax.set_xlabel("log2 learning rate")
        ax.set_ylim(lo - 0.05 * (hi - lo + 1e-9), top + 0.05 * (hi - lo + 1e-9))
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("validation loss (nats/token)")
    axes[0][-1].legend(title="× diverged", fontsize=9)
    fig.suptitle(title or "µTransfer: validation loss vs learning rate across widths")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def report(sweep_dir: str | Path, out_dir: str | Path | None = None, title: str = "",
           keys: Sequence[str] = (), select: Mapping[str, Mapping[str, Any]] | None = None) -> dict:
    """Read the sweep, write mutransfer.csv, mutransfer.png and mutransfer.json; return the analysis.
    `keys`: config keys added to the CSV. `select`: parametrization -> {key: value}; the curves and the
    analysis then use only that parametrization's runs with those values (the CSV keeps every run)."""
    rows = read_summaries(sweep_dir, [*keys, *{k for chosen in (select or {}).values() for k in chosen}])
    out = Path(out_dir or sweep_dir)
    write_csv(rows, out / "mutransfer.csv", keys)
    if select:
        rows = [r for r in rows if all(r[k] == v for k, v in select.get(r["parametrization"], {}).items())]
    runs = [(r["parametrization"], r["width"], r["lr"], r["seed"]) for r in rows]
    if len(set(runs)) < len(runs):
        log.warning("several runs share a parametrization, width, lr and seed: the curves average them; "
                    "report one setting per folder (the CSV keeps every run)")
    analysis = analyse(rows)
    plot(rows, out / "mutransfer.png", title=title)
    (out / "mutransfer.json").write_text(json.dumps(analysis, indent=2, default=str))
    return {"rows": rows, "analysis": analysis, "text": format_report(analysis), "output_dir": out}


# --------------------------------------------------------------------------- the one-command procedure
def _flatten(search: Mapping[str, Any], prefix: str = "") -> dict[str, Sequence[Any]]:
    """{"parametrization": {"output_mult": [..]}} (what `+search.parametrization.output_mult=[..]` makes)
    -> {"parametrization.output_mult": [..]}."""
    flat: dict[str, Sequence[Any]] = {}
    for key, value in search.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def grid(search: Mapping[str, Any]) -> list[list[str]]:
    """All combinations of a {override: [values]} search space, as lists of Hydra overrides."""
    combos: list[list[str]] = [[]]
    for key, values in _flatten(search).items():
        if not values:
            raise ValueError(f"search.{key}: give at least one value")
        combos = [c + [f"{key}={v}"] for c in combos for v in values]
    return combos


def chosen_settings(result: Mapping[str, Any]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """From run_pipeline's result: the searched config keys other than the learning rate, and each
    parametrization's chosen values of them (to draw the donor's curve at the settings it picked)."""
    chosen: dict[str, dict[str, Any]] = {}
    for param, r in result["parametrizations"].items():
        pairs = (o.split("=", 1) for o in r["donor_best"])
        chosen[param] = {k: yaml.safe_load(v) for k, v in pairs if k != "lr_log2" and k != "optim.lr"}
    keys = sorted({k for values in chosen.values() for k in values})
    return keys, chosen


def run_pipeline(cfg: Any, run: Any, check: Any = None) -> dict:
    """Donor sweep → best hyperparameters → target runs, per parametrization.

    cfg: shaped like conf/mutransfer.yaml. run(overrides, output_dir) -> summary dict trains one model (the
    script passes mugpt.training.train on a composed config). check(overrides), if given, raises on a config
    that cannot run; every donor run and the target are checked before the first run trains. Returns the
    result also written to OUTPUT/transfer.json and printed by the script."""
    out = Path(cfg.output_dir)
    seeds = list(cfg.seeds)
    if int(cfg.donor_width) >= int(cfg.target_width):
        raise ValueError(f"donor_width={cfg.donor_width} must be narrower than target_width={cfg.target_width}")
    shared = OmegaConf.to_container(cfg.search, resolve=True)
    # options only one parametrization has (µP's multipliers) are searched for that one alone
    own = cfg.get("search_by_parametrization")
    own = OmegaConf.to_container(own, resolve=True) if own else {}
    # µP's base width is the donor's: there µP and SP are the same model, and the donor's tuning is µP's
    base = [f"+experiment={cfg.training_experiment}", f"parametrization.base_width={cfg.donor_width}", *cfg.overrides]
    result: dict[str, Any] = {"donor_width": int(cfg.donor_width), "target_width": int(cfg.target_width),
                              "parametrizations": {}}
    # merged key by key: µP's `model.x` must not replace the shared search's whole `model` subtree
    plans = {param: grid({**_flatten(shared), **_flatten(own.get(param) or {})}) for param in cfg.parametrizations}
    if check is not None:  # a target that cannot be built must not be found after an hour of donor runs
        for param, combos in plans.items():
            for overrides in ([*base, f"parametrization={param}", f"model.width={cfg.donor_width}", *combo]
                              for combo in combos):
                check(overrides)
            check([*base, f"parametrization={param}", f"model.width={cfg.target_width}", *combos[0]])
    for param, combos in plans.items():
        trials = []
        for i, combo in enumerate(combos):
            losses = []
            for seed in seeds:
                summary = run([*base, f"parametrization={param}", f"model.width={cfg.donor_width}", *combo,
                               f"seed={seed}"], out / param / "donor" / f"{i}_seed{seed}")
                ok = summary["status"] == "completed" and math.isfinite(summary.get("val_loss", math.nan))
                losses.append(summary["val_loss"] if ok else math.inf)
            trials.append({"overrides": combo, "val_loss": float(np.mean(losses))})
        best = min(trials, key=lambda t: t["val_loss"])
        if not math.isfinite(best["val_loss"]):
            raise RuntimeError(f"parametrization={param}: every donor run diverged or failed; widen the search")
        targets = [run([*base, f"parametrization={param}", f"model.width={cfg.target_width}", *best["overrides"],
                        f"seed={seed}"], out / param / "target" / f"seed{seed}") for seed in seeds]
        statuses = [t["status"] for t in targets]
        losses = [t["val_loss"] for t in targets if t["status"] == "completed"]
        result["parametrizations"][param] = {
            "donor_trials": trials, "donor_best": best["overrides"], "donor_loss": best["val_loss"],
            "target_statuses": statuses,
            "target_loss": float(np.mean(losses)) if len(losses) == len(targets) else math.nan,
        }
    (out / "transfer.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def format_pipeline(result: Mapping[str, Any]) -> str:
    lines = [f"donor width {result['donor_width']} -> target width {result['target_width']}",
             f"{'parametrization':<16}{'donor best':<28}{'donor loss':>11}{'target loss':>13}  target status"]
    for param, r in result["parametrizations"].items():
        lines.append(f"{param:<16}{' '.join(r['donor_best']):<28}{r['donor_loss']:>11.4f}"
                     f"{r['target_loss']:>13.4f}  {', '.join(r['target_statuses'])}")
    return "\n".join(lines)
