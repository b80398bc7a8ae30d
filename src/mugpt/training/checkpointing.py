"""Checkpoints that survive kills, preemption and divergence, and finding the one to resume from.

- `AtomicCheckpointIO`: a checkpoint is written to a temporary file and renamed over the old one, so a kill
  during a save leaves the previous checkpoint whole.
- `RunCheckpoint`: Lightning's ModelCheckpoint keeping `checkpoints/last.ckpt` every N optimizer steps,
  but never over the last good one once the divergence guard has fired.
- `PreemptionCheckpoint`: SIGTERM, SIGUSR1, SIGUSR2 (how SLURM and most schedulers announce preemption) and
  Ctrl-C (SIGINT) save a checkpoint at the end of the current step and stop training cleanly; a second Ctrl-C
  stops at once.
- `find_resume_checkpoint`: `resume=auto|PATH` → the checkpoint and the run directory it belongs to.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mugpt.errors import CheckpointWriteError
from mugpt.rundir import CHECKPOINT_DIR, overrides_path
from mugpt.rundir import LAST_CHECKPOINT as LAST

log = logging.getLogger(__name__)

# overrides that say how to run, not what to train: ignored when matching a run to resume
# model options that change how a step runs, not what is trained: free to change on resume
RUNTIME_ONLY = {"activation_checkpointing", "dropout", "loss_impl", "loss_chunk"}
# Options added after checkpoints were already being written, with the value that computes what those checkpoints
# were trained with: a checkpoint without the key resumes when the run has this value (µP's ε scaling was off).
ADDED_OPTIONS = {"branch_mult": 1.0, "init_depth": None, "depth_alpha": 0.0, "base_depth": None, "scale_eps": False,
                 "hidden_init_std": None, "hidden_init_scale": None, "embedding_init_std": None}
NOT_IDENTITY = ("resume", "hydra.", "logger", "trainer.enable_progress_bar", "output_dir")


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        except (OSError, RuntimeError) as exc:  # torch's zip writer reports a full disk as a RuntimeError
            reason = _reason(exc, path.parent)  # before the space is given back
            tmp.unlink(missing_ok=True)  # the previous checkpoint was never touched
            raise CheckpointWriteError(f"checkpoint: could not write {path} ({reason}); the previous checkpoint "
                                       f"is kept: fix this and resume with resume=auto") from exc
        os.replace(tmp, path)


def _reason(exc: BaseException, folder: Path) -> str:
    """A write error's cause in a few words: the OS's reason where it gave one (torch's zip writer hides a full
    disk behind 'unexpected pos ...'), and the free space left where the file was going."""
    reason = next((e.strerror for e in (exc, exc.__cause__, exc.__context__) if isinstance(e, OSError) and e.strerror),
                  None)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if reason is None:
        lines = str(exc).strip().splitlines()
        reason = "No space left on device" if free is not None and free < 2**20 else (
            lines[-1][:200] if lines else type(exc).__name__)
    return reason if free is None else f"{reason}; {free / 2**20:.1f} MiB free there"


def _diverged(trainer: L.Trainer, before_saving: bool = False) -> bool:
    """Has a divergence guard stopped this run? before_saving: first make it read back the losses it has not
    checked yet (it checks once per log window), so that weights from after a divergence are never saved."""
    guards = [cb for cb in trainer.callbacks if hasattr(cb, "diverged_at")]
    if before_saving:
        for guard in guards:
            guard.check(trainer)
    return any(guard.diverged_at is not None for guard in guards)


class RunCheckpoint(ModelCheckpoint):
    """Saves only `last.ckpt`, every `every_n_steps` optimizer steps, unless training has diverged."""

    def __init__(self, dirpath: Path, every_n_steps: int) -> None:
        super().__init__(dirpath=str(dirpath), every_n_train_steps=every_n_steps, save_top_k=0, save_last=True,
                         enable_version_counter=False)
        self.CHECKPOINT_NAME_LAST = LAST.removesuffix(".ckpt")

    def on_train_batch_end(self, trainer, *args, **kwargs) -> None:
        saving = bool(self._every_n_train_steps) and trainer.global_step % self._every_n_train_steps == 0
        if not _diverged(trainer, before_saving=saving):
            super().on_train_batch_end(trainer, *args, **kwargs)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not _diverged(trainer, before_saving=True):
            super().on_validation_end(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        # Lightning saves `last` here when training ends: not after a divergence (the last good one stays)
        if not _diverged(trainer, before_saving=True):
            super().on_train_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not _diverged(trainer, before_saving=True):
            super().on_train_epoch_end(trainer, pl_module)


class PreemptionCheckpoint(L.Callback):
    """On SIGTERM/SIGUSR1/SIGUSR2/SIGINT: finish the current step, save `last.ckpt`, stop. `preempted_at` says
    when, `received` which signal. A second Ctrl-C while the first is being honoured stops at once
    (KeyboardInterrupt), without a checkpoint of that step."""

    # SIGUSR2 is what submitit's SLURM jobs get before their time limit (--signal=USR2@120)
    SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT")
                    if hasattr(signal, name))

    def __init__(self, path: Path) -> None:
        self.path = path
        self.received: int | None = None
        self.preempted_at: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def signal_name(self) -> str | None:
        return signal.Signals(self.received).name if self.received is not None else None

    def _handler(self, signum, _frame) -> None:
        if signum == signal.SIGINT:
            if self.received is not None:
                raise KeyboardInterrupt  # the user insists: stop now
            # written directly (not logged): a signal handler must not wait for the logging lock
            os.write(2, b"\nCtrl-C: finishing this step, then saving a checkpoint (Ctrl-C again stops at once)\n")
        if self.received is None:
            self.received = signum

    def on_train_start(self, trainer, pl_module) -> None:
        try:  # installed last, after Lightning's own handlers; only possible in the main thread
            self._previous = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
        except ValueError:
            log.warning("not in the main thread: preemption signals will not save a checkpoint")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.received is None or self.preempted_at is not None:
            return
        if _diverged(trainer, before_saving=True):
            return  # the divergence guard stops this run; the last good checkpoint stays
        trainer.save_checkpoint(self.path)
        self.preempted_at = trainer.global_step
        log.warning("%s: saved %s at step %d; continue with resume=auto", self.signal_name, self.path,
                    trainer.global_step)
        trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()  # a crash or a second Ctrl-C: the process's own handlers are back for what follows

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


def in_ray_worker() -> bool:
    """Is this process a Ray worker running a task (hydra/launcher=ray), rather than the sweep's own process?"""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return False
    try:
        return ray.get_runtime_context().worker.mode == 1  # ray's WORKER_MODE (0: the driver)
    except Exception:  # noqa: BLE001 - an older or newer Ray without this internal: treat as not a worker
        return False


