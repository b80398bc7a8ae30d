"""The project's Hydra sweeper on Optuna >= 4: `python src/train.py -m hydra/sweeper=optuna_lr` (also optuna_mup,
optuna; conf/hydra/sweeper/). Hydra looks for sweepers only under the `hydra_plugins` namespace, so the class
Hydra instantiates is `hydra_plugins.mugpt_optuna_sweeper.optuna_sweeper.OptunaSweeper`, a name for this one.

Each trial is one training job started through the configured Hydra launcher; its objective is what
`src/train.py`'s `main` returns: the validation loss, inf for a diverged run (told to Optuna as inf, so it ranks
last, and marked `diverged`), None for a failed run (a failed trial, as is a job that raised).

Search dimensions are written as in hydra-optuna-sweeper: `interval(a, b)` (uniform float), `tag(log, interval(a,
b))` (log-uniform), `range(start, stop[, step])` (integers or floats on a step, stop excluded, as Hydra's range),
`choice(...)` and `shuffle(range(...))` (categorical); they come from `hydra.sweeper.params` and from sweep overrides
on the command line (which win). Other overrides are passed to every job unchanged.

Storage: null (in memory), a database URL (`sqlite:///study.db`, `postgresql://...`) or `journal://PATH`, Optuna's
journal file, for several workers on a shared file system. Workers started with the same storage and study_name
share one study: `n_trials` is the study's total, so each worker starts trials until the study holds n_trials
(counting failed and still-running ones), and a relaunch continues an unfinished study instead of adding n_trials.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from mugpt.errors import ConfigError

log = logging.getLogger(__name__)

JOURNAL = "journal://"
RESULTS_FILE = "optimization_results.yaml"
ERROR_CHARS = 2000  # a failed trial's error as a user attribute: enough to read, small in a shared journal


@dataclass
class Dimension:
    """One search dimension: its Optuna distribution, the values a grid visits (None: continuous), and the override
    text of each categorical value that is not a plain number or string (a list written `[1,2]`)."""

    key: str
    distribution: Any
    grid: list | None
    texts: dict = field(default_factory=dict)

    def suggest(self, trial: Any) -> None:
        from optuna.distributions import CategoricalDistribution, FloatDistribution

        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            trial.suggest_categorical(self.key, d.choices)
        elif isinstance(d, FloatDistribution):
            trial.suggest_float(self.key, d.low, d.high, step=d.step, log=d.log)
        else:
            trial.suggest_int(self.key, d.low, d.high, step=d.step, log=d.log)

    def override(self, value: Any) -> str:
        text = self.texts.get((type(value), value))
        return f"{self.key}={text if text is not None else override_text(value)}"


def override_text(value: Any) -> str:
    """A value as an override's right-hand side that Hydra parses back to the same value."""
    text = Transformer.str(value)
    if isinstance(value, str) and _parse_value(text) != value:
        # Hydra's own escaping leaves words it would read as other types ("true", "1e-3") or with a quote
        quote = "'" if "'" not in value else '"'
        text = quote + value.replace("\\", "\\\\").replace(quote, "\\" + quote) + quote
    return text


def _parse_value(text: str) -> Any:
    try:
        return OverridesParser.create().parse_overrides([f"k={text}"])[0].value()
    except Exception:
        return object()  # equal to nothing


def search_space(params: Mapping[str, Any] | None, arguments: Sequence[str]) -> tuple[list[str], dict[str, Dimension]]:
    """(the overrides every job gets, the search dimensions by key) from `hydra.sweeper.params` and the command
    line; a key given on both is taken from the command line (a fixed value there removes the dimension)."""
    parser = OverridesParser.create()
    lines = [(f"hydra.sweeper.params.{key}", f"{key}={value}" if isinstance(value, str)
              else f"{key}={Transformer.str(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)}")
             for key, value in (params or {}).items()]
    lines += [("the command line", arg) for arg in arguments]
    overrides: dict[str, tuple[str, Override]] = {}
    for origin, line in lines:
        try:
            (override,) = parser.parse_overrides([line])
        except Exception as exc:
            raise ConfigError(f"{origin}: cannot parse {line!r}: {str(exc).splitlines()[0]}") from None
        key = override.get_key_element()
        overrides.pop(key, None)  # the later one wins, and takes the later place
        overrides[key] = (origin, override)
    fixed = [o.input_line for _, o in overrides.values() if not o.is_sweep_override()]
    dimensions = {key: _dimension(origin, key, o) for key, (origin, o) in overrides.items() if o.is_sweep_override()}
    return fixed, dimensions


