"""train(cfg): build data, module and trainer from a composed Hydra config, fit, and write summary.json.

This is the one function both `src/train.py` (through @hydra.main) and the tests (through Hydra's
compose API) call. It is a short list of named steps below; the run's bookkeeping (summary.json, the error of
a failed run, closing W&B) is `mugpt.training.run.task_wrapper`'s. Every check that can fail on bad input runs before
the first training step, and what it refuses leaves as a `mugpt.errors.ConfigError`.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import DeviceStatsMonitor, LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from mugpt.core.model import GPT, GPTConfig
from mugpt.core.optim import check_optimizer, mup_family
from mugpt.core.parametrization import get_parametrization
from mugpt.core.schedule import check_schedule
from mugpt.errors import ConfigError, refusing_input
from mugpt.rundir import config_path
from mugpt.training.callbacks import (
    DivergenceGuard,
    MemoryReport,
    ProgressBar,
    Throughput,
    activation_bytes,
    logit_positions,
)
from mugpt.training.checkpointing import (
    CHECKPOINT_DIR,
    LAST,
    AtomicCheckpointIO,
    PreemptionCheckpoint,
    RunCheckpoint,
    check_compatible,
    find_resume_checkpoint,
    saved_hparams,
)
from mugpt.training.diagnostics import build_diagnostics
from mugpt.training.distributed import build_strategy, check_strategy, single_job_command, uses_cuda, world_size
from mugpt.training.loggers import build_logger, check_loggers, hydra_overrides_and_root, logger_configs
from mugpt.training.module import GPTLightningModule, perplexity
from mugpt.training.run import Run, task_wrapper

log = logging.getLogger(__name__)

# Trainer arguments train() derives from the project's own options: the option to set instead, and why. A
# value given in trainer.* would be overwritten (or fight the derived one), so it is refused.
DERIVED_TRAINER_KEYS = {
    "val_check_interval": ("eval_every", "optimizer steps between validations"),
    "enable_checkpointing": ("checkpoint.every_n_steps", "0 = no checkpoints"),
    "precision": ("precision=NAME", "conf/precision/"),
    "logger": ("logger=NAME", "conf/logger/; several as logger=[csv,tensorboard]"),
    "callbacks": ("+callbacks=NAME", "conf/callbacks/"),
    "gradient_clip_val": ("optim.grad_clip", "the module clips, fused-safe"),
    "gradient_clip_algorithm": ("optim.grad_clip", "the module clips the global norm"),
    "default_root_dir": ("output_dir", "hydra.run.dir places it"),
    "plugins": ("precision=NAME", "mugpt adds its own checkpoint IO plugin: atomic writes"),
}

# Callbacks that log and nothing else: Lightning refuses them on a trainer without loggers.
LOGGING_CALLBACKS = (LearningRateMonitor, DeviceStatsMonitor)


# ---- checks: everything that can refuse a config, before any data or model is built


def check_kernels(cfg: DictConfig, model: GPTConfig) -> None:
    """Options that need a CUDA GPU and a kernel library: refused where they cannot run."""
    on_cuda = uses_cuda(cfg.trainer)
    if model.loss_impl == "fused":
        if not on_cuda:
            raise ConfigError("model.loss_impl=fused runs liger-kernel's Triton kernel on a CUDA GPU; on this machine "
                              "use model.loss_impl=chunked (the same loss without materialising the logits)")
        if importlib.util.find_spec("liger_kernel") is None:
            raise ConfigError("model.loss_impl=fused needs liger-kernel: pip install -e '.[gpu]'")
    if cfg.precision.get("float8"):
        emulate = bool(cfg.precision.get("float8_emulate"))  # FP8's rounding without FP8 matmuls: any device
        if importlib.util.find_spec("torchao") is None:
            raise ConfigError(f"precision={'fp8-emulated' if emulate else 'fp8'}: needs torchao (pip install torchao)")
        if not emulate and (not on_cuda or torch.cuda.get_device_capability() < (8, 9)):
            raise ConfigError("precision=fp8: FP8 matmuls need an NVIDIA GPU of compute capability "
                              "8.9 or newer (Ada, Hopper); use precision=bf16-mixed here, or "
                              "precision=fp8-emulated for FP8's rounding without its speed")


def check_precision(precision: str) -> None:
    """Fail fast on a precision this machine cannot run."""
    if precision.startswith("16") and not torch.cuda.is_available():
        raise ConfigError(f"precision={precision}: fp16 needs a CUDA GPU; on CPU use precision=32 or bf16-mixed")
    if precision.startswith("bf16") and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"precision={precision}: this GPU has no bf16 support; use 16-mixed or 32")


def check_trainer_keys(cfg: DictConfig) -> None:
    """Refuse trainer.* keys that train() derives from the project's own options."""
    for key, (option, why) in DERIVED_TRAINER_KEYS.items():
        if cfg.trainer.get(key) is not None:  # null: as if absent (gradient_clip_val: null is in trainer/default)
            raise ConfigError(f"trainer.{key}: set {option} instead ({why})")
    given = cfg.trainer.get("accumulate_grad_batches")
    if cfg.grad_accum.get("batch_tokens") and given not in (None, 1):
        raise ConfigError(f"trainer.accumulate_grad_batches={given}: grad_accum=tokens derives it from "
                          f"grad_accum.batch_tokens; use one of the two")


ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")


