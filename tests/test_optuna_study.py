"""The project's Optuna sweeper (studies.optuna_sweeper, hydra/sweeper=optuna*): one study shared by several workers
through Optuna's journal file, failed and diverged trials, the search space syntax and the refusals. Most tests run
the sweeper in this process with a stand-in launcher whose jobs return chosen values (no training); the last one
runs two `python src/train.py -m` workers at once on one journal file."""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from conftest import ROOT
from mugpt.studies.optuna_sweeper import OptunaSweeper

optuna = pytest.importorskip("optuna", minversion="4",
                             reason='hydra/sweeper=optuna* needs the optuna extra: pip install -e ".[optuna]"')
TrialState = optuna.trial.TrialState
LR = {"optim.lr": "tag(log, interval(1e-4, 1e-1))"}


class StandInLauncher:
    """Hydra's launcher interface, each job run here as objective(overrides as a dict): a job that raises is a
    failed job, as Hydra's launchers report it; SystemExit and KeyboardInterrupt go through, as in Hydra's."""

    def __init__(self, objective):
        self.objective = objective
        self.jobs: list[tuple[int, list[str]]] = []

    def launch(self, job_overrides, initial_job_idx):
        returns = []
        for i, overrides in enumerate(job_overrides):
            self.jobs.append((initial_job_idx + i, list(overrides)))
            ret = JobReturn(overrides=list(overrides))
            try:
                ret.return_value = self.objective(dict(o.split("=", 1) if "=" in o else (o, None) for o in overrides))
                ret.status = JobStatus.COMPLETED
            except Exception as exc:
                ret.return_value, ret.status = exc, JobStatus.FAILED
            returns.append(ret)
        return returns


def make_sweeper(sweep_dir: Path, objective, *, sampler: str = "RandomSampler", seed: int | None = 0,
                 params: dict | None = None, **options) -> OptunaSweeper:
    sampler_cfg = {"_target_": f"optuna.samplers.{sampler}", **({} if sampler == "GridSampler" else {"seed": seed})}
    sweeper = OptunaSweeper(sampler=OmegaConf.create(sampler_cfg), params=OmegaConf.create(LR if params is None
                                                                                           else params), **options)
    sweeper.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}})
    sweeper.launcher = StandInLauncher(objective)
    return sweeper


def journal(path: Path) -> str:
    return f"journal://{path}"


def load(path: Path, name: str):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    return optuna.load_study(study_name=name, storage=storage)


def val_loss(overrides: dict) -> float:
    """A smooth stand-in for the validation loss: best at lr = 1e-2."""
    return 3.0 + math.log10(float(overrides["optim.lr"]) / 1e-2) ** 2


# ---- failed and diverged trials


def test_failed_and_diverged_trials_are_recorded_and_the_search_goes_on(tmp_path):
    """src/train.py's return rules: a loss is a result, inf (diverged) is told and ranks last, None (a failed run)
    and a job that raised are failed trials; every grid point is tried, whichever comes last."""

    def objective(o):
        lr = float(o["optim.lr"])
        if lr == 0.04:
            raise RuntimeError("CUDA out of memory")
        return {0.01: 3.5, 0.02: None, 0.03: math.inf, 0.05: 3.25}[lr]

    log_file = tmp_path / "study.log"
    sweeper = make_sweeper(tmp_path / "sweep", objective, sampler="GridSampler", params={},
                           storage=journal(log_file), study_name="rules", n_trials=10)
    sweeper.sweep(["model=tiny", "optim.lr=choice(0.01,0.02,0.03,0.04,0.05)"])

    trials = {t.params["optim.lr"]: t for t in load(log_file, "rules").trials}  # read back from the journal file
    assert sorted(trials) == [0.01, 0.02, 0.03, 0.04, 0.05]  # n_trials=10 capped at the grid's 5
    assert {lr: t.state for lr, t in trials.items()} == {
        0.01: TrialState.COMPLETE, 0.02: TrialState.FAIL, 0.03: TrialState.COMPLETE, 0.04: TrialState.FAIL,
        0.05: TrialState.COMPLETE}
    assert trials[0.03].value == math.inf and trials[0.03].user_attrs["diverged"] is True
    assert trials[0.02].user_attrs["error"] == "the run returned None, not a loss"
    assert trials[0.04].user_attrs["error"] == "RuntimeError: CUDA out of memory"
    assert trials[0.05].value == 3.25 and "error" not in trials[0.05].user_attrs
    # every job got the fixed overrides, and the job number is the trial's number
    jobs = dict(sweeper.launcher.jobs)
    assert sorted(jobs) == sorted(t.number for t in trials.values())
    assert all(jobs[t.number] == ["model=tiny", f"optim.lr={lr}"] for lr, t in trials.items())

    best = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert (best.best_params["optim.lr"], best.best_value, best.best_trial) == (0.05, 3.25, trials[0.05].number)
    assert dict(best.trials) == {"complete": 3, "diverged": 1, "failed": 2, "running": 0}
    assert (tmp_path / "sweep" / "multirun.yaml").is_file()  # as Hydra's basic sweeper leaves it: run names read it


