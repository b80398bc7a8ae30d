"""A run's loggers and its names in the dashboard: W&B, TensorBoard, CSV.

- Hydra introspection (`hydra_overrides_and_root`, `run_name`, `sweep_group`): what resume=auto and the W&B run
  name and group are read from, when Hydra is running; `short_name` and `launch_name` make those names.
- Loggers (`logger_configs`, `check_loggers`, `build_logger`, `wandb_run_id`, `finish_wandb`: the W&B summary's
  deciding fields), `.env` (`load_env`), and `publish_to_wandb` for the scripts that log figures and the
  µTransfer curves.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import secrets
import string
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mugpt.errors import ConfigError

log = logging.getLogger(__name__)


def load_env() -> None:
    """Load .env if present and keep W&B offline when there is no API key; silent only offline, so that an
    online run prints its link."""
    try:
        from dotenv import load_dotenv

        load_dotenv(override=False)
    except ImportError:
        pass
    if not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
        os.environ["WANDB_MODE"] = "offline"
    if wandb_offline():
        os.environ.setdefault("WANDB_SILENT", "true")


def wandb_offline() -> bool:
    return os.environ.get("WANDB_MODE", "") in ("offline", "dryrun", "disabled")


def publish_to_wandb(job_type: str, out_dir: Path, images: list[Path], tables: list[Path],
                     config: dict | None = None, name: str | None = None, group: str | None = None,
                     curves: Mapping[str, Any] | None = None) -> Path:
    """Log a script's result (the coordinate check, the µTransfer report) to W&B as one run of `job_type`: each
    PNG as an image and each CSV as a table, so the figures sit beside the training runs in the dashboard.
    `name`: default JOB_TYPE-<out_dir's launch name>; `group`: the training runs' group, to sit among them.
    `curves` (mugpt.studies.transfer.report's `curves`): the loss-vs-log2-lr curves as W&B data, see wandb_curves.
    Offline without an API key, like the training runs. Returns the W&B run's local directory."""
    import csv

    load_env()
    import wandb

    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "mugpt"), entity=os.environ.get("WANDB_ENTITY"),
                     job_type=job_type, name=name or f"{job_type}-{launch_name(out_dir)}", group=group,
                     dir=str(out_dir), config=config or {}, reinit="finish_previous")
    payload: dict[str, Any] = {path.stem: wandb.Image(str(path)) for path in images}
    for path in tables:
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
        payload[path.stem] = wandb.Table(columns=rows[0], data=rows[1:])
    if curves is not None:
        payload.update(wandb_curves(curves))
    run.log(payload)
    announce_wandb_run(run)
    local = Path(run.dir).parent
    run.finish()
    return local


def wandb_curves(curves: Mapping[str, Any]) -> dict[str, Any]:
    """The µTransfer figure as W&B data, so the dashboard draws it and can slice it: `mutransfer_curves`, a table
    with one row per (series, axis value, log2 lr): the seed-mean validation loss (null where a seed diverged or
    failed, as the report counts it), its sd and the seed counts; and per series (the parametrization)
    `loss_vs_log2_lr/SERIES`, a line chart with one line per axis value (width, depth, ...).
    curves: {"axis": its word, e.g. "width"; "by_seed": {(series, axis value): {seed: {lr: val loss}}}}."""
    import wandb

    axis = str(curves["axis"])
    rows, lines = [], {}
    for (series, value), seeds in curves["by_seed"].items():
        for lr in sorted({lr for curve in seeds.values() for lr in curve}):
            losses = [curve[lr] for curve in seeds.values() if lr in curve]
            finite = [x for x in losses if math.isfinite(x)]
            mean = sum(finite) / len(finite) if finite and len(finite) == len(losses) else None
            sd = (math.sqrt(sum((x - mean) ** 2 for x in finite) / (len(finite) - 1))
                  if mean is not None and len(finite) > 1 else None)
            rows.append([str(series), _plain_value(value), math.log2(lr), mean, sd, len(losses),
                         len(losses) - len(finite)])
            if mean is not None:
                xs, ys = lines.setdefault(str(series), {}).setdefault(f"{axis} {_plain_value(value)}", ([], []))
                xs.append(math.log2(lr))
                ys.append(mean)
    payload: dict[str, Any] = {"mutransfer_curves": wandb.Table(
        columns=["series", axis, "log2_lr", "loss_mean", "loss_sd", "seeds", "seeds_diverged"], data=rows)}
    for series, by_value in lines.items():
        keys = list(by_value)
        payload[f"loss_vs_log2_lr/{series.replace(' ', '_')}"] = wandb.plot.line_series(
            xs=[by_value[k][0] for k in keys], ys=[by_value[k][1] for k in keys], keys=keys, xname="log2 lr",
            title=f"{series}: validation loss vs log2 learning rate, one line per {axis}")
    return payload


