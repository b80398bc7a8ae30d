"""µTransfer in one command (scripts/mutransfer.py is its command line, conf/mutransfer.yaml its options, and its
docstring says what it runs and writes): each run composed inside the script's Hydra app, the runs' W&B identity
(group, role, name), the stage runner (in turn, or side by side on Ray through `mugpt.studies.grid.run_grid`),
and the report.
"""

import importlib.util
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from hydra import compose
from omegaconf import DictConfig, OmegaConf

from mugpt.studies.grid import ray_launcher_settings, run_grid
from mugpt.studies.transfer import (
    chosen_settings,
    format_pipeline,
    report,
    report_axis,
    run_pipeline,
    transfer_text,
)
from mugpt.training.loggers import launch_name, logger_configs, publish_to_wandb, short_name
from mugpt.training.train import check_config, train

log = logging.getLogger("mugpt")


# run_pipeline's folders (conf/mutransfer.yaml: OUTPUT/PARAMETRIZATION/{donor,target,target_search}/) -> the
# run's role, its W&B job_type and name prefix; the target's own tuning is the target's too
ROLES = {"donor": "donor", "target": "target", "target_search": "target"}


def train_one(overrides: list[str], output_dir: Path, logging_overrides: tuple[str, ...] = ()) -> dict:
    """One training run, composed exactly as `python src/train.py OVERRIDES` would compose it; logging_overrides
    (its W&B identity) are added but not shown."""
    cfg = compose(config_name="config", overrides=[*overrides, *logging_overrides, f"output_dir={output_dir}"])
    log.info("run: %s", " ".join(overrides))
    try:
        return train(cfg)
    except Exception as exc:  # recorded as failed in its summary.json; the pipeline goes on
        log.error("run failed: %s", exc)
        return {"status": "failed", "val_loss": float("nan")}


def check_one(overrides: list[str]) -> None:
    """Refuse a run's config before anything trains; the error names the run and the option."""
    try:
        check_config(compose(config_name="config", overrides=[*overrides, "output_dir=unused"]))
    except Exception as exc:
        raise ValueError(f"run `{' '.join(overrides)}` cannot start: {exc}") from exc


def compose_one(overrides: list[str]):
    """The training config of `overrides` (the donor's depth, steps or batch are read from it), inside this app."""
    try:
        return compose(config_name="config", overrides=[*overrides, "output_dir=unused"])
    except Exception as exc:
        raise ValueError(f"`{' '.join(overrides)}` cannot be composed: {exc}") from exc


def _search_keys(space, prefix: str = "") -> dict[str, int]:
    """{"parametrization": {"output_alpha": [64, 128]}} -> {"parametrization.output_alpha": 2}: each searched key
    and its number of values."""
    keys: dict[str, int] = {}
    for key, values in (space or {}).items():
        if isinstance(values, dict):
            keys.update(_search_keys(values, f"{prefix}{key}."))
        else:
            keys[f"{prefix}{key}"] = len(values) if isinstance(values, list) else 1
    return keys


def wandb_identity(cfg: DictConfig) -> tuple[Callable[[list[str], Path], tuple[str, ...]], str] | None:
    """For runs that log to W&B (None when they do not): the launch's group, and (overrides, output_dir) -> the
    overrides naming a run in it, by role and by the settings that tell its runs apart (the parametrization and
    seed when there are several, the searched keys with several values, every key of the target's own search),
    e.g. donor-mup-lr2^-8 and target-mup-lr2^-8. A logger.wandb.* in `overrides` is the user's and stays."""
    if not any(c._target_.endswith("WandbLogger") for c in logger_configs(
            compose_one([f"+experiment={cfg.training_experiment}", *cfg.overrides])).values()):
        return None
    spaces = OmegaConf.to_container(cfg, resolve=True)
    searched = _search_keys(spaces["search"])
    for own in (spaces.get("search_by_parametrization") or {}).values():
        searched.update({k: max(n, searched.get(k, 0)) for k, n in _search_keys(own).items()})
    keys = {k for k, n in searched.items() if n > 1} | set(_search_keys(spaces.get("target_search")))
    keys |= {k for k, n in (("parametrization", len(cfg.parametrizations)), ("seed", len(cfg.seeds))) if n > 1}
    given = dict(o.lstrip("+").split("=", 1) for o in cfg.overrides if "=" in o)
    group = given.get("logger.wandb.group", "").strip("'\"") or launch_name(cfg.output_dir)

    def identity(overrides: list[str], output_dir: Path) -> tuple[str, ...]:
        role = ROLES.get(Path(output_dir).parent.name, "train")
        derived = {"name": f"'{short_name(overrides, keys, prefix=role)}'", "group": f"'{group}'", "job_type": role}
        return tuple(f"++logger.wandb.{k}={v}" for k, v in derived.items() if f"logger.wandb.{k}" not in given)

    return identity, group


def stage_runner(cfg: DictConfig, identity) -> Callable | None:
    """launcher=ray: each stage's runs side by side as Ray tasks (studies.grid.run_grid, the studies' one grid
    runner); null: in turn here."""
    if cfg.launcher is None:
        return None
    if cfg.launcher != "ray":
        raise ValueError(f"launcher={cfg.launcher}: unknown (null: one run after another; ray: side by side)")
    if importlib.util.find_spec("ray") is None:
        raise ValueError("launcher=ray: needs Ray: pip install -e '.[ray]'")
    settings = list(cfg.launcher_overrides)
    ray_launcher_settings(settings)  # a bad launcher_overrides is refused before anything trains
    return lambda jobs: run_grid([([*o, *(identity(o, f) if identity else ())], f) for o, f in jobs], "ray",
                                 launcher_overrides=settings)


def mutransfer(cfg: DictConfig) -> dict:
    """The whole pipeline from conf/mutransfer.yaml's options, inside scripts/mutransfer.py's Hydra app (the runs
    are composed with its config search path): the sweeps and runs, the report, and its W&B run when the runs log
    there; returns run_pipeline's result. A refused option or run exits with one line, before any training."""
    try:
        identity, group = wandb_identity(cfg) or (None, None)

        def run(overrides: list[str], output_dir: Path) -> dict:
            return train_one(overrides, output_dir, identity(overrides, output_dir) if identity else ())

        result = run_pipeline(cfg, run, check=check_one, compose=compose_one, run_many=stage_runner(cfg, identity))
    except ValueError as exc:  # a refused option or run, before any training (train_one records its own failures)
        sys.exit(f"error: {exc}")
    out = Path(cfg.output_dir)
    # the figure: each parametrization's runs at the non-lr settings its donor chose; the CSV keeps all runs
    keys, chosen = chosen_settings(result)
    # the report's axis is the first on which the target differs (width, depth, steps, batch)
    written = report(out, out, title=f"µTransfer: {transfer_text(result)}", keys=keys, select=chosen,
                     axis=report_axis(result))
    print("\n" + format_pipeline(result))
    print(f"\nwrote {out / 'transfer.json'}, " + ", ".join(str(f) for f in written["files"]))
    if identity is not None:  # the report beside its runs, in their group
        publish_to_wandb("report", out, [f for f in written["files"] if f.suffix == ".png"],
                         [f for f in written["files"] if f.suffix == ".csv"], OmegaConf.to_container(cfg, resolve=True),
                         name="report", group=group, curves=written["curves"])
    return result