def test_a_sweep_stopped_by_its_job_leaves_no_running_trial(tmp_path):
    """A preempted job ends the sweep (src/train.py raises SystemExit); its trial is recorded failed, not left
    running in the shared study, where it would count towards n_trials for ever."""

    def preempted(o):
        raise SystemExit(0)

    sweeper = make_sweeper(tmp_path / "sweep", preempted, storage=journal(tmp_path / "s.log"), study_name="pre")
    with pytest.raises(SystemExit):
        sweeper.sweep([])
    (trial,) = load(tmp_path / "s.log", "pre").trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["error"] == "the sweep stopped: SystemExit"


def test_every_trial_failing_still_writes_the_results(tmp_path):
    sweeper = make_sweeper(tmp_path / "sweep", lambda o: None, n_trials=2)
    sweeper.sweep([])
    best = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert best.best_params is None and best.best_value is None
    assert dict(best.trials) == {"complete": 0, "diverged": 0, "failed": 2, "running": 0}


# ---- one study, several workers


def test_two_workers_share_one_study_and_stop_at_n_trials_in_total(tmp_path):
    """Worker B starts while worker A's first trial runs (B's whole sweep runs inside A's first job, a fixed
    interleaving): B counts A's running trial, runs the rest, and A stops after its one trial. Trial n is drawn
    with seed + n, so the shared study holds what one worker alone would have drawn, trial for trial."""
    log_file, sweep_dir = tmp_path / "study.log", tmp_path / "sweep"
    options = dict(storage=journal(log_file), study_name="shared", n_trials=5)
    worker_b = make_sweeper(sweep_dir, val_loss, **options)

    def first_job_of_a(o):
        if not worker_b.launcher.jobs:
            worker_b.sweep([])
        return val_loss(o)

    worker_a = make_sweeper(sweep_dir, first_job_of_a, **options)
    worker_a.sweep([])

    trials = load(log_file, "shared").trials
    assert [t.number for t in trials] == [0, 1, 2, 3, 4] and {t.state for t in trials} == {TrialState.COMPLETE}
    assert [n for n, _ in worker_a.launcher.jobs] == [0] and [n for n, _ in worker_b.launcher.jobs] == [1, 2, 3, 4]
    lrs = [t.params["optim.lr"] for t in trials]
    assert len(set(lrs)) == 5  # no two workers drew the same value

    alone = make_sweeper(tmp_path / "alone", val_loss, n_trials=5)  # one worker, in memory
    alone.sweep([])
    assert [float(o[-1].split("=")[1]) for _, o in alone.launcher.jobs] == lrs
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")  # the last worker to stop saw every trial
    assert best.best_value == min(t.value for t in trials) and best.trials.complete == 5


def test_a_relaunch_continues_the_study_up_to_n_trials(tmp_path):
    options = dict(storage=journal(tmp_path / "s.log"), study_name="donor")
    first = make_sweeper(tmp_path / "sweep", val_loss, n_trials=2, **options)
    first.sweep([])
    again = make_sweeper(tmp_path / "sweep", val_loss, n_trials=2, **options)
    again.sweep([])
    assert again.launcher.jobs == []  # the study is complete: nothing to run
    more = make_sweeper(tmp_path / "sweep", val_loss, n_trials=5, **options)
    more.sweep([])
    assert [n for n, _ in more.launcher.jobs] == [2, 3, 4]
    assert len(load(tmp_path / "s.log", "donor").trials) == 5


def test_a_trial_asked_after_the_study_filled_up_is_not_run(tmp_path):
    """Two workers may both count n_trials - 1 trials and ask one each: the later one is recorded as a surplus
    failure without parameters and is not run."""
    sweeper = make_sweeper(tmp_path / "sweep", val_loss, n_trials=1)
    plan = sweeper.plan([])
    study = sweeper.open_study(plan)
    study.tell(study.ask(), 1.0)  # the other worker's trial
    assert sweeper.ask(study, plan, 1) == []
    surplus = study.trials[-1]
    assert (surplus.number, surplus.state, surplus.params, surplus.user_attrs) == (
        1, TrialState.FAIL, {}, {"surplus": True})
    sweeper.write_results(study, tmp_path / "results.yaml")
    assert OmegaConf.load(tmp_path / "results.yaml").trials.failed == 0  # not counted as a failed run


# ---- the search space


def test_dimensions_reach_the_jobs_as_hydra_reads_them(tmp_path):
    """range(...) keeps Hydra's meaning (stop excluded), and choices that are lists or strings Hydra would read as
    another type reach each job as the same values."""
    seen = []
    sweeper = make_sweeper(tmp_path / "sweep", lambda o: seen.append(o) or 1.0, sampler="GridSampler", params={
        "model.n_layer": "range(1, 7, 2)"})
    sweeper.sweep(['+data.tags=choice([1,2],"true","it\'s")', "~trainer.max_epochs"])
    parser = OverridesParser.create()
    values = {(o["model.n_layer"], o["+data.tags"]) for o in seen}
    assert {n_layer for n_layer, _ in values} == {"1", "3", "5"}
    tags = {repr(parser.parse_overrides([f"k={t}"])[0].value()) for _, t in values}
    assert tags == {repr([1, 2]), repr("true"), repr("it's")}
    assert len(seen) == 9 and all("~trainer.max_epochs" in o for o in seen)