def after_interruption(summary: dict, multirun: bool, job: int | None = None) -> None:
    """What the command does after a run a signal stopped cleanly (its checkpoint saved). SIGUSR2 under a
    launcher that handles it (submitit's SLURM jobs): the signal is handed on to that handler, which requeues the
    job (the sweep given resume=auto then continues it). Ctrl-C: exit 130, so a sweep or a shell script stops. A
    scheduler's SIGTERM/SIGUSR1 is meant for the whole process: a sweep stops after this job."""
    name = summary.get("signal")
    if in_ray_worker():
        # a Ray worker that exits is a crashed task to Ray: the job returns, and the signal, meant for the whole
        # allocation, reaches the sweep's own process too, which stops the sweep
        log.warning("%s: the job stopped cleanly; the sweep's own process decides whether the sweep goes on", name)
        return
    handler = signal.getsignal(signal.SIGUSR2) if name == "SIGUSR2" else None
    if callable(handler):
        log.warning("SIGUSR2: handed on to the launcher's handler (under SLURM: the job is requeued)")
        signal.raise_signal(signal.SIGUSR2)
    if name == "SIGINT":
        raise SystemExit(130)
    if multirun:
        log.warning("preempted: the sweep stops after job %s; relaunch it with resume=auto", job)
        raise SystemExit(0)