def _plain_value(value: Any) -> Any:
    """An axis value as a table cell: numbers stay numbers, anything else (a list read as a tuple) is text."""
    return value if isinstance(value, (int, float, str)) else str(value)


# ---- Hydra introspection


def hydra_overrides_and_root(output_dir: Path) -> tuple[list[str] | None, Path | None]:
    """This job's command-line overrides and the folder its siblings live in (outputs/ or multirun/), when
    Hydra is running: what resume=auto needs to find an earlier run of the same command."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except ValueError:
        return None, None
    try:
        top = Path.cwd() / output_dir.resolve().relative_to(Path.cwd()).parts[0]
    except (ValueError, IndexError):
        top = output_dir.parent
    return list(hc.overrides.task), top


NAME_LIMIT = 60  # characters of a derived W&B run name: the runs table shows about this much
# The keys sweeps vary most, by the letter a reader expects; any other key is the initials of its last part's words
# (`parametrization.output_alpha` -> oa), and a top-level group choice is its value alone (`optim=adamw` -> adamw).
KEY_LETTERS = {"model.width": "w", "model.n_layer": "d", "model.n_head": "h", "lr_log2": "lr2^", "optim.lr": "lr",
               "seed": "s", "trainer.max_steps": "steps", "data.batch_size": "bs", "optim.weight_decay": "wd"}
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _hydra_config() -> Any:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get()
    except ValueError:
        return None


LAUNCH_ROOTS = ("outputs", "multirun")  # Hydra's folders for runs and sweeps: the same for every launch


def launch_name(path: str | Path) -> str:
    """One name per launch from its directory: from its date folder on, with the folder above it unless that is
    outputs/ or multirun/ (`multirun/2026-12-03/17-40-02` -> `2026-12-03_17-40-02`,
    `outputs/mutransfer/2026-12-03/17-40-02` -> `mutransfer_2026-12-03_17-40-02`), wherever it lies, so that a
    script run from elsewhere finds the same name; undated, its path below outputs/ or multirun/ (or the current
    folder), else its last part."""
    path = Path(path).absolute()
    parts = path.parts
    dated = [i for i, part in enumerate(parts) if DATE.fullmatch(part)]
    if dated:
        i = dated[-1]
        first = i - 1 if i > 0 and parts[i - 1] not in LAUNCH_ROOTS and parts[i - 1] != path.anchor else i
        return "_".join(parts[first:])
    roots = [i for i, part in enumerate(parts[:-1]) if part in LAUNCH_ROOTS]
    if roots:
        return "_".join(parts[roots[-1] + 1:])
    try:
        below = path.relative_to(Path.cwd()).parts
    except ValueError:
        below = ()
    return "_".join(below) if below else path.name


def _key_letters(key: str) -> str:
    if key in KEY_LETTERS:
        return KEY_LETTERS[key]
    last = key.rsplit(".", 1)[-1]
    return "".join(word[0] for word in last.split("_") if word) if "_" in last else last


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def short_name(overrides: Sequence[str], keys: Collection[str] | None = None, prefix: str = "") -> str:
    """`model.width=256 lr_log2=-9 seed=0` -> `w256-lr2^-9-s0`: the overrides of `keys` (all when None), in
    their order, each abbreviated; `prefix` first. Over NAME_LIMIT characters it is cut and ends in a hash of the
    whole, so that names cut alike stay apart. Empty when no override is left and there is no prefix."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parts = [prefix] if prefix else []
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        key = o.key_or_group
        if o.is_delete() or (keys is not None and key not in keys):
            continue
        value = re.sub(r"[\s'\"]", "", o.get_value_element_as_str())
        if "." not in key and not _number(value):
            parts.append(value)  # a group choice (parametrization=mup) or a word (optim=adamw): itself
        else:
            letters = _key_letters(key)
            parts.append(f"{letters}={value}" if value[:1].isalpha() and letters[-1:].isalpha() else letters + value)
    name = "-".join(parts)
    if len(name) > NAME_LIMIT:
        name = f"{name[:NAME_LIMIT - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


