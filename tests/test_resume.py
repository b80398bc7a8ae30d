"""Nothing trained is lost: atomic checkpoints, kill -9 and resume, preemption, divergence, bad resumes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mugpt.training.checkpointing import AtomicCheckpointIO, after_interruption, find_resume_checkpoint
from mugpt.training.train import train

ROOT = Path(__file__).resolve().parents[1]
# slow enough per step (~10 ms) that a kill lands mid-run; deterministic so two runs can be compared
RUN = ["+experiment=smoke", "data.tokenizer=byte", "model.width=64", "model.block_size=64", "data.batch_size=8",
       "trainer.max_steps=80", "eval_every=80", "optim.warmup_steps=5", "checkpoint.every_n_steps=10",
       "trainer.deterministic=true", "trainer.enable_progress_bar=false", "logger=none", "data.val_batches=2"]


def launch(args, cwd, cache):
    env = {**os.environ, "MUGPT_CACHE": str(cache), "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "src" / "train.py"), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_checkpoint_then(proc, ckpt: Path, action, timeout=300):
    deadline = time.time() + timeout
    while not ckpt.exists():
        assert proc.poll() is None, f"run ended before its first checkpoint:\n{proc.stdout.read()[-3000:]}"
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.02)
    action()
    out, _ = proc.communicate(timeout=timeout)
    return out


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_final_loss(tmp_path, cache_dir):
    """SIGKILL part-way, then `resume=auto` from a fresh timestamped Hydra directory: same result as no kill."""
    whole = tmp_path / "whole"
    proc = launch([*RUN, f"hydra.run.dir={whole}"], tmp_path, cache_dir)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    reference = summary_of(whole)

    work = tmp_path / "work"  # runs go to work/outputs/DATE/TIME, as for a user
    work.mkdir()
    proc = launch(RUN, work, cache_dir)
    ckpts = lambda: list(work.glob("outputs/*/*/checkpoints/last.ckpt"))  # noqa: E731
    deadline = time.time() + 300
    while not ckpts():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_dir = ckpts()[0].parent.parent
    step = torch.load(ckpts()[0], map_location="cpu", weights_only=False)["global_step"]
    assert 10 <= step < 80, step  # killed part-way, after at least one checkpoint

    time.sleep(1.1)  # a new second: Hydra gives the resumed launch its own timestamped directory
    proc = launch([*RUN, "resume=auto"], work, cache_dir)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert f"resuming the run in {killed_dir}" in out
    resumed = summary_of(killed_dir)
    assert resumed["status"] == "completed" and resumed["steps"] == reference["steps"] == 80
    assert resumed["val_loss"] == pytest.approx(reference["val_loss"], abs=1e-5)
    assert resumed["train_loss"] == pytest.approx(reference["train_loss"], abs=1e-5)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_stops_cleanly(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    args = [*RUN, "trainer.max_steps=100000", "checkpoint.every_n_steps=5", f"hydra.run.dir={run_dir}"]
    proc = launch(args, tmp_path, cache_dir)
    out = wait_for_checkpoint_then(proc, run_dir / "checkpoints" / "last.ckpt",
                                   lambda: proc.send_signal(signal.SIGTERM))
    assert proc.returncode == 0, out[-3000:]
    summary = summary_of(run_dir)
    assert summary["status"] == "interrupted" and 5 <= summary["steps"] < 100000
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == summary["steps"]  # saved at the step it stopped, not at the last interval


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_stops_in_one_line_and_resumes_exactly(tmp_path, cache_dir):
    """Ctrl-C (SIGINT) from the command line: the step finishes, last.ckpt is saved at it, the run ends
    `interrupted` with exit status 130 and no traceback; resume=auto then ends at the uninterrupted run's loss."""
    whole = tmp_path / "whole"
    proc = launch([*RUN, f"hydra.run.dir={whole}"], tmp_path, cache_dir)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    reference = summary_of(whole)
    run_dir = tmp_path / "run"
    proc = launch([*RUN, f"hydra.run.dir={run_dir}"], tmp_path, cache_dir)
    out = wait_for_checkpoint_then(proc, run_dir / "checkpoints" / "last.ckpt", lambda: proc.send_signal(signal.SIGINT))
    assert proc.returncode == 130, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    assert "Ctrl-C: finishing this step, then saving a checkpoint (Ctrl-C again stops at once)" in out
    summary = summary_of(run_dir)
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGINT" and 10 <= summary["steps"] < 80
    assert f"SIGINT: saved {run_dir / 'checkpoints' / 'last.ckpt'} at step {summary['steps']}; continue with " \
           f"resume=auto" in out
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == summary["steps"]
    proc = launch([*RUN, f"hydra.run.dir={run_dir}", "resume=auto"], tmp_path, cache_dir)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    resumed = summary_of(run_dir)
    assert resumed["status"] == "completed" and resumed["steps"] == 80
    assert resumed["val_loss"] == pytest.approx(reference["val_loss"], abs=1e-5)


def test_after_an_interruption_sigusr2_goes_on_to_the_launchers_handler_and_ctrl_c_exits_130():
    """Under SLURM, submitit's own SIGUSR2 handler requeues the job: once the checkpoint is saved, the signal is
    handed on to it. Ctrl-C exits 130 (a sweep or a script stops); SIGTERM stops a sweep after its job."""
    seen = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: seen.append(signum))
    try:
        after_interruption({"signal": "SIGUSR2"}, multirun=False)
        assert seen == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)
    with pytest.raises(SystemExit) as ctrl_c:
        after_interruption({"signal": "SIGINT"}, multirun=False)
    assert ctrl_c.value.code == 130
    with pytest.raises(SystemExit) as preempted:
        after_interruption({"signal": "SIGTERM"}, multirun=True, job=3)
    assert preempted.value.code == 0
    after_interruption({"signal": "SIGTERM"}, multirun=False)  # a single run just ends