@pytest.mark.parametrize(("options", "args", "message"), [
    ({"storage": "sqlite:///study.db"}, [], "hydra.sweeper.study_name is needed with hydra.sweeper.storage=sqlite"),
    ({"storage": "journal:///no/such/folder/study.log", "study_name": "s"}, [], "the folder /no/such/folder does "
                                                                               "not exist"),
    ({"storage": "study.db", "study_name": "s"}, [], "hydra.sweeper.storage=study.db: expected a database URL"),
    ({"n_trials": 0}, [], "hydra.sweeper.n_trials=0: expected a whole number >= 1"),
    ({"n_jobs": 1.5}, [], "hydra.sweeper.n_jobs=1.5: expected a whole number >= 1"),
    ({"direction": "maximize"}, [], "hydra.sweeper.direction=maximize: the objective is the validation loss"),
    ({"params": {}}, [], "hydra.sweeper.params: nothing to search"),
    ({"sampler": "GridSampler"}, [], "hydra/sweeper/sampler=grid: optim.lr is an interval"),
    ({"sampler": "NoSuchSampler"}, [], "hydra.sweeper.sampler._target_=optuna.samplers.NoSuchSampler: not an"),
    ({}, ["optim.lr=interval(0.1, 0.01)"], "the command line: 'optim.lr=interval(0.1, 0.01)': an interval needs"),
    ({}, ["optim.lr=tag(log, interval(0, 1))"], "a log-scale interval needs a positive lower bound"),
    ({}, ["model.n_layer=tag(log, range(1, 8))"], "tag(log, ...) applies to interval(...) only"),
    ({"params": {"optim.lr": "interval(1e-4"}}, [], "hydra.sweeper.params.optim.lr: cannot parse"),
])
def test_bad_options_are_refused_in_one_line_before_any_trial(tmp_path, monkeypatch, options, args, message):
    monkeypatch.chdir(tmp_path)
    options = dict(options)
    sampler = options.pop("sampler", "RandomSampler")
    sweeper = make_sweeper(tmp_path / "sweep", val_loss, sampler=sampler, params=options.pop("params", None),
                           **options)
    with pytest.raises(SystemExit) as exit_info:
        sweeper.sweep(args)
    text = str(exit_info.value.code)
    assert text.startswith("error: ") and message in text and "\n" not in text, text
    assert sweeper.launcher.jobs == [] and not (tmp_path / "sweep").exists()


# ---- two processes, one journal file


@pytest.mark.slow
def test_two_train_py_workers_finish_one_study_on_a_journal_file(tmp_path, cache_dir):
    """Two `python src/train.py -m hydra/sweeper=optuna_lr` processes started at once on one journal file and one
    sweep folder: 4 trials between them, each run once (its own job folder, numbered as its trial)."""
    log_file, sweep = tmp_path / "study.log", tmp_path / "sweep"
    args = ["-m", "hydra/sweeper=optuna_lr", "hydra.sweeper.n_trials=4", f"hydra.sweeper.storage=journal://{log_file}",
            "hydra.sweeper.study_name=two", f"hydra.sweep.dir={sweep}", "model=tiny", "data.tokenizer=byte",
            "data.batch_size=8", "trainer.max_steps=3", "eval_every=3", "optim.warmup_steps=1", "data.val_batches=1",
            "logger=none", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
            "checkpoint.every_n_steps=0"]
    env = {**os.environ, "MUGPT_CACHE": str(cache_dir), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    workers = [subprocess.Popen([sys.executable, str(ROOT / "src" / "train.py"), *args], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n=====\n".join(o[-3000:] for o in outputs)
    print(f"two workers, 4 trials: {time.perf_counter() - start:.1f} s")  # shown with -s

    trials = load(log_file, "two").trials
    ran = [t for t in trials if not t.user_attrs.get("surplus")]
    assert [t.number for t in ran] == [0, 1, 2, 3]  # each trial number once
    assert all(t.state == TrialState.COMPLETE and math.isfinite(t.value) for t in ran)
    assert all(t.state == TrialState.FAIL and not t.params for t in trials if t not in ran)  # a lost race, not run
    lrs = [t.params["optim.lr"] for t in ran]
    assert len(set(lrs)) == 4 and all(1e-4 <= lr <= 1e-1 for lr in lrs)
    assert len({t.user_attrs["worker"] for t in ran}) == 2  # both workers ran trials
    # every trial's run is in its own folder, with the lr and loss the study recorded
    for t in ran:
        summary = json.loads((sweep / str(t.number) / "summary.json").read_text())
        assert Path(t.user_attrs["output_dir"]) == sweep / str(t.number)
        assert (summary["lr"], summary["val_loss"]) == pytest.approx((t.params["optim.lr"], t.value))
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_value == min(t.value for t in ran) and best.trials.complete == 4