def _integer(value, option: str, minimum: int, why: str = "") -> int:
    from mugpt.config import check_option

    return check_option(value, option, int, positive=minimum == 1, minimum=None if minimum == 1 else minimum,
                        why=why, error=ConfigError)


def check_run_options(cfg: DictConfig) -> None:
    """The top-level options and the trainer keys the project relies on: type and range, one line each."""
    _integer(cfg.seed, "seed", 0)
    _integer(cfg.eval_every, "eval_every", 1, "optimizer steps between validations")
    if isinstance(cfg.max_loss, bool) or not isinstance(cfg.max_loss, (int, float)) or not cfg.max_loss > 0:
        raise ConfigError(f"max_loss={cfg.max_loss}: must be a positive number (the divergence bound)")
    _integer(cfg.checkpoint.every_n_steps, "checkpoint.every_n_steps", 0, "0 = no checkpoints")
    if not isinstance(cfg.get("memory_check", True), bool):
        raise ConfigError(f"memory_check={cfg.memory_check}: must be true or false")
    trainer = cfg.trainer
    _integer(trainer.max_steps, "trainer.max_steps", 1, "the run's length in optimizer steps, which the "
                                                       "schedule spans; an unbounded run is not supported")
    _integer(trainer.get("log_every_n_steps", 1), "trainer.log_every_n_steps", 1)
    _integer(trainer.get("num_nodes", 1), "trainer.num_nodes", 1)
    accelerator = str(trainer.get("accelerator", "auto"))
    if accelerator not in ACCELERATORS:
        raise ConfigError(f"trainer.accelerator={accelerator}: unknown (choose one of {', '.join(ACCELERATORS)})")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator}: this machine has no CUDA GPU; use auto or cpu")
    devices = trainer.get("devices", "auto")
    if not (isinstance(devices, (int, str)) or OmegaConf.is_list(devices)) or isinstance(devices, bool):
        raise ConfigError(f"trainer.devices={devices}: must be a count, a list of device ids, or auto")
    if isinstance(devices, str) and devices != "auto" and not devices.replace(",", "").strip().lstrip("-").isdigit():
        raise ConfigError(f"trainer.devices={devices}: must be a count, a list of device ids, or auto")
    if uses_cuda(trainer) and accelerator != "cpu" and isinstance(devices, int) and devices > torch.cuda.device_count():
        raise ConfigError(f"trainer.devices={devices}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")


def callback_configs(cfg: DictConfig) -> dict[str, DictConfig]:
    """The `callbacks` group's entries by name (+callbacks=lr_monitor gives callbacks.lr_monitor)."""
    return dict((cfg.get("callbacks") or {}).items())


def check_callbacks(cfg: DictConfig) -> None:
    """Each configured callback names an importable Lightning callback, and one that only logs has a logger."""
    for name, c in callback_configs(cfg).items():
        target = c.get("_target_") if isinstance(c, DictConfig) else None
        if not target:
            raise ConfigError(f"callbacks.{name}: needs a _target_ (a Lightning callback class)")
        try:
            cls = get_class(target)
        except (ImportError, ValueError) as exc:
            raise ConfigError(f"callbacks.{name}: cannot import _target_={target} ({exc})") from exc
        if not issubclass(cls, L.Callback):
            raise ConfigError(f"callbacks.{name}: _target_={target} is not a Lightning callback")
        if issubclass(cls, LOGGING_CALLBACKS) and not logger_configs(cfg):
            raise ConfigError(f"callbacks.{name}: {cls.__name__} needs a logger, and logger=none has none; "
                              f"choose one, e.g. logger=csv")


