"""train(cfg): build data, module and trainer from a composed Hydra config, fit, and write summary.json.

This is the one function both `src/train.py` (through @hydra.main) and the tests (through Hydra's
compose API) call. Every check that can fail on bad input runs before the first training step.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import string
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import get_class, instantiate
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from mugpt.callbacks import DivergenceGuard, MemoryReport, ProgressBar, Throughput
from mugpt.checkpointing import (CHECKPOINT_DIR, LAST, AtomicCheckpointIO, PreemptionCheckpoint, RunCheckpoint,
                                 check_compatible, find_resume_checkpoint)
from mugpt.diagnostics import build_diagnostics
from mugpt.distributed import build_strategy, check_strategy, single_job_command, uses_cuda, world_size
from mugpt.model import GPTConfig
from mugpt.module import GPTLightningModule, perplexity
from mugpt.optim import check_optimizer, check_schedule
from mugpt.parametrization import get_parametrization

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"

# The DataModule restores its sampling position itself (samples_seen in its state_dict), so Lightning's
# warning that a mid-epoch resume of a plain DataLoader is unreliable does not apply here.
warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")

# `optim.lr: ${pow2:${lr_log2}}` lets a sweep run a log2 learning-rate grid as `lr_log2=range(-12,-3)`
OmegaConf.register_new_resolver("pow2", lambda exponent: 2.0 ** float(exponent), replace=True)


def load_env() -> None:
    """Load .env if present and keep W&B offline and silent when there is no API key."""
    try:
        from dotenv import load_dotenv

        load_dotenv(override=False)
    except ImportError:
        pass
    if not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
        os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")


def publish_to_wandb(job_type: str, out_dir: Path, images: list[Path], tables: list[Path],
                     config: dict | None = None) -> Path:
    """Log a script's result (the coordinate check, the µTransfer report) to W&B as one run of `job_type`: each
    PNG as an image and each CSV as a table, so the figures sit beside the training runs in the dashboard.
    Offline without an API key, like the training runs. Returns the W&B run's local directory."""
    import csv

    load_env()
    import wandb

    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "mugpt"), entity=os.environ.get("WANDB_ENTITY"),
                     job_type=job_type, name=f"{job_type}-{out_dir.resolve().name}", dir=str(out_dir),
                     config=config or {}, reinit="finish_previous")
    payload: dict[str, Any] = {path.stem: wandb.Image(str(path)) for path in images}
    for path in tables:
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
        payload[path.stem] = wandb.Table(columns=rows[0], data=rows[1:])
    run.log(payload)
    local = Path(run.dir).parent
    run.finish()
    return local


def check_precision(precision: str) -> None:
    """Fail fast on a precision this machine cannot run."""
    if precision.startswith("16") and not torch.cuda.is_available():
        raise ValueError(f"precision={precision}: fp16 needs a CUDA GPU; on CPU use precision=32 or bf16-mixed")
    if precision.startswith("bf16") and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision={precision}: this GPU has no bf16 support; use 16-mixed or 32")


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


def run_name(cfg: DictConfig) -> str | None:
    """Name a run from its command-line overrides (Hydra's override_dirname), when Hydra is running."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except ValueError:
        return None
    return hc.job.override_dirname or hc.job.name


def sweep_group() -> str | None:
    """Group runs of one multirun together: the sweep directory names the group."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ValueError, ImportError):
        return None
    if hc.mode != RunMode.MULTIRUN:
        return None
    return Path(hc.sweep.dir).name


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