def test_atomic_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)

    def dies_mid_write(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # what a kill during the write looks like to the file system

    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False) == {"step": 1}


def test_divergence_keeps_the_last_good_checkpoint(make_cfg):
    # lr 8: the loss explodes within a few steps; checkpoints every step must stop at the last finite one
    cfg = make_cfg("optim.lr=8.0", "optim.warmup_steps=0", "max_loss=6.0", "checkpoint.every_n_steps=1",
                   "trainer.max_steps=50")
    summary = train(cfg)
    assert summary["status"] == "diverged"
    ckpt = torch.load(Path(cfg.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] < summary["steps"]
    for value in ckpt["state_dict"].values():
        assert torch.isfinite(value).all()


@pytest.mark.parametrize("change, match", [
    ("model.width=96", "model.width=64, this run has model.width=96"),
    ("parametrization.base_width=64", "parametrization.base_width=32, this run has parametrization.base_width=64"),
])
def test_resuming_into_a_different_model_is_refused(make_cfg, tmp_path, change, match):
    first = make_cfg("parametrization=mup", "parametrization.base_width=32", "trainer.max_steps=4",
                     "eval_every=4", "optim.warmup_steps=1")
    train(first)
    ckpt = Path(first.output_dir) / "checkpoints" / "last.ckpt"
    again = make_cfg("parametrization=mup", "parametrization.base_width=32", change, "trainer.max_steps=8",
                     f"resume={ckpt}")
    with pytest.raises(ValueError, match=match):
        train(again)
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 4  # untouched


def test_resume_path_must_exist(make_cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="resume=.*nowhere"):
        train(make_cfg(f"resume={tmp_path / 'nowhere'}"))


def test_resume_auto_matches_runs_by_their_overrides(tmp_path):
    def fake_run(name, overrides, mtime):
        run = tmp_path / "outputs" / "day" / name
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(json.dumps(overrides))
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
        os.utime(run / "checkpoints" / "last.ckpt", (mtime, mtime))
        return run

    older = fake_run("a", ["model.width=64"], 1000)
    newer = fake_run("b", ["model.width=64", "logger=none"], 2000)
    fake_run("c", ["model.width=128"], 3000)
    here = tmp_path / "outputs" / "day" / "now"
    found = find_resume_checkpoint("auto", here, ["model.width=64", "resume=auto"], tmp_path / "outputs")
    assert found == (newer / "checkpoints" / "last.ckpt", newer)  # logger does not change what is trained
    assert older != newer
    assert find_resume_checkpoint("auto", here, ["model.width=32"], tmp_path / "outputs") is None
    assert find_resume_checkpoint(None, here, [], tmp_path) is None


def test_checkpoint_older_than_an_option_resumes_only_as_it_was_trained(tmp_path):
    """A checkpoint written before µP's depth and ε options existed has none of them: it resumes when the run
    computes what it was trained with (no depth rule, fixed ε), and is refused, naming the option, otherwise."""
    from mugpt.training.checkpointing import check_compatible

    old = {"model": {"width": 64, "n_layer": 2}, "parametrization": {"name": "mup", "base_width": 32}}
    ckpt = tmp_path / "old.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": old}, ckpt)
    same = {"model": {**old["model"], "branch_mult": 1.0, "init_depth": None},
            "parametrization": {**old["parametrization"], "depth_alpha": 0.0, "base_depth": None, "scale_eps": False}}
    check_compatible(ckpt, same)
    with pytest.raises(ValueError, match="predates parametrization.scale_eps and was trained as parametrization."
                                         "scale_eps=False; this run has parametrization.scale_eps=True"):
        check_compatible(ckpt, {**same, "parametrization": {**same["parametrization"], "scale_eps": True}})
    # µP's defaults of 2026-11-30 (own init, output_alpha): an older µP checkpoint resumes with GPT-2's init and
    # its output_mult given (output_alpha then shapes nothing), and is refused with the new defaults
    old_mup = {"model": {**same["model"]}, "parametrization": {**old["parametrization"], "output_mult": 1.0}}
    torch.save({"state_dict": {}, "hyper_parameters": old_mup}, ckpt)
    gpt2_init = {"hidden_init_scale": None, "embedding_init_std": None, "output_alpha": 128.0}
    now = {"model": {**same["model"], "hidden_init_std": None},
           "parametrization": {**same["parametrization"], "output_mult": 1.0, **gpt2_init}}
    check_compatible(ckpt, now)
    with pytest.raises(ValueError, match="predates parametrization.hidden_init_scale and was trained as "
                                         "parametrization.hidden_init_scale=None; this run has "
                                         "parametrization.hidden_init_scale=0.5"):
        check_compatible(ckpt, {**now, "parametrization": {**now["parametrization"], "hidden_init_scale": 0.5}})
    with pytest.raises(ValueError, match="trained with parametrization.output_alpha=None, this run has "
                                         "parametrization.output_alpha=128.0"):
        check_compatible(ckpt, {**now, "parametrization": {**now["parametrization"], "output_mult": None}})