def accumulation_steps(cfg: DictConfig, processes: int = 1) -> int:
    """Micro-batches per optimizer step: from grad_accum.batch_tokens (the global batch, over all processes)
    when set, else the trainer's own."""
    batch_tokens = cfg.grad_accum.get("batch_tokens")
    if not batch_tokens:
        return int(cfg.trainer.get("accumulate_grad_batches") or 1)
    micro = cfg.data.batch_size * cfg.model.block_size * processes
    if batch_tokens <= 0 or batch_tokens % micro:
        raise ConfigError(f"grad_accum.batch_tokens={batch_tokens} is not a positive multiple of one micro-batch on "
                          f"every process, data.batch_size*model.block_size*processes = {cfg.data.batch_size}*"
                          f"{cfg.model.block_size}*{processes} = {micro}")
    return batch_tokens // micro


def written_model_options(cfg: DictConfig) -> dict:
    """The model.KEY=VALUE options the command line wrote (Hydra's record of its overrides, on the config or on the
    running Hydra), as {KEY: value}; {} where there is no record (a config composed in Python)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    task = OmegaConf.select(cfg, "hydra.overrides.task", default=None)
    if task is None and HydraConfig.initialized():
        task = HydraConfig.get().overrides.task
    written = {}
    for override in OverridesParser.create().parse_overrides(list(task or [])):
        key = override.key_or_group
        if key.startswith("model.") and not override.is_delete() and not override.is_sweep_override():
            written[key.removeprefix("model.")] = override.value()
    return written


def check_config(cfg: DictConfig) -> tuple[int, int]:
    """Everything that can reject a training config, without building data or model: a ConfigError whose one
    line names the option. Returns (processes, gradient accumulation steps). Sweeps call it on every run first."""
    with refusing_input():  # the checks of other modules raise ValueError/ImportError: the same refusal
        check_run_options(cfg)
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:  # a ??? in the config that the command line did not fill, e.g. data=text without data.path
            raise ConfigError(f"{missing[0]}: required, give it on the command line ({missing[0]}=...)")
        check_precision(str(cfg.precision.lightning))
        check_schedule(cfg.optim, cfg.trainer.max_steps)
        check_optimizer(cfg.optim, uses_cuda(cfg.trainer))
        check_loggers(cfg)
        check_callbacks(cfg)
        check_strategy(cfg)
        check_trainer_keys(cfg)
        model = GPTConfig(**{**OmegaConf.to_container(cfg.model, resolve=True), "vocab_size": 1})  # vocab: later
        check_kernels(cfg, model)
        rule = get_parametrization(OmegaConf.to_container(cfg.parametrization, resolve=True))
        # the model options it needs are set for it (model_config); one the command line contradicts is refused
        rule.check_written(written_model_options(cfg))
        rule.check_family(mup_family(cfg.optim.name, cfg.optim))
        rule.check_run(model, cfg)  # model and training options the parametrization cannot run
        processes = world_size(cfg.trainer)
        return processes, accumulation_steps(cfg, processes)


def preflight(cfg: DictConfig) -> int:
    """Every refusal that needs neither a run directory nor data: the config, the data options, the memory
    estimate. `src/train.py` runs it on every job of a launch before Hydra makes any folder; train() again.
    Returns the run's process count."""
    processes, _ = check_config(cfg)
    with refusing_input():
        datamodule = build_datamodule(cfg)
        check_memory(cfg, datamodule.vocab_size)
    return processes