def _identity(run_dir: Path) -> list[str] | None:
    overrides = overrides_path(run_dir)
    if not overrides.is_file():
        return None
    return sorted(o for o in yaml.safe_load(overrides.read_text()) or [] if not o.lstrip("+~").startswith(NOT_IDENTITY))


def find_resume_checkpoint(resume: str | None, output_dir: Path, overrides: list[str] | None = None,
                           search_root: Path | None = None) -> tuple[Path, Path] | None:
    """(checkpoint, run directory) to resume from, or None to start fresh.

    resume=PATH: a .ckpt file, or a run directory holding checkpoints/last.ckpt.
    resume=auto: this run's own directory if it has a checkpoint (an explicit hydra.run.dir); otherwise the
    newest run under `search_root` (e.g. outputs/) launched with the same overrides, so a timestamped Hydra
    directory finds its earlier self. None when there is nothing to resume (auto) — a fresh start."""
    if not resume:
        return None
    if resume != "auto":
        path = Path(resume).expanduser()
        ckpt = path / CHECKPOINT_DIR / LAST if path.is_dir() else path
        if not ckpt.is_file():
            raise FileNotFoundError(f"resume={resume}: no checkpoint at {ckpt}")
        run_dir = ckpt.parent.parent if ckpt.parent.name == CHECKPOINT_DIR else ckpt.parent
        return ckpt, run_dir
    own = output_dir / CHECKPOINT_DIR / LAST
    if own.is_file():
        return own, output_dir
    if search_root is None or overrides is None or not search_root.is_dir():
        return None
    wanted = sorted(o for o in overrides if not o.lstrip("+~").startswith(NOT_IDENTITY))
    candidates = [c for c in search_root.rglob(f"{CHECKPOINT_DIR}/{LAST}")
                  if c.parent.parent != output_dir and _identity(c.parent.parent) == wanted]
    if not candidates:
        log.info("resume=auto: no earlier run with these overrides under %s; starting fresh", search_root)
        return None
    ckpt = max(candidates, key=lambda c: c.stat().st_mtime)
    return ckpt, ckpt.parent.parent


def saved_hparams(ckpt: Path) -> dict:
    """The hyperparameters stored in a checkpoint, read without loading its tensors (memory-mapped). A truncated
    or corrupt file is refused in one line naming it, before anything is written."""
    try:
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)
    except Exception as exc:  # noqa: BLE001 - torch reports a bad zip, a bad pickle, EOF... in many ways
        lines = str(exc).strip().splitlines()
        raise ValueError(f"resume: {ckpt} cannot be read ({lines[0][:160] if lines else type(exc).__name__}): it "
                         f"is truncated or corrupt and was left as it is; resume from another checkpoint "
                         f"(resume=PATH) or start without resume") from exc
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"resume: {ckpt} is not a training checkpoint of this project (no state_dict)")
    return checkpoint.get("hyper_parameters", {})


def _effective(options: dict) -> dict:
    """The options that shape the model: µP's output_alpha only counts where output_mult is null."""
    if options.get("output_mult") is not None:
        return {k: v for k, v in options.items() if k != "output_alpha"}
    return options


def check_compatible(ckpt: Path, hparams: dict) -> None:
    """A checkpoint of another model shape or another µP setup cannot be resumed: say which option differs."""
    saved = saved_hparams(ckpt)
    for section in ("model", "parametrization"):
        old, new = _effective(saved.get(section, {})), _effective(hparams.get(section, {}))
        for key in sorted((set(old) | set(new)) - RUNTIME_ONLY):
            if key not in old and key in ADDED_OPTIONS and new.get(key) == ADDED_OPTIONS[key]:
                continue
            if key not in old and key in ADDED_OPTIONS:
                raise ValueError(f"resume: checkpoint {ckpt} predates {section}.{key} and was trained as "
                                 f"{section}.{key}={ADDED_OPTIONS[key]}; this run has {section}.{key}={new.get(key)}")
            if old.get(key) != new.get(key):
                raise ValueError(f"resume: checkpoint {ckpt} was trained with {section}.{key}={old.get(key)}, "
                                 f"this run has {section}.{key}={new.get(key)}")
