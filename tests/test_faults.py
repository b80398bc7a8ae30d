"""Faults a long run meets, made to happen for real on small CPU runs: a full disk, kills and signals at the worst
moments, corrupt files, runs racing for one cache, unwritable folders, a sweep with bad jobs; and twenty bad
inputs on the command line. Each test states what must hold: nothing already written is lost, the message is
one line naming the option or the path, and what can be resumed resumes exactly."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from conftest import TINY, run_train_cli
from mugpt.data.text import TextDataModule, _exclusive
from mugpt.errors import CheckpointWriteError, ConfigError, RunInterrupted
from mugpt.training.train import train

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# 20 steps of the tiny byte-level model, a checkpoint every 5: fast, deterministic, resumable
RUN = ["trainer.max_steps=20", "eval_every=10", "checkpoint.every_n_steps=5", "trainer.deterministic=true"]


def summary_of(run_dir: Path, name: str = "summary.json") -> dict:
    return json.loads((run_dir / name).read_text())


def step_of(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]


@pytest.fixture
def reference(make_cfg, tmp_path) -> dict:
    """The uninterrupted run every fault below is compared against."""
    return train(make_cfg(*RUN, f"output_dir={tmp_path / 'reference'}"))


# ------------------------------------------------------------------------------------ 1. a full disk
def test_a_full_disk_during_a_checkpoint_save_keeps_the_previous_one_and_resume_continues(make_cfg, tmp_path,
                                                                                      reference, monkeypatch):
    """The second save hits ENOSPC part-way through its file: the run stops with one line naming the file, the
    first checkpoint is intact, no partial file is left, and resume=auto ends where the uninterrupted run did."""
    real_save, saves = TorchCheckpointIO.save_checkpoint, []

    def disk_fills(self, checkpoint, path, storage_options=None):
        saves.append(path)
        if len(saves) < 2:
            return real_save(self, checkpoint, path, storage_options)
        Path(path).write_bytes(b"the first bytes of a checkpoint")  # what reached the disk before it filled
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    run = tmp_path / "run"
    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", disk_fills)
    with pytest.raises(CheckpointWriteError, match=r"^checkpoint: could not write .*last\.ckpt \(No space left on "
                                                   r"device; .* MiB free there\); the previous checkpoint is kept"):
        train(make_cfg(*RUN, f"output_dir={run}"))
    monkeypatch.undo()
    failed = summary_of(run)
    assert failed["status"] == "failed" and failed["error"].startswith("CheckpointWriteError: checkpoint: could not")
    assert "\n" not in failed["error"]
    assert step_of(run / "checkpoints" / "last.ckpt") == 5
    assert not (run / "checkpoints" / "last.ckpt.tmp").exists()

    resumed = train(make_cfg(*RUN, f"output_dir={run}", "resume=auto"))
    assert resumed["status"] == "completed" and resumed["steps"] == reference["steps"] == 20
    assert resumed["val_loss"] == pytest.approx(reference["val_loss"], abs=1e-6)


def _tmpfs(path: Path, size: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_a_real_full_disk_on_the_command_line(tmp_path, cache_dir, reference):
    """The same on a tmpfs that holds one checkpoint but not a second beside it (where mounting is allowed):
    the command prints one line and exits 1; once the file system is larger, resume=auto finishes the run."""
    size = (Path(reference["output_dir"]) / "checkpoints" / "last.ckpt").stat().st_size
    disk = tmp_path / "small_disk"
    if not _tmpfs(disk, int(1.5 * size) + 256 * 1024):
        pytest.skip("cannot mount a tmpfs here (needs root): the injected ENOSPC test above covers the behaviour")
    try:
        args = [*TINY, *RUN, "logger=none", f"hydra.run.dir={disk / 'run'}"]
        proc = run_train_cli(args, tmp_path, cache_dir)
        assert proc.returncode == 1, proc.stderr[-3000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: checkpoint: could not write {disk / 'run' / 'checkpoints' / 'last.ckpt'}")
        assert "Traceback" not in proc.stderr
        assert step_of(disk / "run" / "checkpoints" / "last.ckpt") == 5
        assert summary_of(disk / "run")["status"] == "failed"

        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)  # space freed
        proc = run_train_cli([*args, "resume=auto"], tmp_path, cache_dir)
        assert proc.returncode == 0, proc.stderr[-3000:]
        resumed = summary_of(disk / "run")
        assert resumed["status"] == "completed" and resumed["steps"] == 20
        assert resumed["val_loss"] == pytest.approx(reference["val_loss"], abs=1e-6)
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


# ------------------------------------------------------------------------- 2. SIGKILL during a save
def test_sigkill_while_a_checkpoint_is_being_written(tmp_path, cache_dir):
    """A GPT-2-vocabulary model (a 40 MB checkpoint) saving every 4 steps; the process is killed the moment a
    save's temporary file appears. The previous checkpoint is whole and resume=auto reaches the uninterrupted
    run's final loss."""
    args = [*TINY, "data.tokenizer=gpt2", "model.block_size=32", "trainer.max_steps=24", "eval_every=24",
            "checkpoint.every_n_steps=4", "trainer.deterministic=true", "logger=none"]
    whole = tmp_path / "whole"
    proc = run_train_cli([*args, f"hydra.run.dir={whole}"], tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]

    run = tmp_path / "run"
    env = {**os.environ, "MUGPT_CACHE": str(cache_dir), "WANDB_MODE": "offline"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "src" / "train.py"), *args, f"hydra.run.dir={run}"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last, tmp = run / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt.tmp"
    deadline = time.time() + 300
    while not (last.exists() and tmp.exists()):  # a save after the first one is under way
        assert proc.poll() is None, "the run ended before a second checkpoint save was seen"
        assert time.time() < deadline
        time.sleep(0.0005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    kept = step_of(last)  # loads: the rename never happened, the previous checkpoint is whole
    assert kept % 4 == 0 and 4 <= kept < 24

    proc = run_train_cli([*args, f"hydra.run.dir={run}", "resume=auto"], tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed, reference = summary_of(run), summary_of(whole)
    assert resumed["status"] == "completed" and resumed["steps"] == 24
    assert resumed["val_loss"] == pytest.approx(reference["val_loss"], abs=1e-6)


# ------------------------------------------------------------------ 3. a corrupt or truncated checkpoint
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_checkpoint_is_named_and_nothing_is_overwritten(make_cfg, tmp_path, reference, damage):
    run = Path(reference["output_dir"])
    ckpt = run / "checkpoints" / "last.ckpt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00not a checkpoint" * 100)
    damaged, summary_before = ckpt.read_bytes(), (run / "summary.json").read_bytes()
    with pytest.raises(ConfigError, match=rf"^resume: {ckpt} cannot be read \(.*\): it is truncated or corrupt"):
        train(make_cfg(*RUN, f"output_dir={run}", "resume=auto"))
    assert ckpt.read_bytes() == damaged  # left as it was, for the user to inspect
    assert (run / "summary.json").read_bytes() == summary_before  # the run's own summary is kept
    refused = summary_of(run, "summary.refused.json")
    assert refused["status"] == "failed" and refused["refused"] is True and "cannot be read" in refused["error"]


# ----------------------------------------------------------------------------- 4. a corrupt token cache
def test_a_corrupt_token_cache_is_detected_and_rebuilt(make_cfg, tmp_path, reference, caplog):
    """Bytes of train.bin flipped on disk: the checksum in meta.json catches it before training, the cache is
    rebuilt, and the run is the same run."""
    own_cache = tmp_path / "cache"
    first = train(make_cfg(*RUN, f"data.cache_dir={own_cache}", f"output_dir={tmp_path / 'a'}"))
    [train_bin] = own_cache.glob("*/train.bin")
    data = bytearray(train_bin.read_bytes())
    data[100:110] = bytes(10)
    train_bin.write_bytes(bytes(data))
    again = train(make_cfg(*RUN, f"data.cache_dir={own_cache}", f"output_dir={tmp_path / 'b'}"))
    assert any("incomplete or corrupt; rebuilding it" in r.getMessage() for r in caplog.records)
    assert again["val_loss"] == first["val_loss"] == pytest.approx(reference["val_loss"], abs=0)


# ---------------------------------------------------------------- 5. two runs racing for a cold cache
def test_tokenizing_waits_for_a_run_already_writing_the_cache(tmp_path):
    """While one process holds the cache's lock, another's prepare_data waits (no half-written file is read),
    then finds the cache the first wrote, or writes it itself once the lock is free."""
    dm = TextDataModule(tokenizer="byte", block_size=32, cache_dir=str(tmp_path))
    lock = tmp_path / f".{dm.cache.folder.name}.lock"
    done = threading.Event()
    with _exclusive(lock):
        worker = threading.Thread(target=lambda: (dm.prepare_data(), done.set()))
        worker.start()
        assert not done.wait(1.0)  # blocked on the lock
        assert not dm.cache.is_valid()
    worker.join(timeout=120)
    assert done.is_set() and dm.cache.is_valid()


def test_two_runs_started_together_on_a_cold_cache(tmp_path):
    """Two command-line runs on one empty cache at the same moment: both train, the corpus is tokenized once,
    and one valid cache results."""
    cache = tmp_path / "cold_cache"
    env = {**os.environ, "MUGPT_CACHE": str(cache), "WANDB_MODE": "offline"}
    procs = [subprocess.Popen([sys.executable, str(ROOT / "src" / "train.py"), *TINY, "data.tokenizer=gpt2",
                               "trainer.max_steps=2", "eval_every=2", "logger=none", f"hydra.run.dir={tmp_path / n}"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for n in ("a", "b")]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    assert sum(o.count("tokenized the Shakespeare corpus") for o in outputs) == 1
    [folder] = [f for f in cache.iterdir() if f.is_dir()]
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "train.bin", "val.bin"]  # no temporaries
    assert [summary_of(tmp_path / n)["status"] for n in ("a", "b")] == ["completed", "completed"]


# ------------------------------------------------------------------- 6. SIGTERM at awkward moments
class SignalAt(L.Callback):
    """Sends this process `signum` (SIGTERM by default): at the first validation batch, `delay` seconds into the
    first step, or (`twice`) two Ctrl-Cs in a row at the start of step 7."""

    def __init__(self, when: str, delay: float = 0.2, signum: int = signal.SIGTERM) -> None:
        self.when, self.delay, self.sent_at_step, self.signum = when, delay, None, signum

    def _send(self, trainer) -> None:
        if self.sent_at_step is None:
            self.sent_at_step = trainer.global_step
            os.kill(os.getpid(), self.signum)
            if self.when == "twice":
                os.kill(os.getpid(), self.signum)

    def on_validation_batch_start(self, trainer, *args) -> None:
        if self.when == "validation" and trainer.state.fn == "fit":
            self._send(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.when == "first_step" and trainer.global_step == 0 and self.sent_at_step is None:
            self.sent_at_step = 0
            threading.Timer(self.delay, os.kill, (os.getpid(), self.signum)).start()
        if self.when == "twice" and trainer.global_step == 7:
            self._send(trainer)
        if self.when == "training" and trainer.global_step == 3:
            self._send(trainer)  # at the start of the 4th step: that step finishes, then the run saves at step 4


def train_with(sender: L.Callback, cfg) -> dict:
    """train(cfg) with `sender` among the run's callbacks."""
    from mugpt.training import train as training

    real_build = training.build_callbacks

    def with_sender(*args, **kwargs):
        callbacks = real_build(*args, **kwargs)
        callbacks.configured.append(sender)
        return callbacks

    training.build_callbacks = with_sender
    try:
        return train(cfg)
    finally:
        training.build_callbacks = real_build


@pytest.mark.parametrize("when, extra, signum", [
    ("validation", [], signal.SIGTERM), ("first_step", ["compile=default"], signal.SIGTERM),
    ("validation", [], signal.SIGINT),    # Ctrl-C
    ("validation", [], signal.SIGUSR2),   # SLURM's warning before the time limit (submitit's --signal=USR2@120)
    ("training", [], signal.SIGUSR2), ("training", [], signal.SIGINT),
])
def test_a_signal_during_validation_or_the_first_compile_saves_and_resumes(make_cfg, tmp_path, when, extra, signum):
    """The preemption handler is installed before the first step: a SIGTERM, SIGUSR2 or Ctrl-C in the middle of
    validation, or while torch.compile builds the first step, lets the step or the validation finish, saves, and
    ends the run as `interrupted`; resume=auto then completes it to the same loss as an uninterrupted run."""
    whole = train(make_cfg(*RUN, *extra, f"output_dir={tmp_path / 'whole'}"))
    run = tmp_path / "run"
    previous = signal.getsignal(signum)
    interrupted = train_with(SignalAt(when, signum=signum), make_cfg(*RUN, *extra, f"output_dir={run}"))
    assert signal.getsignal(signum) is previous  # the process's own handler is back
    assert interrupted["status"] == "interrupted"
    assert interrupted["signal"] == signal.Signals(signum).name
    stopped = step_of(run / "checkpoints" / "last.ckpt")
    assert stopped == interrupted["steps"]
    if when == "first_step":
        assert stopped == 1  # the signal came during step 1, the compiled one; the run stopped right after it
    elif when == "training":
        assert stopped == 4
    else:
        assert stopped == 11  # validation after step 10; the step after it finished and saved
    resumed = train(make_cfg(*RUN, *extra, f"output_dir={run}", "resume=auto"))
    assert resumed["status"] == "completed" and resumed["steps"] == 20
    assert resumed["val_loss"] == pytest.approx(whole["val_loss"], abs=1e-5)


def test_a_second_ctrl_c_stops_at_once_without_saving_that_step(make_cfg, tmp_path):
    """Two Ctrl-Cs at the start of step 7: the run stops inside that step (no checkpoint of it; the one of step 5
    stays), the summary says interrupted, the error is a KeyboardInterrupt, and Ctrl-C is the process's again."""
    run = tmp_path / "run"
    with pytest.raises(RunInterrupted, match=r"stopped at once \(Ctrl-C\); the last checkpoint, .*last.ckpt, "
                                              r"continues with resume=auto"):
        train_with(SignalAt("twice", signum=signal.SIGINT), make_cfg(*RUN, f"output_dir={run}"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    summary = summary_of(run)
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGINT"
    assert step_of(run / "checkpoints" / "last.ckpt") == 5


# -------------------------------------------------------------------- 7. an unwritable output folder
def test_an_output_folder_that_cannot_be_written_is_refused_before_training(make_cfg, tmp_path, cache_dir):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match=rf"^output_dir={blocker / 'run'}: cannot create it, {blocker} is a file"):
        train(make_cfg(f"output_dir={blocker / 'run'}"))
    proc = run_train_cli([*TINY, "logger=none", f"hydra.run.dir={blocker / 'run'}"], tmp_path, cache_dir)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (f"error: hydra.run.dir={blocker / 'run'}: cannot create it, "
                                                     f"{blocker} is a file")
    if os.geteuid() != 0:  # root writes into read-only folders: only a non-root user can be refused by mode
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        with pytest.raises(ConfigError, match="cannot write into"):
            train(make_cfg(f"output_dir={locked / 'run'}"))


# ------------------------------------------------------------ 8. a sweep with a failing and a diverging job
def test_a_sweep_with_a_failing_and_a_diverging_job_completes_the_others(tmp_path, cache_dir):
    """Four jobs: Adam's eps -1 passes the launch's checks but fails when the job builds its optimizer, at both
    learning rates; lr 8 diverges with eps 1e-8, lr 0.01 completes. The sweep exits 0 and the report lists every
    status. (A job refused by the checks refuses the whole sweep before any job: tests/test_sweep.py.)"""
    sweep = tmp_path / "sweep"
    proc = run_train_cli(["-m", *TINY, "trainer.max_steps=6", "eval_every=6", "max_loss=6.0", "logger=none",
                          "optim.warmup_steps=0", "optim.eps=1e-8,-1", "optim.lr=0.01,8.0",
                          f"hydra.sweep.dir={sweep}"], tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    statuses = {(s["lr"], j in "01"): s["status"] for j, s in ((j, summary_of(sweep / j)) for j in "0123")}
    assert statuses == {(0.01, True): "completed", (8.0, True): "diverged", (0.01, False): "failed",
                        (8.0, False): "failed"}
    report = subprocess.run([sys.executable, str(ROOT / "scripts" / "mutransfer_report.py"), str(sweep)],
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "4 runs: 1 completed, 1 diverged, 2 failed" in report.stdout
    rows = (sweep / "mutransfer.csv").read_text().splitlines()
    assert sorted(r.split(",")[CSV_STATUS] for r in rows[1:]) == ["completed", "diverged", "failed", "failed"]


CSV_STATUS = 5  # mugpt.studies.transfer.CSV_COLUMNS: parametrization, width, lr, seed, val_loss, status, output_dir


# ------------------------------------------------------------------------------ twenty bad inputs
BAD_INPUTS = [  # (overrides, what the one line must say)
    (["model.width=130"], "model.width=130 is not divisible by model.n_head=4"),
    (["model.block_size=100000000"], "model.block_size=100000000"),
    (["trainer.max_steps=-5"], "trainer.max_steps=-5: must be a positive integer"),
    (["seed=abc"], "seed=abc: must be an integer >= 0"),
    (["optim.lr=abc"], "optim.lr=abc"),
    (["optim=nope"], "Could not find 'optim/nope' (choose one of adafactor, adagrad"),
    (["optim.betas2=0.9"], "Could not override 'optim.betas2'"),
    (["data.batch_size=1.5"], "data.batch_size=1.5"),
    (["data.tokenizer=nope"], "data.tokenizer"),
    (["precision=16-mixed"], "precision=16-mixed: fp16 needs a CUDA GPU"),
    (["optim.lr=-1"], "optim.lr must be positive"),
    (["optim.schedule=nope"], "optim.schedule: unknown schedule 'nope'"),
    (["eval_every=0"], "eval_every=0: must be a positive integer"),
    (["max_loss=-1"], "max_loss=-1: must be a positive number"),
    (["trainer.accelerator=gpu"], "trainer.accelerator=gpu: this machine has no CUDA GPU"),
    (["trainer.devices=0"], "trainer.devices=0"),
    (["data=text"], "data.path is required for data.source=text"),
    (["data=text", "data.path=/nowhere/corpus.txt"], "data.path: no such file, folder or glob: '/nowhere/corpus.txt'"),
    (["resume=/nowhere"], "resume=/nowhere: no checkpoint at /nowhere"),
    (["checkpoint.every_n_steps=-1"], "checkpoint.every_n_steps=-1: must be an integer >= 0"),
    (["parametrization=mup", "parametrization.base_width=0"], "parametrization.base_width must be a positive integer"),
    (["grad_accum=tokens", "grad_accum.batch_tokens=1000"], "grad_accum.batch_tokens=1000 is not a positive multiple"),
    (["parametrization=mup", "parametrization.depth_alpha=1"], "parametrization.depth_alpha=1 needs "
                                                                "parametrization.base_depth"),
    (["parametrization=mup", "parametrization.depth_alpha=1", "parametrization.base_depth=2", "optim=sgd"],
     "parametrization.depth_alpha=1: the 'sgd' optimizer family has no depth rule"),
    (["optim.batch_lr_rule=sqrt"], "optim.batch_lr_rule=sqrt needs optim.base_batch"),
]


def test_twenty_bad_inputs_give_one_line_each_naming_the_option(tmp_path, cache_dir):
    def refuse(case):
        i, (args, message) = case
        proc = run_train_cli([*args, "logger=none", f"hydra.run.dir={tmp_path / str(i)}"], tmp_path, cache_dir)
        return args, message, proc

    with ThreadPoolExecutor(2) as pool:  # two at a time: each is mostly Python start-up
        results = list(pool.map(refuse, enumerate(BAD_INPUTS)))
    assert len(results) >= 20
    wrong = []
    for args, message, proc in results:
        lines = proc.stderr.strip().splitlines()
        if not (proc.returncode == 1 and lines and lines[-1].startswith("error: ") and message in lines[-1]
                and "Traceback" not in proc.stderr):
            wrong.append((args, proc.returncode, proc.stderr[-1500:]))
    assert not wrong, wrong