def _dimension(origin: str, key: str, override: Override) -> Dimension:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    where = f"{origin}: {override.input_line!r}"
    log_scale = "log" in (getattr(value, "tags", None) or ())
    if isinstance(value, IntervalSweep):
        low, high = value.start, value.end
        if low is None or high is None or not low < high:
            raise ConfigError(f"{where}: an interval needs a lower bound below its upper bound")
        if log_scale and low <= 0:
            raise ConfigError(f"{where}: a log-scale interval needs a positive lower bound")
        return Dimension(key, FloatDistribution(float(low), float(high), log=log_scale), None)
    if log_scale:
        raise ConfigError(f"{where}: tag(log, ...) applies to interval(...) only")
    if isinstance(value, RangeSweep) and not value.shuffle:
        values = list(override.sweep_iterator())
        if not values:
            raise ConfigError(f"{where}: the range is empty")
        low, high, step = min(values), max(values), abs(value.step)
        if all(isinstance(v, int) for v in values):
            return Dimension(key, IntDistribution(low, high, step=step), values)
        return Dimension(key, FloatDistribution(float(low), float(high), step=float(step)), values)
    if isinstance(value, ChoiceSweep) or isinstance(value, RangeSweep) and value.shuffle:
        choices, texts = [], {}
        for v in override.sweep_iterator():
            if isinstance(v, (bool, int, float, str)):
                choices.append(v)
            else:  # a list or a mapping: Optuna records its override text
                text = Transformer.str(v)
                choices.append(text)
                texts[(str, text)] = text
        return Dimension(key, CategoricalDistribution(choices), choices, texts)
    raise ConfigError(f"{where}: the Optuna sweeper takes interval(...), range(...), choice(...) or "
                      "shuffle(range(...)); list a glob's options with choice(...)")


def open_storage(storage: str | None) -> Any:
    """None (in memory), Optuna's JournalStorage on a file for journal://PATH, or the database URL itself."""
    if storage is None:
        return None
    if not isinstance(storage, str):
        raise ConfigError(f"hydra.sweeper.storage={storage!r}: expected a database URL or journal://PATH")
    if storage.startswith("journal:"):
        path = storage[len(JOURNAL):] if storage.startswith(JOURNAL) else ""
        if not path:
            raise ConfigError(f"hydra.sweeper.storage={storage}: write the journal file as journal:///abs/path.log "
                              "or journal://relative/path.log")
        path = Path(path).expanduser().absolute()
        if not path.parent.is_dir():
            raise ConfigError(f"hydra.sweeper.storage={storage}: the folder {path.parent} does not exist")
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(str(path)))
    if not re.match(r"^[a-zA-Z][\w+.-]*://", storage):
        raise ConfigError(f"hydra.sweeper.storage={storage}: expected a database URL (sqlite:///study.db, "
                          "postgresql://user@host/db) or journal://PATH (a journal file for several workers)")
    return storage


def hide_password(url: str) -> str:
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


@dataclass
class Plan:
    fixed: list[str]
    dimensions: dict[str, Dimension]
    n_trials: int
    seed: int | None
    grid: bool
    storage: Any
    storage_label: str


