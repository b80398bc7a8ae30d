"""A launch from the command line to its answer: every job checked before any trains, no folder left by a refused
command, a progress line per job, and the best learning rate per setting (with the grid-edge warning) at the end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from conftest import TINY, run_train_cli
from mugpt.errors import ConfigError
from mugpt.studies.sweep import (
    PROGRESS_FILE,
    check_launch,
    fixed_overrides,
    format_sweep_result,
    progress_line,
    sweep_jobs,
    sweep_result,
    write_sweep_result,
)
from mugpt.training.train import train

FAST = [*TINY, "trainer.max_steps=4", "eval_every=4", "optim.warmup_steps=1", "logger=none",
        "checkpoint.every_n_steps=0"]


def fake_job(sweep: Path, num: int, overrides: list[str], status: str | None, loss: float | None, lr: float) -> None:
    """A job folder as Hydra and the trainer leave it: .hydra/overrides.yaml, and summary.json once it ended."""
    folder = sweep / str(num)
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if status is not None:
        (folder / "summary.json").write_text(json.dumps({"status": status, "val_loss": loss, "lr": lr}))


def test_sweep_jobs_expand_as_hydras_basic_sweeper():
    assert sweep_jobs(["model.width=64,128", "lr_log2=range(-3,-1)", "seed=1"]) == [
        ["model.width=64", "lr_log2=-3", "seed=1"], ["model.width=64", "lr_log2=-2", "seed=1"],
        ["model.width=128", "lr_log2=-3", "seed=1"], ["model.width=128", "lr_log2=-2", "seed=1"]]
    assert sweep_jobs(["hydra/sweeper=optuna_lr", "model.width=64"]) is None  # that sweeper picks its own jobs
    # under such a sweeper the launch's fixed part is checked; sweeps without a comma are sweeps too
    assert fixed_overrides(["model.width=64,128", "lr_log2=range(-9,-5)", "seed=1", "optim.lr=interval(1e-4,1e-2)",
                            "x=choice(a)", "y=shuffle(range(3))", "model.n_layer=2"]) == ["seed=1", "model.n_layer=2"]


def test_a_sweep_with_a_bad_last_job_is_refused_whole_naming_it():
    with pytest.raises(ConfigError, match=r"^job 4 of 4 \(model=tiny model.width=65 logger=none\) is refused, so the "
                                          r"sweep is not started: model.width=65 is not divisible by model.n_head=2$"):
        check_launch(["-m", "model=tiny", "model.width=16,32,64,65", "logger=none"])
    with pytest.raises(ConfigError, match=r"^job 4 of 6 \(model=tiny optim.lr=-0.5 model.width=16 logger=none\) is "
                                          r"refused, so the sweep is not started: optim.lr must be positive"):
        check_launch(["-m", "model=tiny", "optim.lr=0.01,-0.5", "model.width=16,32,64", "logger=none"])
    check_launch(["-m", "model=tiny", "model.width=64,128", "optim.lr=0.01,0.02", "logger=none"])  # all fine


def test_the_answer_per_width_with_seeds_failures_and_the_grid_edge(tmp_path):
    """Width 64: lr 2^-8 is best on the seed mean (inside the grid). Width 128: the best is the lowest rate tried
    (an edge), and lr 2^-6 diverged in one seed, which rules that rate out there."""
    sweep = tmp_path / "sweep"
    losses = {(64, -9): (2.50, 2.52), (64, -8): (2.40, 2.44), (64, -7): (2.45, 2.47),
              (128, -9): (2.30, 2.32), (128, -8): (2.35, 2.33), (128, -7): (2.60, None)}
    num = 0
    for (width, log2), pair in losses.items():
        for seed, loss in enumerate(pair):
            status = "completed" if loss is not None else "diverged"
            fake_job(sweep, num, [f"model.width={width}", f"lr_log2={log2}", f"seed={seed}"], status, loss, 2.0 ** log2)
            num += 1
    fake_job(sweep, num, ["model.width=128", "lr_log2=-6", "seed=0"], "failed", None, 2.0 ** -6)
    fake_job(sweep, num + 1, ["model.width=128", "lr_log2=-6", "seed=1"], None, None, 2.0 ** -6)  # still running
    result = sweep_result(sweep)
    assert result["jobs"] == 14
    assert result["counts"] == {"completed": 11, "diverged": 1, "failed": 1, "running": 1}
    assert result["setting_keys"] == ["model.width"]
    by_width = {e["setting"]["model.width"]: e for e in result["settings"]}
    assert by_width["64"]["best_lr"] == 2.0 ** -8 and by_width["64"]["best_loss"] == pytest.approx(2.42)
    assert by_width["64"]["edge"] is None and by_width["64"]["seeds"] == 2 and by_width["64"]["lrs_tried"] == 3
    assert by_width["128"]["best_lr"] == 2.0 ** -9 and by_width["128"]["best_loss"] == pytest.approx(2.31)
    assert by_width["128"]["edge"] == "lowest" and by_width["128"]["lrs_tried"] == 4
    text = format_sweep_result(result)
    assert "14 jobs: 11 completed, 1 diverged, 1 failed, 1 running" in text
    assert "| 64 | 2^-8 | 2.4200 | 2 | 3 |" in text
    assert "| 128 | 2^-9 (edge) | 2.3100 | 2 | 4 |" in text
    assert text.splitlines()[-1] == ("warning: model.width=128: best lr 2^-9 is the lowest tried: the optimum may lie "
                                     "beyond it, widen the grid towards smaller learning rates")


def test_the_progress_line_counts_the_jobs_that_ended_and_the_time_left(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / PROGRESS_FILE).write_text(json.dumps({"jobs": 8, "started": 1000.0, "swept": ["model.width",
                                                                                            "lr_log2"]}))
    fake_job(sweep, 0, ["+experiment=x", "model.width=64", "lr_log2=-9"], "completed", 2.5, 2.0 ** -9)
    fake_job(sweep, 1, ["+experiment=x", "model.width=64", "lr_log2=-8"], "diverged", math.nan, 2.0 ** -8)
    fake_job(sweep, 2, ["+experiment=x", "model.width=65", "lr_log2=-9"], "failed", None, 2.0 ** -9)
    fake_job(sweep, 3, ["+experiment=x", "model.width=128", "lr_log2=-9"], "completed", 2.25, 2.0 ** -9)
    line = progress_line(sweep, sweep / "3", now=1000.0 + 4 * 30)  # 4 jobs in 2 minutes: 4 more take 2 more
    assert line == ("sweep 4/8: job 3 (model.width=128 lr_log2=-9) completed, val_loss 2.2500 | 2 completed, "
                    "1 failed, 1 diverged | about 2m00s left")


@pytest.mark.slow  # a whole train.py multirun; its parts are checked in-process above
def test_a_multirun_prints_progress_and_ends_with_its_answer(tmp_path, cache_dir):
    """Two widths at two rates: each job's progress line, then the answer (a two-point grid's best is always at
    an edge, so the warning must be there) printed and written into the sweep folder."""
    sweep = tmp_path / "sweep"
    proc = run_train_cli(["-m", *FAST, "model.width=32,64", "optim.lr=0.003,0.03", f"hydra.sweep.dir={sweep}"],
                         tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    for done, (width, lr) in enumerate([(32, 0.003), (32, 0.03), (64, 0.003), (64, 0.03)], start=1):
        assert f"sweep {done}/4: job {done - 1} (model.width={width} optim.lr={lr}) completed, val_loss " in out
    written = (sweep / "sweep_result.md").read_text()
    assert "4 jobs: 4 completed" in written and written.strip() in out
    result = json.loads((sweep / "sweep_result.json").read_text())
    assert [e["setting"] for e in result["settings"]] == [{"model.width": "32"}, {"model.width": "64"}]
    for entry in result["settings"]:
        assert entry["edge"] in ("lowest", "highest")
        assert f"warning: model.width={entry['setting']['model.width']}: best lr" in written
        summaries = [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")]
        best = min(s["val_loss"] for s in summaries if s["width"] == int(entry["setting"]["model.width"]))
        assert entry["best_loss"] == best  # the answer is the best job's own loss


def test_a_refused_launch_is_refused_before_any_folder_is_written(tmp_path, monkeypatch):
    """The checks train.py makes before Hydra starts, in this process: a misspelt key, a bad value and a sweep
    with a bad job are each refused in one line, and the working folder (an earlier run's outputs) is left as it
    was. The same through the command line, and a refusal inside the run, is the slow test below."""
    (tmp_path / "outputs" / "earlier").mkdir(parents=True)
    (tmp_path / "outputs" / "earlier" / "summary.json").write_text("{}")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    monkeypatch.chdir(tmp_path)
    for args, message in [
        (["model.widht=64"], "did you mean model.width?"),
        (["model.width=65"], "model.width=65 is not divisible by model.n_head=4"),
        (["-m", "model.width=64,65"], "job 2 of 2 (model.width=65) is refused"),
    ]:
        with pytest.raises(ConfigError) as refused:
            check_launch(args)
        assert message in str(refused.value) and "\n" not in str(refused.value), args
        assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before, args
    assert not (tmp_path / "multirun").exists()


@pytest.mark.slow  # four train.py processes; check_launch's refusals are checked in-process above
def test_a_refused_command_leaves_the_outputs_folder_as_it_was(make_cfg, tmp_path, cache_dir):
    """Refused before Hydra starts (a misspelt key, a bad value, a sweep with a bad job) or inside the run (a
    checkpoint of another model to resume): no new folder under outputs/, an earlier run's folder untouched."""
    first = make_cfg("trainer.max_steps=2", "eval_every=2", "optim.warmup_steps=1")
    train(first)
    ckpt = Path(first.output_dir) / "checkpoints" / "last.ckpt"
    work = tmp_path / "work"
    (work / "outputs" / "earlier").mkdir(parents=True)
    (work / "outputs" / "earlier" / "summary.json").write_text("{}")
    before = sorted(p.relative_to(work) for p in work.rglob("*"))
    for args, message in [
        (["model.widht=64"], "did you mean model.width?"),
        (["model.width=65"], "model.width=65 is not divisible by model.n_head=4"),
        (["-m", "model.width=64,65"], "job 2 of 2 (model.width=65) is refused"),
        ([*TINY, "model.width=96", f"resume={ckpt}"], "this run has model.width=96"),
    ]:
        proc = run_train_cli(args, work, cache_dir)
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert message in proc.stderr.strip().splitlines()[-1]
        assert "Traceback" not in proc.stderr
        assert sorted(p.relative_to(work) for p in work.rglob("*")) == before, args
    assert not (work / "multirun").exists()


def test_write_sweep_result_writes_both_files(tmp_path):
    sweep = tmp_path / "sweep"
    fake_job(sweep, 0, ["optim.lr=0.01"], "completed", 3.0, 0.01)
    fake_job(sweep, 1, ["optim.lr=0.02"], "completed", 2.9, 0.02)
    fake_job(sweep, 2, ["optim.lr=0.04"], "completed", 2.95, 0.04)
    result, text = write_sweep_result(sweep)
    assert result["settings"] == [{"setting": {}, "lrs_tried": 3, "seeds": 1, "best_lr": 0.02, "best_loss": 2.9,
                                   "edge": None}]
    assert (sweep / "sweep_result.md").read_text() == text + "\n"
    assert "warning" not in text


def test_a_searchs_answer_is_its_best_trial(tmp_path):
    """Optuna's trials each set their own lr and init: no setting groups; the best trial, not a mean of trials."""
    sweep = tmp_path / "sweep"
    fake_job(sweep, 0, ["optim.lr=0.01", "model.init_std=0.02"], "completed", 3.0, 0.01)
    fake_job(sweep, 1, ["optim.lr=0.01", "model.init_std=0.04"], "completed", 2.8, 0.01)
    fake_job(sweep, 2, ["optim.lr=0.003", "model.init_std=0.02"], "diverged", None, 0.003)
    fake_job(sweep, 3, ["optim.lr=0.03", "model.init_std=0.08"], "completed", 2.9, 0.03)
    result = sweep_result(sweep, by_setting=False)
    assert result["setting_keys"] == [] and result["counts"] == {"completed": 3, "diverged": 1}
    assert result["settings"] == [{"setting": {}, "lrs_tried": 3, "seeds": 1, "best_lr": 0.01, "best_loss": 2.8,
                                   "edge": None}]


def test_a_multi_process_job_under_the_ray_launcher_is_refused_before_the_sweep():
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    with pytest.raises(ConfigError, match=r"^job 1 of 2 \(.*\) is refused, so the sweep is not started: "
                                          r"trainer.devices=2: a job of 2 processes cannot start its other ranks "
                                          r"inside a Ray worker"):
        check_launch(["-m", "hydra/launcher=ray", "model=tiny", "trainer=ddp", "trainer.accelerator=cpu",
                      "trainer.devices=2", "model.width=32,64"])


@pytest.mark.slow
def test_inside_a_ray_worker_an_interrupted_job_returns_instead_of_exiting():
    """A Ray worker that exits is a crashed task (the sweep would fail with Ray's error): there the job returns."""
    ray = pytest.importorskip("ray")
    from mugpt.training.checkpointing import after_interruption, in_ray_worker

    def job(signal_name: str, multirun: bool):
        import mugpt.training.checkpointing as checkpointing

        checkpointing.after_interruption({"signal": signal_name}, multirun=multirun)
        return checkpointing.in_ray_worker()

    ray.init(num_cpus=1, include_dashboard=False)
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(job)
        assert ray.get([task.remote("SIGTERM", True), task.remote("SIGINT", False)]) == [True, True]
        assert not in_ray_worker()  # the sweep's own process
        with pytest.raises(SystemExit):
            after_interruption({"signal": "SIGTERM"}, multirun=True)
    finally:
        ray.shutdown()
