"""µTransfer in one procedure: a donor sweep, its best settings trained on the target (and optionally the
target's own search, for the regret), and the result's text."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from omegaconf import OmegaConf

from mugpt.config import check_option
from mugpt.studies.stats import format_ci, format_sd, mean_ci
from mugpt.studies.sweep import edge_warning, grid_edge
from mugpt.studies.transfer.analysis import best_log2_lr

# The axes a target may differ from its donor on: (the name in conf/mutransfer.yaml's donor_X/target_X, the
# training config key it sets).
SHAPE = (("width", "model.width"), ("depth", "model.n_layer"), ("steps", "trainer.max_steps"),
         ("batch_size", "data.batch_size"))
LR_KEYS = ("lr_log2", "optim.lr")


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


def grid(search: Mapping[str, Any], name: str = "search") -> list[list[str]]:
    """All combinations of a {override: [values]} search space, as lists of Hydra overrides; `name` is the
    option the space came from, for the error."""
    combos: list[list[str]] = [[]]
    for key, values in _flatten(search).items():
        if not isinstance(values, (list, tuple)):
            raise ValueError(f"{name}.{key}={values}: give a list of values, e.g. [{values}]")
        if not values:
            raise ValueError(f"{name}.{key}: give at least one value")
        combos = [c + [f"{key}={v}"] for c in combos for v in values]
    return combos


def _settings(overrides: Sequence[str]) -> dict[str, Any]:
    """["lr_log2=-7", "model.init_std=0.02"] -> {"lr_log2": -7, "model.init_std": 0.02}, values read as YAML
    (so `-7` and `-7.0` are one setting)."""
    return {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in overrides)}


def _merge(overrides: Sequence[str], combo: Sequence[str]) -> list[str]:
    """The donor's chosen overrides with `combo`'s keys replaced (or added): a target-search point."""
    merged = dict(o.split("=", 1) for o in overrides)
    merged.update(o.split("=", 1) for o in combo)
    return [f"{k}={v}" for k, v in merged.items()]


def chosen_settings(result: Mapping[str, Any]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """From run_pipeline's result: the searched config keys other than the learning rate, and each
    parametrization's chosen values of them (to draw the donor's curve at the settings it picked)."""
    chosen: dict[str, dict[str, Any]] = {}
    for param, r in result["parametrizations"].items():
        chosen[param] = {k: v for k, v in _settings(r["donor_best"]).items() if k not in LR_KEYS}
    keys = sorted({k for values in chosen.values() for k in values})
    return keys, chosen


def _compose_training(overrides: list[str]) -> Any:
    from mugpt.config import compose_training_config

    return compose_training_config([*overrides, "output_dir=unused"])


def transfer_shapes(cfg: Any, compose: Callable[[list[str]], Any] | None = None) -> tuple[dict, dict]:
    """The donor's and the target's width, depth, steps and batch size ({"width": 64, "depth": 2, ...}).

    donor_width is required; donor_depth/steps/batch_size null are the training experiment's (with `overrides`),
    read by composing it only where the target sets that axis (then the donor's value is needed: µP's
    base_depth, the batch rule's base_batch, the report); elsewhere they stay None and both runs use the
    experiment's. target_X null is the donor's. Refused, in one line naming the option: a value that is not a
    positive integer, a narrower or shallower target (µTransfer tunes small and transfers up; run length and
    batch may go either way), and a target that is the donor on every axis."""
    donor, target = ({axis: check_option(cfg.get(f"{end}_{axis}"), f"{end}_{axis}", int, nullable=True, positive=True,
                                         null_means=unset) for axis, _ in SHAPE}
                     for end, unset in (("donor", "the training experiment's"), ("target", "the donor's")))
    if donor["width"] is None:
        raise ValueError("donor_width: required (a positive integer, µP's base width)")
    unknown = [(axis, key) for axis, key in SHAPE if target[axis] is not None and donor[axis] is None]
    if unknown:
        overrides = [f"+experiment={cfg.training_experiment}", *cfg.overrides]
        config = (compose or _compose_training)(overrides)
        for axis, key in unknown:
            donor[axis] = int(OmegaConf.select(config, key))
    target = {axis: donor[axis] if target[axis] is None else target[axis] for axis, _ in SHAPE}
    if target["width"] < donor["width"]:
        raise ValueError(f"target_width={target['width']}: narrower than donor_width={donor['width']} (µTransfer "
                         f"tunes the small model and transfers up)")
    if donor["depth"] is not None and target["depth"] < donor["depth"]:
        raise ValueError(f"target_depth={target['depth']}: shallower than the donor's depth {donor['depth']} "
                         f"(µTransfer tunes the small model and transfers up)")
    if donor == target:
        raise ValueError(f"target_width, target_depth, target_steps, target_batch_size: the target is the donor on "
                         f"every axis ({_shape_text(donor)}); give at least one of them another value")
    return donor, target


def _shape_text(shape: Mapping[str, int | None]) -> str:
    """`width 64, depth 2`: the axes that are known (an unknown one is the training experiment's)."""
    return ", ".join(f"{axis.replace('_', ' ')} {shape[axis]}" for axis, _ in SHAPE if shape.get(axis) is not None)


def _shape_overrides(shape: Mapping[str, int | None]) -> list[str]:
    return [f"{key}={shape[axis]}" for axis, key in SHAPE if shape[axis] is not None]


def report_axis(result: Mapping[str, Any]) -> str:
    """The axis the pipeline's report measures transfer along: the first one on which the target differs (width,
    then depth, steps, batch), as a key mutransfer_report reads (`width`, `model.n_layer`, ...)."""
    for axis, key in SHAPE:
        if result["donor"][axis] != result["target"][axis]:
            return "width" if axis == "width" else key
    return "width"


Job = tuple[list[str], Path]  # one training run: its overrides and its output directory


def run_each(run: Callable[[list[str], Path], Mapping[str, Any]]) -> Callable[[Sequence[Job]], list[Mapping]]:
    """A stage's runs one after another in this process: the default way to train a stage's batch of runs."""
    return lambda jobs: [run(overrides, folder) for overrides, folder in jobs]


def _train_stage(run_many: Callable[[Sequence[Job]], list[Mapping]], settings: Sequence[tuple[list[str], Path, str]],
                 seeds: Sequence[int]) -> list[tuple[list[float], list[str]]]:
    """Every setting over the seeds, each run in folder/STEMseedN, given to `run_many` as one batch (a launcher
    may run them side by side): per setting, per seed its val loss (+inf when it diverged or failed) and status."""
    jobs = [([*overrides, f"seed={seed}"], folder / f"{stem}seed{seed}")
            for overrides, folder, stem in settings for seed in seeds]
    summaries = iter(run_many(jobs))
    results = []
    for _ in settings:
        losses, statuses = [], []
        for _seed in seeds:
            summary = next(summaries)
            ok = summary["status"] == "completed" and math.isfinite(summary.get("val_loss", math.nan))
            losses.append(summary["val_loss"] if ok else math.inf)
            statuses.append(summary["status"])
        results.append((losses, statuses))
    return results


def _lr_curve(trials: Sequence[Mapping[str, Any]], best: Mapping[str, Any]) -> dict[float, float]:
    """{lr: loss} along the trials that share the best's other settings (empty when the search has no
    learning rate)."""
    chosen = _settings(best["overrides"])
    key = next((k for k in LR_KEYS if k in chosen), None)
    if key is None:
        return {}
    others = {k: v for k, v in chosen.items() if k != key}
    curve = {}
    for t in trials:
        s = _settings(t["overrides"])
        if {k: v for k, v in s.items() if k != key} == others:
            curve[2.0 ** float(s[key]) if key == "lr_log2" else float(s[key])] = t["val_loss"]
    return dict(sorted(curve.items()))


def _refined_log2_lr(trials: Sequence[Mapping[str, Any]], best: Mapping[str, Any]) -> float:
    """The parabola-refined best log2 lr along the trials that share the best's other settings (nan when the
    search has no learning rate)."""
    curve = _lr_curve(trials, best)
    return best_log2_lr(curve)[1] if curve else math.nan


def _lr_edge(trials: Sequence[Mapping[str, Any]], best: Mapping[str, Any]) -> str | None:
    """'lowest'/'highest' when the best trial's learning rate is at that end of the rates tried beside it."""
    curve = _lr_curve(trials, best)
    return grid_edge(list(curve), best_log2_lr(curve)[0]) if curve else None


def _trial(overrides: list[str], losses: list[float]) -> dict[str, Any]:
    return {"overrides": overrides, "val_loss": float(np.mean(losses)), "seed_losses": losses}


def run_pipeline(cfg: Any, run: Callable[[list[str], Path], Mapping[str, Any]],
                 check: Callable[[list[str]], None] | None = None,
                 compose: Callable[[list[str]], Any] | None = None,
                 run_many: Callable[[Sequence[Job]], list[Mapping]] | None = None) -> dict:
    """Donor sweep → best hyperparameters → target runs (→ the target's own tuning), per parametrization.

    cfg: shaped like conf/mutransfer.yaml. run(overrides, output_dir) -> summary dict trains one model (the
    script passes mugpt.training.train.train on a composed config). check(overrides), if given, raises on a config
    that cannot run; every donor run, the target and every target-search run are checked before the first run
    trains. compose(overrides) -> the composed training config, to read the donor's depth, steps or batch from
    the training experiment when the target sets one and donor_X is null (default: mugpt.config's composer; the
    script passes Hydra's compose inside its own app). run_many(jobs) -> their summaries, in order: how each
    stage's batch of runs (the donor grid × seeds, the target's seeds, its search × seeds) is trained; default
    `run` on each in turn; the script's launcher=ray runs them side by side. Returns the result also written to
    OUTPUT/transfer.json and printed by the script.

    With `target_search` (e.g. {lr_log2: [...]}) the target is also trained at each of those points, the donor's
    other choices kept, so that the transferred settings are measured against the target's own tuned optimum:
    the regret, mean and per seed."""
    out = Path(cfg.output_dir)
    seeds = list(cfg.seeds)
    donor, target = transfer_shapes(cfg, compose)
    shared = OmegaConf.to_container(cfg.search, resolve=True)
    # options only one parametrization has (µP's multipliers) are searched for that one alone
    own = cfg.get("search_by_parametrization")
    own = OmegaConf.to_container(own, resolve=True) if own else {}
    target_search = cfg.get("target_search")
    target_search = OmegaConf.to_container(target_search, resolve=True) if target_search else {}
    if not isinstance(target_search, Mapping):
        raise ValueError(f"target_search={target_search}: give {{key: [values]}}, e.g. {{lr_log2: [-9, -8, -7]}}")
    target_plan = grid(target_search, "target_search") if target_search else []
    # µP's base width and depth are the donor's: there µP and SP are the same model, and the donor's tuning is
    # µP's. `++`: SP's parametrization config has no base_depth key (it accepts µP's options and ignores them).
    base = [f"+experiment={cfg.training_experiment}", f"parametrization.base_width={donor['width']}"]
    if donor["depth"] != target["depth"]:
        base.append(f"++parametrization.base_depth={donor['depth']}")
    if donor["batch_size"] != target["batch_size"]:  # optim.batch_lr_rule's reference (ignored by rule none)
        base.append(f"optim.base_batch={donor['batch_size']}")
    base += list(cfg.overrides)
    donor_shape, target_shape = _shape_overrides(donor), _shape_overrides(target)
    result: dict[str, Any] = {"donor_width": donor["width"], "target_width": target["width"], "donor": donor,
                              "target": target, "seeds": seeds, "parametrizations": {}}
    # merged key by key: µP's `model.x` must not replace the shared search's whole `model` subtree
    plans = {param: grid({**_flatten(shared), **_flatten(own.get(param) or {})}) for param in cfg.parametrizations}
    if check is not None:  # a target that cannot be built must not be found after an hour of donor runs
        for param, combos in plans.items():
            for combo in combos:
                check([*base, f"parametrization={param}", *donor_shape, *combo])
            check([*base, f"parametrization={param}", *target_shape, *combos[0]])
            for combo in target_plan:
                check([*base, f"parametrization={param}", *target_shape, *_merge(combos[0], combo)])
    run_many = run_many or run_each(run)
    for param, combos in plans.items():
        donors = _train_stage(run_many, [([*base, f"parametrization={param}", *donor_shape, *combo],
                                          out / param / "donor", f"{i}_") for i, combo in enumerate(combos)], seeds)
        trials = [_trial(combo, losses) for combo, (losses, _) in zip(combos, donors)]
        best = min(trials, key=lambda t: t["val_loss"])
        if not math.isfinite(best["val_loss"]):
            raise RuntimeError(f"parametrization={param}: every donor run diverged or failed; widen the search")
        transferred = best["overrides"]
        [(losses, statuses)] = _train_stage(run_many, [([*base, f"parametrization={param}", *target_shape,
                                                          *transferred], out / param / "target", "")], seeds)
        r: dict[str, Any] = {
            "donor_trials": trials, "donor_best": transferred, "donor_loss": best["val_loss"],
            "donor_best_log2_lr": _refined_log2_lr(trials, best), "donor_edge": _lr_edge(trials, best),
            "target_statuses": statuses, "target_losses": losses,
            "target_loss": float(np.mean(losses)) if all(s == "completed" for s in statuses) else math.nan,
            "target_loss_sd": mean_ci(losses)["sd"],
        }
        if target_plan:
            points = [(i, _merge(transferred, combo)) for i, combo in enumerate(target_plan)]
            # the transferred point is already trained: the target itself
            todo = [(i, o) for i, o in points if _settings(o) != _settings(transferred)]
            searched = _train_stage(run_many, [([*base, f"parametrization={param}", *target_shape, *o],
                                                out / param / "target_search", f"{i}_") for i, o in todo], seeds)
            trained = {i: point for (i, _), (point, _) in zip(todo, searched)}
            tuned = [_trial(o, trained.get(i, losses)) for i, o in points]
            own_best = min(tuned, key=lambda t: t["val_loss"])
            seed_best = [min(t["seed_losses"][j] for t in tuned) for j in range(len(seeds))]
            r.update({
                "target_search_trials": tuned, "target_best": own_best["overrides"],
                "target_best_loss": own_best["val_loss"], "target_best_loss_sd": mean_ci(own_best["seed_losses"])["sd"],
                "target_best_log2_lr": _refined_log2_lr(tuned, own_best), "target_edge": _lr_edge(tuned, own_best),
                "regret": float(np.mean(losses)) - own_best["val_loss"],
                "regret_seeds": mean_ci(loss - b for loss, b in zip(losses, seed_best)),
                "regret_seeds_vs_mean_best": mean_ci(loss - own_best["val_loss"] for loss in losses),
            })
        result["parametrizations"][param] = r
    (out / "transfer.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def _statuses_text(statuses: Sequence[str]) -> str:
    counts = dict.fromkeys(statuses, 0)
    for s in statuses:
        counts[s] += 1
    return ", ".join(f"{n} {s}" for s, n in counts.items())


def _log2_text(x: float) -> str:
    return f" (log2 lr {x:+.2f})" if math.isfinite(x) else ""


def transfer_text(result: Mapping[str, Any]) -> str:
    """`donor width 64, depth 2 → target width 64, depth 8`: the known axes of both (an axis neither sets is the
    training experiment's)."""
    donor = result.get("donor") or {"width": result["donor_width"]}
    target = result.get("target") or {"width": result["target_width"]}
    return f"donor {_shape_text(donor)} → target {_shape_text(target)}"


def format_pipeline(result: Mapping[str, Any]) -> str:
    """Per parametrization: the donor's choice and loss, the target's loss with it (mean ± sd over seeds), and
    with target_search the target's own best and the regret of the transferred settings (± 95% CI)."""
    seeds = result.get("seeds")
    lines = [transfer_text(result)
             + (f" ({len(seeds)} seed{'s' if len(seeds) != 1 else ''}: {', '.join(map(str, seeds))})"
                if seeds else "")]
    for param, r in result["parametrizations"].items():
        losses = r.get("target_losses", [r["target_loss"]])
        lines.append(param)
        lines.append(f"  donor best     {' '.join(r['donor_best'])}{_log2_text(r.get('donor_best_log2_lr', math.nan))}"
                     f"   loss {r['donor_loss']:.4f}")
        if r.get("donor_edge"):
            lines.append(f"  warning: donor's {edge_warning(r['donor_edge'], 2.0 ** r['donor_best_log2_lr'])}")
        lines.append(f"  target         loss {format_sd(mean_ci(losses))}   {_statuses_text(r['target_statuses'])}")
        if "target_best" in r:
            best = mean_ci(next(t["seed_losses"] for t in r["target_search_trials"]
                                if t["overrides"] == r["target_best"]))
            lines.append(f"  target's best  {' '.join(r['target_best'])}{_log2_text(r['target_best_log2_lr'])}"
                         f"   loss {format_sd(best)}")
            per_seed = format_ci(r["regret_seeds"], ".4f", "nats")
            lines.append(f"  regret         {r['regret']:.4f} nats; per seed {per_seed} vs each seed's own best")
            if r.get("target_edge"):
                lines.append(f"  warning: target's {edge_warning(r['target_edge'], 2.0 ** r['target_best_log2_lr'])}")
        else:
            lines.append("  target's best  not searched (set target_search, e.g. {lr_log2: [...]}, for the regret)")
    lines.append(verdict(result))
    return "\n".join(lines)


def verdict(result: Mapping[str, Any]) -> str:
    """The pipeline's answer in one line: per parametrization the donor's choice, the target's loss with it and,
    when the target was searched, the regret; then which parametrization's target came out best."""
    parts, losses = [], {}
    for param, r in result["parametrizations"].items():
        text = f"{param}: donor's {' '.join(r['donor_best'])}{' (grid edge)' if r.get('donor_edge') else ''}"
        if math.isfinite(r["target_loss"]):
            losses[param] = r["target_loss"]
            text += f" -> target loss {r['target_loss']:.4f}"
        else:
            text += f" -> target {_statuses_text(r['target_statuses'])}"
        if "regret" in r:
            text += f", regret {r['regret']:.4f} nats{' (grid edge)' if r.get('target_edge') else ''}"
        parts.append(text)
    best = f"; best target: {min(losses, key=losses.__getitem__)}" if len(losses) > 1 else ""
    return "verdict: " + "; ".join(parts) + best
