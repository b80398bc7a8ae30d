"""Hydra sweeper and launcher configs (conf/hydra/): Optuna searches of the donor's hyperparameters and SLURM
jobs through submitit. No SLURM cluster is reachable here: the SLURM launcher is tested down to the sbatch
script it would submit; submitit's local executor runs real jobs."""

import json
import math
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from conftest import CONF_DIR, run_train_cli
from mugpt.studies.transfer import read_summaries

ROOT = Path(__file__).resolve().parents[1]
OPTUNA_SWEEPER = "hydra_plugins.mugpt_optuna_sweeper.optuna_sweeper.OptunaSweeper"
# A few steps of a tiny byte-level model: each trial of a sweep takes a few seconds on a 2-core CPU.
TINY_RUN = ["data.batch_size=8", "trainer.max_steps=3", "eval_every=3", "optim.warmup_steps=1",
            "data.val_batches=1", "logger=none", "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false", "checkpoint.every_n_steps=0"]


def needs_optuna() -> None:
    pytest.importorskip("optuna", minversion="4",
                        reason='hydra/sweeper=optuna* needs the optuna extra: pip install -e ".[optuna]"')


def needs_submitit() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                        reason='hydra/launcher=slurm needs the slurm extra: pip install -e ".[slurm]"')


@pytest.fixture
def compose_with_hydra():
    """compose_with_hydra(*overrides) -> the job config with its `hydra` node, as `python src/train.py -m` sees it."""

    def make(*overrides: str) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)

    yield make
    GlobalHydra.instance().clear()


def search_space(sweeper: DictConfig) -> dict:
    """The Optuna distributions the sweeper builds from its `params` (the sweeper's own parser)."""
    from mugpt.studies.optuna_sweeper import search_space as parse

    fixed, dimensions = parse(sweeper.params, [])
    assert fixed == []
    return {key: d.distribution for key, d in dimensions.items()}


# ---- composition


def test_optuna_lr_searches_the_learning_rate_on_a_log_scale(compose_with_hydra):
    needs_optuna()
    from optuna.distributions import FloatDistribution

    cfg = compose_with_hydra("hydra/sweeper=optuna_lr", "+experiment=mutransfer_lr")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == OPTUNA_SWEEPER
    assert (sweeper.direction, sweeper.n_trials, sweeper.n_jobs) == ("minimize", 20, 1)
    assert sweeper.storage is None and sweeper.study_name is None  # in memory unless a storage is given
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == 0
    assert search_space(sweeper) == {"optim.lr": FloatDistribution(1e-4, 1e-1, log=True)}
    assert cfg.optim.lr == 2.0 ** -7  # the key the search replaces exists (here the experiment's ${pow2:...})


@pytest.mark.parametrize("parametrization", ["sp", "mup"])
def test_optuna_lr_composes_under_either_parametrization(compose_with_hydra, parametrization):
    needs_optuna()
    cfg = compose_with_hydra("hydra/sweeper=optuna_lr", f"parametrization={parametrization}",
                             "hydra.sweeper.n_trials=5")
    assert cfg.hydra.sweeper.n_trials == 5
    assert all(OmegaConf.select(cfg, key) is not None for key in cfg.hydra.sweeper.params)


def test_optuna_mup_searches_the_learning_rate_and_mup_multipliers(compose_with_hydra):
    needs_optuna()
    from optuna.distributions import FloatDistribution

    cfg = compose_with_hydra("hydra/sweeper=optuna_mup", "parametrization=mup")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == OPTUNA_SWEEPER
    assert (sweeper.direction, sweeper.n_trials, sweeper.n_jobs, sweeper.sampler.seed) == ("minimize", 40, 1, 0)
    assert search_space(sweeper) == {
        "optim.lr": FloatDistribution(1e-4, 1e-1, log=True),
        "parametrization.output_alpha": FloatDistribution(16.0, 1024.0, log=True),
        "parametrization.hidden_init_scale": FloatDistribution(0.125, 2.0, log=True),
        "parametrization.embedding_init_std": FloatDistribution(0.01, 0.32, log=True),
    }
    # the defaults it replaces
    assert [OmegaConf.select(cfg, key) for key in sweeper.params] == [3e-3, 128.0, 0.5, 0.08]