def available_memory_bytes(on_cuda: bool) -> int | None:
    """Memory a new run can take: the GPU's free memory, or the host's MemAvailable (None when unknown)."""
    if on_cuda:
        return torch.cuda.mem_get_info()[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(cfg: DictConfig, vocab_size: int) -> None:
    """Refuse a run whose memory estimate (the MemoryReport's accounting: weights, gradients, Adam's state,
    activations) is beyond what this machine has free, before the model is built or any data is read. A model
    too large to fit would otherwise fail in the allocator, or swap, after minutes of setup."""
    if not cfg.get("memory_check", True):
        return
    model_cfg = GPTConfig(**{**OmegaConf.to_container(cfg.model, resolve=True), "vocab_size": vocab_size})
    with torch.device("meta"):
        n_params = GPT(model_cfg, init=False).num_params()
    precision = str(cfg.precision.lightning)
    activations = activation_bytes(cfg.data.batch_size, model_cfg.block_size, model_cfg.width, model_cfg.n_layer,
                                   model_cfg.n_head, model_cfg.padded_vocab_size, 2 if "16" in precision else 4,
                                   model_cfg.activation_checkpointing,
                                   logit_positions(model_cfg, cfg.data.batch_size))
    estimate = n_params * (4 + 4 + 8) + activations  # fp32 weights and gradients, two Adam moments
    available = available_memory_bytes(uses_cuda(cfg.trainer))
    if available is not None and estimate > available:
        raise ConfigError(f"model.block_size={model_cfg.block_size}, model.width={model_cfg.width}, "
                          f"model.n_layer={model_cfg.n_layer}, data.batch_size={cfg.data.batch_size}: the run needs "
                          f"about {estimate / 2**30:.1f} GiB ({n_params / 1e6:.1f}M parameters, activations "
                          f"{activations / 2**30:.1f} GiB), this machine has {available / 2**30:.1f} GiB free; make "
                          f"the model or the batch smaller (memory_check=false skips this check)")


# ---- the steps of train()


def run_identity(cfg: DictConfig) -> dict:
    """The summary's first keys, known before anything is built: what this run trains."""
    return {"parametrization": cfg.parametrization.name, "optimizer": cfg.optim.name, "lr": cfg.optim.lr,
            "width": cfg.model.width, "n_layer": cfg.model.n_layer, "seed": cfg.seed}


def resolve_resume(cfg: DictConfig, run: Run) -> tuple[Path, Path] | None:
    """resume=auto|PATH → (checkpoint, its run directory), or None. The checkpoint must be readable (a truncated
    one is refused, naming it). A resumed run continues in its own directory: the run moves there."""
    found = find_resume_checkpoint(cfg.get("resume"), run.output_dir, *hydra_overrides_and_root(run.output_dir))
    if found is not None:
        saved_hparams(found[0])
    if found is not None and found[1].resolve() != run.output_dir.resolve():
        log.info("resuming the run in %s (this directory keeps only the launch log)", found[1])
        run.move_to(found[1])
    return found


def start_run(cfg: DictConfig, run: Run) -> None:
    """Process-wide settings for this run (matmul precision, seeds, a fresh compile cache) and its config.yaml."""
    # The DataModule restores its sampling position itself (samples_seen in its state_dict), so Lightning's
    # warning that a mid-epoch resume of a plain DataLoader is unreliable does not apply here.
    warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
    torch.set_float32_matmul_precision(cfg.precision.matmul)
    L.seed_everything(cfg.seed, workers=True)
    if run.is_main:
        OmegaConf.save(cfg, config_path(run.output_dir), resolve=True)
    if cfg.compile.mode:
        torch._dynamo.reset()  # a multirun job must not inherit the previous job's compile caches
        import torch._inductor.config as inductor

        inductor.coordinate_descent_tuning = bool(cfg.compile.get("coordinate_descent_tuning", False))


def build_datamodule(cfg: DictConfig):
    """The DataModule named by cfg.data._target_; called directly (not through hydra's instantiate) so that
    a bad option surfaces as its own one-line error instead of a wrapped InstantiationException."""
    kwargs = OmegaConf.to_container(cfg.data, resolve=True)
    cls = get_class(kwargs.pop("_target_"))
    return cls(**kwargs, block_size=cfg.model.block_size)


def prepare_data(datamodule) -> None:
    """Tokenize once into the cache, then check the corpus against the block size: before the model is built."""
    datamodule.prepare_data()
    datamodule.setup("fit")


def build_module(cfg: DictConfig, datamodule, resume_from: tuple[Path, Path] | None,
                 global_batch: int | None = None) -> tuple[GPTLightningModule, int]:
    """The LightningModule (its vocabulary from the tokenizer), then the resume checkpoint checked against it.
    Returns the module and its parameter count (counted before FSDP shards it). `global_batch`: sequences per
    optimizer step over all processes (optim.batch_lr_rule reads it)."""
    model_cfg = {**OmegaConf.to_container(cfg.model, resolve=True), "vocab_size": datamodule.vocab_size}
    module = GPTLightningModule(model_cfg, cfg.parametrization, cfg.optim, compile_mode=cfg.compile.mode,
                                float8=bool(cfg.precision.get("float8", False)), global_batch=global_batch,
                                float8_emulate=bool(cfg.precision.get("float8_emulate", False)))
    if resume_from is not None:
        check_compatible(resume_from[0], dict(module.hparams))
    n_params = module.model.num_params()
    log.info("model: %s parameters (%s without embeddings), parametrization=%s",
             f"{n_params:,}", f"{module.model.num_params(non_embedding=True):,}", cfg.parametrization.name)
    return module, n_params


@dataclass
class RunCallbacks:
    """The callbacks of one run. The project's own are built from run state, so they are not in conf/callbacks/
    (see its default.yaml), and train() reads some back; `configured` are the `callbacks` group's."""

    throughput: Throughput
    guard: DivergenceGuard
    preemption: PreemptionCheckpoint
    memory: MemoryReport
    others: list[L.Callback] = field(default_factory=list)  # diagnostics, the progress bar
    checkpoint: RunCheckpoint | None = None  # None: checkpoint.every_n_steps=0, or fast_dev_run
    configured: list[L.Callback] = field(default_factory=list)

    def all(self) -> list[L.Callback]:
        own = [self.throughput, self.guard, self.preemption, self.memory, *self.others]
        return [*own, *([self.checkpoint] if self.checkpoint else []), *self.configured]

    def stopped_early(self) -> bool:
        return self.guard.diverged_at is not None or self.preemption.preempted_at is not None


def build_callbacks(cfg: DictConfig, run: Run, module: GPTLightningModule, datamodule,
                    accumulate: int) -> RunCallbacks:
    tokens_per_step = cfg.data.batch_size * cfg.model.block_size * accumulate
    callbacks = RunCallbacks(
        throughput=Throughput(tokens_per_step, module.model.flops_per_token()),
        guard=DivergenceGuard(cfg.max_loss),
        preemption=PreemptionCheckpoint(run.output_dir / CHECKPOINT_DIR / LAST),
        memory=MemoryReport(cfg.data.batch_size, 2 if "16" in str(cfg.precision.lightning) else 4),
    )
    callbacks.others += build_diagnostics(cfg.get("diagnostics"), datamodule)  # [] unless diagnostics=on
    if cfg.trainer.get("enable_progress_bar", True):
        # the bar reads the loss back from the device: once per log window, not every step (a sync each)
        callbacks.others.append(ProgressBar(refresh_rate=max(1, int(cfg.trainer.log_every_n_steps))))
    every = int(cfg.checkpoint.every_n_steps)
    if every > 0 and not cfg.trainer.get("fast_dev_run"):
        callbacks.checkpoint = RunCheckpoint(run.output_dir / CHECKPOINT_DIR, every)
    callbacks.configured = [instantiate(c) for c in callback_configs(cfg).values()]  # +callbacks=NAME
    return callbacks


def build_trainer(cfg: DictConfig, run: Run, callbacks: list[L.Callback], processes: int,
                  accumulate: int) -> L.Trainer:
    """The Trainer: trainer.* as given, plus the arguments derived from the project's options (check_trainer_keys
    refused them in trainer.*); then the loggers, on rank 0 only."""
    kwargs = dict(OmegaConf.to_container(cfg.trainer, resolve=True))
    kwargs.pop("_target_", None)
    for key in DERIVED_TRAINER_KEYS:  # left only as null here
        kwargs.pop(key, None)
    trainer = L.Trainer(
        **{**kwargs, "strategy": build_strategy(cfg.trainer.get("strategy", "auto")),
           "accumulate_grad_batches": accumulate,
           # torchao's float8 tensors refuse autocast's cast under torch.inference_mode ("aten.to.dtype is not
           # supported"), which Lightning's validate() outside fit uses: evaluate them under no_grad instead
           **({"inference_mode": False} if cfg.precision.get("float8") else {})},
        val_check_interval=min(cfg.eval_every, cfg.trainer.max_steps) * accumulate,
        enable_checkpointing=any(isinstance(cb, ModelCheckpoint) for cb in callbacks),
        precision=str(cfg.precision.lightning), logger=False, callbacks=callbacks,
        default_root_dir=str(run.output_dir), plugins=[AtomicCheckpointIO()],
    )
    run.is_main = trainer.is_global_zero
    if trainer.world_size != processes:  # accumulation was derived from `processes`: it must be exact
        raise ConfigError(f"trainer.devices={cfg.trainer.devices!r}, trainer.num_nodes={cfg.trainer.num_nodes}: "
                          f"expected {processes} processes, Lightning runs {trainer.world_size}")
    if run.is_main:  # the other ranks log nothing themselves; metrics are reduced onto rank 0
        run.loggers = build_logger(cfg, run.output_dir)
        trainer.loggers = run.loggers
    else:  # without loggers these would refuse to start; rank 0's log the run
        trainer.callbacks[:] = [cb for cb in trainer.callbacks if not isinstance(cb, LOGGING_CALLBACKS)]
    return trainer


def fit(run: Run, trainer: L.Trainer, module: GPTLightningModule, datamodule, callbacks: RunCallbacks,
        resume_from: tuple[Path, Path] | None) -> dict[str, float]:
    """Train; keep the final checkpoint; validate the last step if the schedule did not. Returns the metrics."""
    run.training = True  # from here an error is a failed run, not refused input
    if resume_from is not None:
        log.info("resuming from %s", resume_from[0])
    with single_job_command(trainer, run.output_dir):
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_from[0]) if resume_from else None)
        if callbacks.checkpoint is not None and not callbacks.stopped_early():
            # the end of training, whatever the step interval; the full state (optimizer, loops), for resume
            trainer.save_checkpoint(run.output_dir / CHECKPOINT_DIR / LAST, weights_only=False)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}  # validate() resets them
        if not callbacks.stopped_early() and module.last_val_step != trainer.global_step and not trainer.fast_dev_run:
            trainer.validate(module, datamodule=datamodule, verbose=False)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    return metrics