def check_loggers(cfg: DictConfig) -> None:
    """Fail fast on a logger whose package is missing, before any data is read."""
    import importlib.util

    for name, c in logger_configs(cfg).items():
        if c._target_.endswith("TensorBoardLogger") and not any(
                importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
            raise ValueError(f"logger={name}: needs the tensorboard package (pip install -e '.[tb]')")


def build_logger(cfg: DictConfig, output_dir: Path) -> list | bool:
    """Lightning loggers for this run, all writing into its output directory (False when there are none)."""
    loggers = []
    for c in logger_configs(cfg).values():
        kwargs: dict[str, Any] = {}
        if c._target_.endswith("WandbLogger"):
            kwargs = {"save_dir": str(output_dir), "name": run_name(cfg), "group": sweep_group(),
                      "config": OmegaConf.to_container(cfg, resolve=True), "id": wandb_run_id(output_dir),
                      "resume": "allow"}
        elif c._target_.endswith(("CSVLogger", "TensorBoardLogger")):
            kwargs = {"save_dir": str(output_dir)}
        # through a partial: WandbLogger's `config` keyword would collide with instantiate's own `config`
        loggers.append(instantiate(c, _partial_=True)(**kwargs))
    return loggers or False


def build_datamodule(cfg: DictConfig):
    """The DataModule named by cfg.data._target_; called directly (not through hydra's instantiate) so that
    a bad option surfaces as its own one-line error instead of a wrapped InstantiationException."""
    kwargs = OmegaConf.to_container(cfg.data, resolve=True)
    cls = get_class(kwargs.pop("_target_"))
    return cls(**kwargs, block_size=cfg.model.block_size)


def accumulation_steps(cfg: DictConfig, processes: int = 1) -> int:
    """Micro-batches per optimizer step: from grad_accum.batch_tokens (the global batch, over all processes)
    when set, else the trainer's own."""
    batch_tokens = cfg.grad_accum.get("batch_tokens")
    if not batch_tokens:
        return int(cfg.trainer.get("accumulate_grad_batches") or 1)
    micro = cfg.data.batch_size * cfg.model.block_size * processes
    if batch_tokens <= 0 or batch_tokens % micro:
        raise ValueError(f"grad_accum.batch_tokens={batch_tokens} is not a positive multiple of one micro-batch on "
                         f"every process, data.batch_size*model.block_size*processes = {cfg.data.batch_size}*"
                         f"{cfg.model.block_size}*{processes} = {micro}")
    return batch_tokens // micro


def write_summary(output_dir: Path, summary: dict) -> None:
    path = output_dir / SUMMARY_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    os.replace(tmp, path)


# What a bad option or path raises before training starts: its message names the option or the path.
INPUT_ERRORS = (ValueError, FileNotFoundError, ImportError)


def rejected_input(exc: BaseException) -> bool:
    """Did train() refuse its config (or a path it names) before any training? Then the one-line message says
    everything, and the command line prints it without a traceback."""
    return getattr(exc, "rejected_input", False)


def check_config(cfg: DictConfig) -> tuple[int, int]:
    """Everything that can reject a training config, without building data or model: a one-line error that
    names the option. Returns (processes, gradient accumulation steps). Sweeps call it on every run first."""
    check_precision(str(cfg.precision.lightning))
    check_schedule(cfg.optim, cfg.trainer.max_steps)
    check_optimizer(cfg.optim, uses_cuda(cfg.trainer))
    check_loggers(cfg)
    check_strategy(cfg)
    if cfg.trainer.get("gradient_clip_val"):
        raise ValueError("trainer.gradient_clip_val: set optim.grad_clip instead (the module clips, fused-safe)")
    GPTConfig(**{**OmegaConf.to_container(cfg.model, resolve=True), "vocab_size": 1})  # the tokenizer's comes later
    get_parametrization(OmegaConf.to_container(cfg.parametrization, resolve=True))
    processes = world_size(cfg.trainer)
    return processes, accumulation_steps(cfg, processes)


def train(cfg: DictConfig) -> dict:
    """Train one model as cfg says. Returns the summary also written to output_dir/summary.json."""
    load_env()
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "status": "failed", "parametrization": cfg.parametrization.name, "optimizer": cfg.optim.name,
        "lr": cfg.optim.lr, "width": cfg.model.width, "n_layer": cfg.model.n_layer, "seed": cfg.seed,
        "output_dir": str(output_dir),
    }
    logger = None
    training = False
    started = time.time()
    # Under DDP/FSDP every rank runs this function; only global rank 0 writes files. The rank is known from
    # the launcher's environment now and from the Trainer once it exists.
    is_main = rank_zero_only.rank == 0
    try:
        processes, accumulate = check_config(cfg)
        precision = str(cfg.precision.lightning)
        resume_from = find_resume_checkpoint(cfg.get("resume"), output_dir, *hydra_overrides_and_root(output_dir))
        if resume_from is not None and resume_from[1].resolve() != output_dir.resolve():
            log.info("resuming the run in %s (this directory keeps only the launch log)", resume_from[1])
            output_dir = resume_from[1]
            summary["output_dir"] = str(output_dir)
        torch.set_float32_matmul_precision(cfg.precision.matmul)
        L.seed_everything(cfg.seed, workers=True)
        if is_main:
            OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)

        if cfg.compile.mode:
            torch._dynamo.reset()  # a multirun job must not inherit the previous job's compile caches
        datamodule = build_datamodule(cfg)
        model_cfg = {**OmegaConf.to_container(cfg.model, resolve=True), "vocab_size": datamodule.vocab_size}
        module = GPTLightningModule(model_cfg, cfg.parametrization, cfg.optim, compile_mode=cfg.compile.mode)
        # tokenizes once into the cache; then checks the corpus against the block size
        datamodule.prepare_data()
        datamodule.setup("fit")
        if resume_from is not None:
            check_compatible(resume_from[0], dict(module.hparams))
        n_params = module.model.num_params()
        log.info("model: %s parameters (%s without embeddings), parametrization=%s",
                 f"{n_params:,}", f"{module.model.num_params(non_embedding=True):,}", cfg.parametrization.name)

        tokens_per_step = cfg.data.batch_size * cfg.model.block_size * accumulate
        throughput = Throughput(tokens_per_step, module.model.flops_per_token())
        guard = DivergenceGuard(cfg.max_loss)
        trainer_kwargs = dict(OmegaConf.to_container(cfg.trainer, resolve=True))
        trainer_kwargs.pop("_target_", None)
        trainer_kwargs["strategy"] = build_strategy(cfg.trainer.get("strategy", "auto"))
        trainer_kwargs["accumulate_grad_batches"] = accumulate
        trainer_kwargs["val_check_interval"] = min(cfg.eval_every, cfg.trainer.max_steps) * accumulate
        ckpt_every = int(cfg.checkpoint.every_n_steps)
        checkpointing = ckpt_every > 0 and not trainer_kwargs.get("fast_dev_run")
        ckpt_dir = output_dir / CHECKPOINT_DIR
        preemption = PreemptionCheckpoint(ckpt_dir / LAST)
        memory = MemoryReport(cfg.data.batch_size, 2 if "16" in precision else 4)
        callbacks = [throughput, guard, preemption, memory]
        callbacks += build_diagnostics(cfg.get("diagnostics"), datamodule)  # [] unless diagnostics=on
        if trainer_kwargs.get("enable_progress_bar", True):
            # the bar reads the loss back from the device: once per log window, not every step (a sync each)
            callbacks.append(ProgressBar(refresh_rate=max(1, int(cfg.trainer.log_every_n_steps))))
        if checkpointing:
            callbacks.append(RunCheckpoint(ckpt_dir, ckpt_every))
        trainer_kwargs["enable_checkpointing"] = checkpointing
        trainer = L.Trainer(
            **trainer_kwargs, precision=precision, logger=False, callbacks=callbacks,
            default_root_dir=str(output_dir), plugins=[AtomicCheckpointIO()],
        )
        is_main = trainer.is_global_zero
        if trainer.world_size != processes:  # accumulation was derived from `processes`: it must be exact
            raise ValueError(f"trainer.devices={cfg.trainer.devices!r}, trainer.num_nodes={cfg.trainer.num_nodes}: "
                             f"expected {processes} processes, Lightning runs {trainer.world_size}")
        if is_main:  # the other ranks log nothing themselves; metrics are reduced onto rank 0
            logger = build_logger(cfg, output_dir)
            trainer.loggers = logger or []

        # ---- train
        training = True
        if resume_from is not None:
            log.info("resuming from %s", resume_from[0])
        with single_job_command(trainer, output_dir):
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_from[0]) if resume_from else None)
            if checkpointing and guard.diverged_at is None and preemption.preempted_at is None:
                # the end of training, whatever the step interval; the full state (optimizer, loops), for resume
                trainer.save_checkpoint(ckpt_dir / LAST, weights_only=False)
            stopped_early = guard.diverged_at is not None or preemption.preempted_at is not None
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}  # validate() resets them
            if not stopped_early and module.last_val_step != trainer.global_step and not trainer.fast_dev_run:
                trainer.validate(module, datamodule=datamodule, verbose=False)
                metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        val_loss = metrics.get("val/loss", float("nan"))
        summary.update({
            "status": ("diverged" if guard.diverged_at is not None else
                       "interrupted" if preemption.preempted_at is not None else "completed"),
            "train_loss": metrics.get("train/loss", float("nan")),
            "val_loss": val_loss,
            "val_ppl": perplexity(val_loss) if math.isfinite(val_loss) else float("nan"),
            "steps": trainer.global_step,
            "tokens": trainer.global_step * tokens_per_step * processes,
            "processes": processes,
            "tokens_per_sec": throughput.tokens_per_sec,
            "params": n_params,
            "accumulate_grad_batches": accumulate,
            "memory_estimate_mb": memory.report.get("estimate_mb"),
            "peak_memory_mb": memory.report.get("peak_mb"),
            "optimizer_state_bytes_per_param": memory.report.get("optimizer_state_bytes_per_param"),
            "vocab_size": module.config.vocab_size,
            "padded_vocab_size": module.config.padded_vocab_size,
        })
        if guard.diverged_at is not None:
            summary["diverged_reason"] = guard.reason
            log.warning("run diverged: %s", guard.reason)
        return summary
    except BaseException as exc:
        summary["error"] = f"{type(exc).__name__}: {exc}"
        summary["traceback"] = traceback.format_exc()
        if not training and isinstance(exc, INPUT_ERRORS):
            exc.rejected_input = True  # see rejected_input(): the message is the whole story
        raise
    finally:
        summary["wall_seconds"] = round(time.time() - started, 2)
        if is_main:
            write_summary(output_dir, summary)
        if logger and any(type(one).__name__ == "WandbLogger" for one in logger):
            import wandb

            wandb.finish()  # each multirun job must close its own W&B run
        if summary["status"] != "failed":
            log.info("val_loss %.4f (perplexity %.2f) after %d steps; run files in %s",
                     summary["val_loss"], summary["val_ppl"], summary["steps"], output_dir)