def test_the_seeded_sampler_gives_way_to_other_samplers(compose_with_hydra):
    """The seed lives in the sampler choice (tpe_seeded), so choosing grid, which takes none, still composes."""
    needs_optuna()
    grid = compose_with_hydra("hydra/sweeper=optuna_lr", "hydra/sweeper/sampler=grid").hydra.sweeper.sampler
    assert grid._target_ == "optuna.samplers.GridSampler" and "seed" not in grid
    rand = compose_with_hydra("hydra/sweeper=optuna_lr", "hydra/sweeper/sampler=random",
                              "hydra.sweeper.sampler.seed=3").hydra.sweeper.sampler
    assert (rand._target_, rand.seed) == ("optuna.samplers.RandomSampler", 3)


def test_slurm_launcher_runs_one_task_per_gpu(compose_with_hydra):
    needs_submitit()
    cfg = compose_with_hydra("hydra/launcher=slurm")
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (1, 1, 1)
    assert (launcher.timeout_min, launcher.cpus_per_task, launcher.mem_gb) == (240, 8, 64)
    assert launcher.partition is None and list(launcher.setup) == []
    four = compose_with_hydra("hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4").hydra.launcher
    assert four.tasks_per_node == 4  # follows the GPUs unless set


def test_slurm_launcher_writes_the_expected_sbatch_script(compose_with_hydra, tmp_path, monkeypatch):
    """The launcher's real launch path up to submission: submitit's sbatch script for a 4-GPU job. submitit
    looks for `srun` first, hence a stand-in on PATH; submission itself is replaced by reading the script."""
    needs_submitit()
    import submitit

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    scripts = []

    class Submitted(Exception):
        pass

    def read_script_instead_of_submitting(executor, fn, *args):
        scripts.append(executor._executor._make_submission_file_text("python -m submitit.core._submit", "0"))
        raise Submitted

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", read_script_instead_of_submitting)
    cfg = compose_with_hydra("hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4", "hydra.launcher.partition=gpu",
                             "hydra.launcher.setup=[module load cuda]", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=lambda c: None, config=cfg)
    with pytest.raises(Submitted):
        launcher.launch([["model.width=64"]], initial_job_idx=0)
    lines = scripts[0].splitlines()
    for flag in ("--nodes=1", "--gpus-per-node=4", "--ntasks-per-node=4", "--cpus-per-task=8", "--mem=64GB",
                 "--time=240", "--partition=gpu"):
        assert f"#SBATCH {flag}" in lines, flag
    assert "module load cuda" in lines
    assert lines[-1].startswith("srun ")  # srun starts the 4 processes that Lightning's SLURMEnvironment ranks


# ---- sweeps run here