def summarise(cfg: DictConfig, run: Run, trainer: L.Trainer, module: GPTLightningModule, n_params: int,
              callbacks: RunCallbacks, metrics: dict[str, float], processes: int, accumulate: int) -> None:
    """The run's results into its summary (the wrapper writes it)."""
    guard, memory = callbacks.guard, callbacks.memory.report
    val_loss = metrics.get("val/loss", float("nan"))
    tokens_per_step = cfg.data.batch_size * cfg.model.block_size * accumulate
    run.summary.update({
        "status": ("diverged" if guard.diverged_at is not None else
                   "interrupted" if callbacks.preemption.preempted_at is not None else "completed"),
        "train_loss": metrics.get("train/loss", float("nan")),
        "val_loss": val_loss,
        "val_ppl": perplexity(val_loss) if math.isfinite(val_loss) else float("nan"),
        "steps": trainer.global_step,
        "tokens": trainer.global_step * tokens_per_step * processes,
        "processes": processes,
        "tokens_per_sec": callbacks.throughput.tokens_per_sec,
        "params": n_params,
        "accumulate_grad_batches": accumulate,
        "memory_estimate_mb": memory.get("estimate_mb"),
        "peak_memory_mb": memory.get("peak_mb"),
        "logits_memory_mb": memory.get("logits_mb"),
        "optimizer_state_bytes_per_param": memory.get("optimizer_state_bytes_per_param"),
        "vocab_size": module.config.vocab_size,
        "padded_vocab_size": module.config.padded_vocab_size,
    })
    if callbacks.preemption.preempted_at is not None:
        run.summary["signal"] = callbacks.preemption.signal_name  # SIGINT: Ctrl-C; SIGTERM/SIGUSR*: a scheduler
    if guard.diverged_at is not None:
        run.summary["diverged_step"] = guard.diverged_at
        run.summary["diverged_reason"] = guard.reason
        log.warning("run diverged: %s", guard.reason)
    log.info("val_loss %.4f (perplexity %.2f) after %d steps; run files in %s",
             run.summary["val_loss"], run.summary["val_ppl"], run.summary["steps"], run.output_dir)


@task_wrapper(describe=run_identity)
def train(cfg: DictConfig, run: Run) -> None:
    """Train one model as cfg says. Called as train(cfg): the wrapper returns the summary it also writes to
    output_dir/summary.json."""
    processes, accumulate = check_config(cfg)
    datamodule = build_datamodule(cfg)  # checks the data options; reads no tokens yet (shards: the manifest)
    check_memory(cfg, datamodule.vocab_size)
    resume_from = resolve_resume(cfg, run)
    start_run(cfg, run)
    prepare_data(datamodule)
    module, n_params = build_module(cfg, datamodule, resume_from, cfg.data.batch_size * accumulate * processes)
    callbacks = build_callbacks(cfg, run, module, datamodule, accumulate)
    trainer = build_trainer(cfg, run, callbacks.all(), processes, accumulate)
    metrics = fit(run, trainer, module, datamodule, callbacks, resume_from)
    summarise(cfg, run, trainer, module, n_params, callbacks, metrics, processes, accumulate)