class OptunaSweeper(Sweeper):
    """Asks Optuna for trials, launches each batch of n_jobs through Hydra's launcher, tells Optuna the results."""

    def __init__(self, sampler: DictConfig, direction: str = "minimize", n_trials: int = 20, n_jobs: int = 1,
                 storage: str | None = None, study_name: str | None = None,
                 params: DictConfig | None = None) -> None:
        self.sampler_config = sampler
        self.direction = direction
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.storage = storage
        self.study_name = study_name
        self.params = params
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    # ---- the sweep

    def sweep(self, arguments: list[str]) -> None:
        try:
            plan = self.plan(arguments)
            study = self.open_study(plan)
        except ConfigError as exc:
            sys.exit(f"error: {exc}")
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        # as Hydra's basic sweeper does: run names read the swept keys from it (mugpt.training.loggers.swept_keys)
        _save_atomically(self.config, sweep_dir / "multirun.yaml")
        log.info("Optuna study %r in %s: up to %d trials of %s, %d per batch", study.study_name, plan.storage_label,
                 plan.n_trials, ", ".join(plan.dimensions), self.n_jobs)
        while True:
            held = len(study.get_trials(deepcopy=False))
            if held >= plan.n_trials:
                log.info("the study holds %d trials (n_trials=%d): this worker stops", held, plan.n_trials)
                break
            trials = self.ask(study, plan, min(self.n_jobs, plan.n_trials - held))
            if not trials:
                break
            overrides = [[*plan.fixed, *(plan.dimensions[k].override(v) for k, v in t.params.items())]
                         for t in trials]
            try:
                returns = self.launch(trials, overrides)
            except BaseException as exc:
                # a preempted job (SystemExit) or Ctrl-C: no trial of this batch is left running in the study
                for trial in trials:
                    trial.set_user_attr("error", f"the sweep stopped: {type(exc).__name__}")
                    _finish(study, trial, failed=True)
                raise
            for trial, ret in zip(trials, returns):
                self.tell(study, trial, ret)
        self.write_results(study, sweep_dir / RESULTS_FILE)

    def plan(self, arguments: Sequence[str]) -> Plan:
        """Everything checked before the first trial: each refusal is one line naming the option."""
        from optuna.samplers import BaseSampler, GridSampler

        for name in ("n_trials", "n_jobs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"hydra.sweeper.{name}={value}: expected a whole number >= 1")
        if self.direction != "minimize":
            raise ConfigError(f"hydra.sweeper.direction={self.direction}: the objective is the validation loss "
                              "(inf for a diverged run), so only minimize")
        if self.storage is not None and not self.study_name:
            raise ConfigError(f"hydra.sweeper.study_name is needed with hydra.sweeper.storage="
                              f"{hide_password(str(self.storage))}: workers and later launches find the study by it")
        fixed, dimensions = search_space(self.params, arguments)
        if not dimensions:
            raise ConfigError("hydra.sweeper.params: nothing to search; give a dimension, e.g. "
                              "'optim.lr=tag(log, interval(1e-4, 1e-1))'")
        target = self.sampler_config.get("_target_") if self.sampler_config is not None else None
        try:
            sampler_class = get_class(target)
        except Exception:
            sampler_class = None
        if not (isinstance(sampler_class, type) and issubclass(sampler_class, BaseSampler)):
            raise ConfigError(f"hydra.sweeper.sampler._target_={target}: not an Optuna sampler class")
        n_trials = self.n_trials
        grid = issubclass(sampler_class, GridSampler)
        if grid:
            continuous = [d.key for d in dimensions.values() if d.grid is None]
            if continuous:
                raise ConfigError(f"hydra/sweeper/sampler=grid: {', '.join(continuous)} is an interval; a grid needs "
                                  "choice(...) or range(...)")
            n_trials = min(n_trials, math.prod(len(d.grid) for d in dimensions.values()))
        seed = self.sampler_config.get("seed")
        storage = open_storage(self.storage)
        label = "memory" if storage is None else hide_password(str(self.storage))
        return Plan(fixed, dimensions, n_trials, seed, grid, storage, label)

    def make_sampler(self, plan: Plan, seed: int | None) -> Any:
        extra: dict[str, Any] = {}
        if self.sampler_config.get("seed") is not None:
            extra["seed"] = seed
        if plan.grid:
            extra["search_space"] = {k: d.grid for k, d in plan.dimensions.items()}
        return instantiate(self.sampler_config, _convert_="all", **extra)

    def open_study(self, plan: Plan) -> Any:
        import optuna

        sampler = self.make_sampler(plan, plan.seed)
        try:
            study = optuna.create_study(storage=plan.storage, sampler=sampler, study_name=self.study_name,
                                        direction="minimize", load_if_exists=True)
        except Exception as exc:
            raise ConfigError(f"hydra.sweeper.storage={plan.storage_label}: cannot open study {self.study_name!r}: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        if study.direction != optuna.study.StudyDirection.MINIMIZE:
            raise ConfigError(f"hydra.sweeper.study_name={self.study_name}: that study in {plan.storage_label} "
                              "maximizes; the validation loss is minimized")
        return study

    def ask(self, study: Any, plan: Plan, count: int) -> list:
        trials = []
        for _ in range(count):
            trial = study.ask()
            if trial.number >= plan.n_trials:
                # another worker asked between this one's count and its ask: the study already holds n_trials
                trial.set_user_attr("surplus", True)
                _finish(study, trial, failed=True)
                log.info("trial %d not run: the study already holds n_trials=%d", trial.number, plan.n_trials)
                break
            if plan.seed is not None:
                # Trial n is sampled with seed + n: one worker repeats its draws on a relaunch, and workers sharing
                # a study draw differently (one seed for all would give every worker the same random start).
                study.sampler = self.make_sampler(plan, plan.seed + trial.number)
            for dimension in plan.dimensions.values():
                dimension.suggest(trial)
            trials.append(trial)
        return trials

    def launch(self, trials: list, overrides: list[list[str]]) -> list[JobReturn]:
        """The batch through the launcher, each job numbered as its trial (its folder is SWEEP_DIR/NUMBER, so
        workers sharing a sweep folder never share a job folder); trials of another worker in between split it."""
        returns: list[JobReturn] = []
        start = 0
        for end in range(1, len(trials) + 1):
            if end == len(trials) or trials[end].number != trials[end - 1].number + 1:
                returns.extend(self.launcher.launch(overrides[start:end], initial_job_idx=trials[start].number))
                start = end
        return returns

    def tell(self, study: Any, trial: Any, ret: JobReturn) -> None:
        error = None
        try:
            value = ret.return_value
        except Exception as exc:  # the job raised: the launcher hands the exception back
            value, error = None, f"{type(exc).__name__}: {exc}"
        output_dir = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir") if ret.hydra_cfg is not None else None
        if output_dir:
            trial.set_user_attr("output_dir", str(output_dir))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # which process ran it
        loss = _as_float(value)
        if loss is None or math.isnan(loss) or loss == -math.inf:
            trial.set_user_attr("error", (error or f"the run returned {value!r}, not a loss")[:ERROR_CHARS])
            _finish(study, trial, failed=True)
            log.warning("trial %d failed (recorded as failed, the search goes on): %s", trial.number,
                        error or f"the run returned {value!r}")
            return
        if loss == math.inf:
            trial.set_user_attr("diverged", True)
            log.warning("trial %d diverged: told as inf, it ranks last", trial.number)
        _finish(study, trial, value=loss)
        best = study.best_trial
        log.info("trial %d: %s, value %s (best so far: trial %d, %s)", trial.number, trial.params, loss, best.number,
                 best.value)

    def write_results(self, study: Any, path: Path) -> None:
        """The study's best trial so far (every worker writes it as it stops; the last one sees every trial)."""
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name, "best_params": None,
                                   "best_value": None, "best_trial": None}
        if complete:
            best = study.best_trial
            results.update(best_params=dict(best.params), best_value=best.value, best_trial=best.number)
            log.info("best trial %d: %s, value %s", best.number, best.params, best.value)
        else:
            log.warning("no trial of study %r completed: %s has no best trial", study.study_name, path)
        results["trials"] = {
            "complete": len(complete),
            "diverged": sum(bool(t.user_attrs.get("diverged")) for t in complete),
            "failed": sum(t.state == TrialState.FAIL and not t.user_attrs.get("surplus") for t in trials),
            "running": sum(t.state == TrialState.RUNNING for t in trials),
        }
        _save_atomically(OmegaConf.create(results), path)


def _as_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _finish(study: Any, trial: Any, *, failed: bool = False, value: float | None = None) -> None:
    from optuna.samplers import GridSampler
    from optuna.trial import TrialState

    try:
        if failed:
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, value)
    except RuntimeError:
        # Optuna's grid sampler calls study.stop() when its grid is used up, which only works inside
        # study.optimize; the trial is recorded before that (tell stores it in a finally).
        if not isinstance(study.sampler, GridSampler):
            raise


def _save_atomically(config: Any, path: Path) -> None:
    """Written whole or not at all: several workers may write the same file in a shared sweep folder."""
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}")
    OmegaConf.save(config, tmp)
    os.replace(tmp, path)