@pytest.mark.slow
def test_optuna_donor_search_of_three_trials(tmp_path, cache_dir):
    """The µTransfer donor search with Optuna: 3 trials, each a normal run with its summary.json; Hydra's
    optimization_results.yaml and Optuna's own study (sqlite) agree with the summaries."""
    needs_optuna()
    import optuna

    sweep = tmp_path / "sweep"
    study_db = tmp_path / "study.db"
    proc = run_train_cli(["-m", "hydra/sweeper=optuna_lr", "hydra.sweeper.n_trials=3", "+experiment=mutransfer_lr",
                      "parametrization=mup", *TINY_RUN, f"hydra.sweep.dir={sweep}",
                      f"hydra.sweeper.storage=sqlite:///{study_db}", "hydra.sweeper.study_name=donor"],
                     tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads((sweep / str(i) / "summary.json").read_text()) for i in range(3)]
    assert [s["status"] for s in summaries] == ["completed"] * 3, [s.get("error") for s in summaries]
    assert all(s["parametrization"] == "mup" and s["width"] == 64 and s["steps"] == 3 for s in summaries)
    lrs = [s["lr"] for s in summaries]
    assert len(set(lrs)) == 3 and all(1e-4 <= lr <= 1e-1 for lr in lrs), lrs  # the experiment's 2^-7 replaced
    losses = [s["val_loss"] for s in summaries]
    assert all(math.isfinite(v) for v in losses)

    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_value == min(losses)
    assert best.best_params["optim.lr"] == lrs[losses.index(min(losses))]

    study = optuna.load_study(study_name="donor", storage=f"sqlite:///{study_db}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert sorted((t.params["optim.lr"], t.value) for t in study.trials) == sorted(zip(lrs, losses))
    # the µTransfer report reads an Optuna sweep as it reads a grid
    assert sorted(r["lr"] for r in read_summaries(sweep)) == sorted(lrs)


@pytest.mark.slow
def test_a_failed_trial_is_recorded_failed_and_the_search_goes_on(tmp_path, cache_dir):
    """src/train.py returns None for a run that raised; the sweeper tells Optuna the trial failed, records why,
    and the best trial comes from the others."""
    needs_optuna()
    import optuna

    sweep = tmp_path / "sweep"
    study_db = tmp_path / "study.db"
    # a grid of two learning rates, one of which the config checks reject before training (in either order: the
    # grid may end on the failed trial, where Optuna's grid sampler stops a study)
    proc = run_train_cli(["-m", "hydra/sweeper=optuna_lr", "hydra/sweeper/sampler=grid", "hydra.sweeper.n_trials=2",
                          "optim.lr=choice(0.01,-1.0)",
                      "model=tiny", "data.tokenizer=byte", *TINY_RUN, f"hydra.sweep.dir={sweep}",
                      f"hydra.sweeper.storage=sqlite:///{study_db}", "hydra.sweeper.study_name=failing"],
                     tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = {s["lr"]: s for s in (json.loads(p.read_text()) for p in sweep.glob("*/summary.json"))}
    assert sorted(summaries) == [-1.0, 0.01]
    assert summaries[-1.0]["status"] == "failed" and "optim.lr must be positive" in summaries[-1.0]["error"]
    assert summaries[0.01]["status"] == "completed"
    trials = optuna.load_study(study_name="failing", storage=f"sqlite:///{study_db}").trials
    assert {t.params["optim.lr"]: t.state for t in trials} == {
        0.01: optuna.trial.TrialState.COMPLETE, -1.0: optuna.trial.TrialState.FAIL}
    failed = next(t for t in trials if t.params["optim.lr"] == -1.0)
    assert failed.user_attrs["error"] == "the run returned None, not a loss"
    assert Path(failed.user_attrs["output_dir"]) == sweep / str(failed.number)  # job folders numbered as trials
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_params["optim.lr"] == 0.01 and best.best_value == summaries[0.01]["val_loss"]


@pytest.mark.slow
def test_a_diverged_trial_does_not_stop_the_search(tmp_path, cache_dir):
    needs_optuna()
    sweep = tmp_path / "sweep"
    # grid over two learning rates, one of which turns the weights to NaN in two steps
    proc = run_train_cli(["-m", "hydra/sweeper=optuna_lr", "hydra/sweeper/sampler=grid", "optim.lr=choice(0.01,1e8)",
                      "model=tiny", "data.tokenizer=byte", *TINY_RUN, "trainer.max_steps=4", "eval_every=4",
                      "trainer.log_every_n_steps=1", f"hydra.sweep.dir={sweep}"], tmp_path, cache_dir)
    summaries = {s["lr"]: s for s in (json.loads(p.read_text()) for p in sweep.glob("*/summary.json"))}
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summaries[1e8]["status"] == "diverged" and summaries[0.01]["status"] == "completed"
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_params["optim.lr"] == 0.01 and best.best_value == summaries[0.01]["val_loss"]
    assert dict(best.trials) == {"complete": 2, "diverged": 1, "failed": 0, "running": 0}  # inf: told, ranked last


@pytest.mark.slow
def test_optuna_batches_run_as_submitit_local_jobs(tmp_path, cache_dir):
    """submitit's local executor runs one batch of 2 trials as 2 parallel jobs, as SLURM would (about 35 s):
    the pickled task function, the job directories and the results handed back to Optuna."""
    needs_optuna()
    needs_submitit()
    sweep = tmp_path / "sweep"
    proc = run_train_cli(["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
                      "hydra/sweeper=optuna_lr", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
                      "model=tiny", "data.tokenizer=byte", *TINY_RUN, f"hydra.sweep.dir={sweep}"], tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads((sweep / str(i) / "summary.json").read_text()) for i in range(2)]
    assert [s["status"] for s in summaries] == ["completed"] * 2, [s.get("error") for s in summaries]
    assert len(list((sweep / ".submitit").glob("*/*_0_result.pkl"))) == 2  # two submitit jobs, one result each
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_value == min(s["val_loss"] for s in summaries)