def _excluded(key: str, exclude: Collection[str]) -> bool:
    return any(key == e or key.startswith(f"{e}.") for e in exclude)


def sweep_keys(overrides: Sequence[str]) -> set[str]:
    """The keys a launch's overrides give sweep syntax (`model.width=32,64`, `range(...)`, `interval(...)`,
    `choice(...)`), in Hydra's own reading of them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return {o.key_or_group for o in OverridesParser.create().parse_overrides(list(overrides)) if o.is_sweep_override()}


def swept_keys(hc: Any) -> set[str] | None:
    """The keys a multirun varies: those given sweep syntax on its command line (`model.width=32,64`,
    `range(...)`), read from the sweep's multirun.yaml (Hydra's basic sweeper writes it before the first job),
    and the keys of `hydra.sweeper.params` (Optuna's search space, the basic sweeper's params). None when neither
    is there: then every override counts."""
    keys = set((hc.sweeper.get("params") or {}).keys())
    multirun = Path(hc.sweep.dir) / "multirun.yaml"
    if multirun.is_file():
        keys |= sweep_keys(OmegaConf.load(multirun).hydra.overrides.task)
    elif not keys:
        return None
    return keys


def run_name(cfg: DictConfig) -> str | None:
    """A W&B run name, when Hydra is running: a multirun job's swept overrides, a single run's overrides (the keys
    Hydra's override_dirname leaves out are left out here too), abbreviated by short_name; the launch name of
    the run's folder when that leaves nothing."""
    from hydra.types import RunMode

    hc = _hydra_config()
    if hc is None:
        return None
    exclude = set(hc.job.config.override_dirname.exclude_keys)
    overrides = [o for o in hc.overrides.task if not _excluded(o.split("=", 1)[0].lstrip("+~"), exclude)]
    keys = swept_keys(hc) if hc.mode == RunMode.MULTIRUN else None
    return short_name(overrides, keys) or launch_name(cfg.output_dir)


def sweep_group() -> str | None:
    """One W&B group per multirun launch, named by its sweep directory with its date and time
    (multirun/2026-12-03/17-40-02 -> 2026-12-03_17-40-02); None for a single run."""
    from hydra.types import RunMode

    hc = _hydra_config()
    if hc is None or hc.mode != RunMode.MULTIRUN:
        return None
    return launch_name(hc.sweep.dir)


# ---- loggers


def wandb_run_id(output_dir: Path) -> str:
    """One W&B run id per run directory, kept in a file so that a resumed run logs into the same W&B run."""
    path = output_dir / "wandb_run_id"
    if path.is_file():
        return path.read_text().strip()
    # W&B ids are short lowercase alphanumerics; its own generator moved between releases, so make one here.
    alphabet = string.ascii_lowercase + string.digits
    run_id = "".join(secrets.choice(alphabet) for _ in range(8))
    path.write_text(run_id)
    return run_id


def logger_configs(cfg: DictConfig) -> dict[str, DictConfig]:
    """The selected loggers by name: `logger=csv` gives one, `logger=[wandb,tensorboard]` two, `logger=none` none
    (each conf/logger/*.yaml is packaged under logger.<name>, so a list of them composes without collisions)."""
    return {name: c for name, c in (cfg.get("logger") or {}).items()
            if isinstance(c, DictConfig) and c.get("_target_")}


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def check_loggers(cfg: DictConfig) -> None:
    """Fail fast on a logger whose package is missing, or a W&B name, group, job type or tag list that W&B
    cannot take, before any data is read."""
    import importlib.util

    from omegaconf import ListConfig

    for name, c in logger_configs(cfg).items():
        if c._target_.endswith("TensorBoardLogger") and not any(
                importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
            raise ConfigError(f"logger={name}: needs the tensorboard package (pip install -e '.[tb]')")
        if c._target_.endswith("WandbLogger"):
            for key in ("name", "group", "job_type"):
                if c.get(key) is not None and not _scalar(c.get(key)):
                    raise ConfigError(f"logger.{name}.{key}={c.get(key)}: give one text (or null: derived)")
            tags = c.get("tags")
            if tags is not None and (not isinstance(tags, ListConfig)
                                     or not all(_scalar(t) and 0 < len(str(t)) <= 64 for t in tags)):
                raise ConfigError(f"logger.{name}.tags={tags}: give a list of tags of 1 to 64 characters, e.g. "
                                  f"[baseline] (or null: derived)")


def run_tags(cfg: DictConfig) -> list[str]:
    """parametrization, optimizer, width and depth, e.g. [mup, adamw, w256, d2]: the dashboard's filters."""
    values = [OmegaConf.select(cfg, "parametrization.name"), OmegaConf.select(cfg, "optim.name")]
    width, depth = OmegaConf.select(cfg, "model.width"), OmegaConf.select(cfg, "model.n_layer")
    return [str(v) for v in values if v is not None] + ([f"w{width}"] if width is not None else []) + (
        [f"d{depth}"] if depth is not None else [])


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def build_logger(cfg: DictConfig, output_dir: Path) -> list:
    """Lightning loggers for this run, all writing into its output directory (empty when there are none). The
    W&B run is started here, so that its link is printed at the start (online) and a run that fails at any
    step still has a W&B run to show it in; logger.wandb's name, group, job_type and tags, null, are derived
    (without Hydra, the name is the run folder's launch name)."""
    loggers = []
    for c in logger_configs(cfg).values():
        kwargs: dict[str, Any] = {}
        wandb_logger = c._target_.endswith("WandbLogger")
        if wandb_logger:
            tags = c.get("tags")
            kwargs = {"save_dir": str(output_dir),
                      "name": _text(c.get("name")) or run_name(cfg) or launch_name(output_dir),
                      "group": _text(c.get("group")) or sweep_group(), "job_type": _text(c.get("job_type")) or "train",
                      "tags": run_tags(cfg) if tags is None else [str(t) for t in tags],
                      "config": OmegaConf.to_container(cfg, resolve=True), "id": wandb_run_id(output_dir),
                      "resume": "allow"}
        elif c._target_.endswith(("CSVLogger", "TensorBoardLogger")):
            kwargs = {"save_dir": str(output_dir)}
        # through a partial: WandbLogger's `config` keyword would collide with instantiate's own `config`
        logger = instantiate(c, _partial_=True)(**kwargs)
        if wandb_logger:
            experiment = logger.experiment
            # the best validation loss beside the last one (summary val/loss.min, val/loss.last)
            experiment.define_metric("val/loss", summary="min,last", step_metric="trainer/global_step",
                                     step_sync=True)
            announce_wandb_run(experiment)
        loggers.append(logger)
    return loggers


def announce_wandb_run(run: Any) -> None:
    """Online, one line with the run's link (offline there is none: `wandb sync` uploads it later)."""
    if not getattr(run, "offline", True) and getattr(run, "url", None):
        print(f"W&B run {run.name}: {run.url}", flush=True)


# The summary fields that decide a run, copied into its W&B summary: a diverged or failed run must not look
# like a finished one in the runs table.
WANDB_SUMMARY_KEYS = ("status", "diverged_step", "diverged_reason", "signal", "error", "val_loss", "tokens_per_sec",
                      "params", "steps", "tokens", "wall_seconds")


def finish_wandb(loggers: list, summary: Mapping[str, Any] | None = None) -> None:
    """Close this run's W&B run: each multirun job must end its own, or the next job logs into it. With
    `summary`, its deciding fields (WANDB_SUMMARY_KEYS) go into the W&B summary first, and a failed run ends
    with exit code 1, which W&B shows as its state."""
    runs = [one for one in loggers if type(one).__name__ == "WandbLogger"]
    if not runs:
        return
    import wandb

    if summary is not None:
        fields = {key: summary[key] for key in WANDB_SUMMARY_KEYS if summary.get(key) is not None}
        for one in runs:
            try:
                one.experiment.summary.update(fields)
            except Exception as exc:  # summary.json has the run's outcome: W&B's trouble must not replace it
                log.warning("the W&B summary was not updated: %s", exc)
    wandb.finish(exit_code=1 if summary is not None and summary.get("status") == "failed" else None)
