"""Callbacks: throughput/MFU, the memory report and the divergence guard."""

from __future__ import annotations

import logging
import math
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from mugpt.core.optim import optimizer_state_bytes

log = logging.getLogger(__name__)

# Dense (no sparsity) bf16 tensor-core peak FLOP/s, keyed by a part of the name torch reports for the GPU
# ("NVIDIA H100 80GB HBM3" is the SXM card). The longest matching key wins, so "H100 PCIe" beats "H100".
PEAK_FLOPS = {
    "H100": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12,  # SXM (HBM3), PCIe, NVL
    "H200": 989e12, "H200 NVL": 835e12, "GH200": 989e12,
    "A100": 312e12, "A10G": 125e12, "A10": 125e12, "L4": 121e12, "L40": 181e12, "L40S": 362e12, "4090": 165e12,
}


def peak_flops_for(name: str) -> float | None:
    """The dense bf16 peak of the GPU called `name` (torch.cuda.get_device_name), None for an unknown one."""
    matches = [key for key in PEAK_FLOPS if key in name]
    return PEAK_FLOPS[max(matches, key=len)] if matches else None


def device_peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return peak_flops_for(torch.cuda.get_device_name(device))


def _optimizer_step_ended(trainer: L.Trainer, batch_idx: int) -> bool:
    return (batch_idx + 1) % trainer.accumulate_grad_batches == 0  # else mid-accumulation: no step yet


class Throughput(L.Callback):
    """Logs tokens/s and, on known GPUs, model FLOPs utilisation (MFU), averaged over windows of
    `window` optimizer steps (default: the trainer's log_every_n_steps). The device is synchronised only at a
    window's edges: a sync every step would stall the GPU while the CPU launches the next step's kernels."""

    def __init__(self, tokens_per_step: int, flops_per_token: float, window: int | None = None) -> None:
        self.tokens_per_step = tokens_per_step  # on one process; the logged figures are for all of them
        self.processes = 1
        self.flops_per_token = flops_per_token
        self.window = window
        self.peak: float | None = None
        self._t0: float | None = None
        self._steps = 0  # optimizer steps in the open window
        self.windows: list[tuple[int, float]] = []  # (tokens, seconds) of each closed window

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.peak = device_peak_flops(pl_module.device)
        self.processes = trainer.world_size
        self.window = self.window or max(1, trainer.log_every_n_steps)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._t0 is None:
            self._sync(pl_module)
            self._t0, self._steps = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not _optimizer_step_ended(trainer, batch_idx):
            return
        self._steps += 1
        if self._steps >= self.window:
            tps, dt = self._close_window(pl_module)
            metrics = {"perf/tokens_per_sec": tps, "perf/step_ms": 1000 * dt}
            if self.peak:
                metrics["perf/mfu"] = tps * self.flops_per_token / (self.peak * self.processes)
            pl_module.log_dict(metrics)

    def _close_window(self, pl_module: L.LightningModule) -> tuple[float, float]:
        """Account the open window; returns its tokens/s and seconds per step."""
        self._sync(pl_module)
        seconds = time.perf_counter() - self._t0
        steps, self._t0, self._steps = self._steps, None, 0
        tokens = steps * self.tokens_per_step * self.processes
        self.windows.append((tokens, seconds))
        return tokens / seconds, seconds / steps

    def on_validation_start(self, trainer, pl_module) -> None:
        if self._t0 is not None and self._steps:
            self._close_window(pl_module)  # evaluation time is not training time
        self._t0 = None

    def on_train_end(self, trainer, pl_module) -> None:
        if self._t0 is not None and self._steps:
            self._close_window(pl_module)

    @staticmethod
    def _sync(pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    @property
    def tokens_per_sec(self) -> float:
        """Steady-state throughput: the first window (torch.compile, CUDA and allocator warm-up) is left out
        when there are others."""
        windows = self.windows[1:] if len(self.windows) > 1 else self.windows
        seconds = sum(s for _, s in windows)
        return sum(t for t, _ in windows) / seconds if seconds else 0.0


class ProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, refreshed every `refresh_rate` steps, showing the training loss without logging it
    with prog_bar=True (Lightning converts such values to Python numbers every step: a device sync)."""

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            items["train/loss"] = f"{float(loss):.3f}"
        return items


class DivergenceGuard(L.Callback):
    """Stops training cleanly when the loss is NaN/Inf or above a bound, so a sweep maps where training breaks.
    Losses are read back every `every` optimizer steps (default: the trainer's log_every_n_steps), one sync for
    the lot, and the first bad step is the one reported; training stops at the end of that window."""

    def __init__(self, max_loss: float, every: int | None = None) -> None:
        self.max_loss = max_loss
        self.every = every
        self.diverged_at: int | None = None
        self.reason = ""
        self._pending: list[tuple[int, torch.Tensor]] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.every = self.every or max(1, trainer.log_every_n_steps)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self._pending.append((trainer.global_step, loss.detach()))
        if _optimizer_step_ended(trainer, batch_idx) and trainer.global_step % self.every == 0:
            self.check(trainer)  # the steps after the last full window are checked in on_train_end

    def on_validation_start(self, trainer, pl_module) -> None:
        self.check(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.check(trainer)

    def check(self, trainer: L.Trainer) -> None:
        if self.diverged_at is not None:
            self._pending.clear()
            return
        first_bad = (math.inf, math.nan)  # (step, loss) of this process's first bad loss in the window
        if self._pending:
            steps, losses = zip(*self._pending)
            bad = [(step, value) for step, value in zip(steps, torch.stack(losses).float().tolist())
                   if not (math.isfinite(value) and value <= self.max_loss)]
            first_bad = bad[0] if bad else first_bad
        self._pending.clear()
        if trainer.world_size > 1:
            # Each process sees its own shard's loss, and Lightning does not reduce `should_stop`: every
            # process must stop at the same step, at the first bad loss any of them saw.
            local = torch.tensor(first_bad, dtype=torch.float64, device=trainer.strategy.root_device)
            everyone = trainer.strategy.all_gather(local).reshape(-1, 2).cpu()
            first_bad = tuple(everyone[int(torch.argmin(everyone[:, 0]))].tolist())
        step, value = first_bad
        if math.isfinite(step):
            self.diverged_at = int(step)
            self.reason = f"train loss {value:.4g} at step {int(step)} (bound {self.max_loss})"
            trainer.should_stop = True


def activation_bytes(batch_size: int, block_size: int, width: int, n_layer: int, n_head: int, vocab: int,
                     bytes_per_value: int, checkpointing: bool, logit_positions: int | None = None) -> int:
    """Activations kept for backward, after Korthikanti et al. 2022 ("Reducing Activation Recomputation"):
    per block 34·s·b·h bytes at 2 bytes per value. Their 5·a·s²·b attention-matrix term is left out: the model
    attends with F.scaled_dot_product_attention, whose flash/memory-efficient kernels do not store it (on an
    H200, GPT-2 124M at batch 16, bf16-mixed: 11,722 MiB peak against 13,083 MiB estimated this way, 24,603 MiB
    with the term).
    Plus the logits and their gradient in fp32, for `logit_positions` positions at a time (all of them with
    model.loss_impl=full; one chunk with chunked or fused). With block checkpointing only each block's input
    (s·b·h values) is kept, plus one block being recomputed."""
    sbh = block_size * batch_size * width
    per_block = sbh * 34 * bytes_per_value / 2
    blocks = n_layer * sbh * bytes_per_value + per_block if checkpointing else n_layer * per_block
    positions = block_size * batch_size if logit_positions is None else min(logit_positions, block_size * batch_size)
    return int(blocks + logits_bytes(positions, vocab))


def logits_bytes(positions: int, vocab: int) -> int:
    """fp32 logits for the loss and their gradient, over `positions` positions."""
    return 2 * positions * vocab * 4


def logit_positions(config, batch_size: int) -> int:
    """How many positions' logits a training step holds at once: all of the batch's, or one chunk's."""
    positions = batch_size * config.block_size
    return positions if config.loss_impl == "full" else min(config.loss_chunk, positions)


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: max allocated since the last reset. CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class MemoryReport(L.Callback):
    """Logs the memory budget at the start of training (ZeRO-paper accounting for weights, gradients and
    optimizer state; an activation estimate) and the measured peak at the end, in `report`."""

    def __init__(self, batch_size: int, bytes_per_activation: int) -> None:
        self.batch_size, self.bytes_per_activation = batch_size, bytes_per_activation
        self.report: dict[str, float] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        model = pl_module.model
        c = model.config
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        state_per_param = 8 if pl_module.optim_cfg.name in ("adamw", "adam") else None
        n = model.num_params()
        positions = logit_positions(c, self.batch_size)
        self.report = {
            "params_mb": params / 2**20,
            "grads_mb": params / 2**20,
            "optimizer_state_mb": (state_per_param * n / 2**20) if state_per_param else float("nan"),
            "activations_mb": activation_bytes(self.batch_size, c.block_size, c.width, c.n_layer, c.n_head,
                                               c.padded_vocab_size, self.bytes_per_activation,
                                               c.activation_checkpointing, positions) / 2**20,
        }
        self.report["logits_mb"] = logits_bytes(positions, c.padded_vocab_size) / 2**20  # part of activations_mb
        self.report["estimate_mb"] = sum(v for k, v in self.report.items() if math.isfinite(v) and k != "logits_mb")
        log.info("memory estimate (MiB): weights %.1f, gradients %.1f, optimizer state %.1f, activations %.1f "
                 "(checkpointing %s), total %.1f", self.report["params_mb"], self.report["grads_mb"],
                 self.report["optimizer_state_mb"], self.report["activations_mb"],
                 "on" if c.activation_checkpointing else "off", self.report["estimate_mb"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Optimizer state is created lazily by the first step, so it is measured once it exists.
        if "optimizer_state_bytes_per_param" in self.report or not trainer.optimizers:
            return
        state = optimizer_state_bytes(trainer.optimizers[0])
        if not state["bytes"]:
            return
        self.report["optimizer_state_mb"] = state["bytes"] / 2**20
        self.report["optimizer_state_bytes_per_param"] = state["bytes_per_param"]
        log.info("optimizer state (%s), measured after the first step: %.1f MiB, %.2f bytes/parameter",
                 pl_module.optim_cfg.name, self.report["optimizer_state_mb"], state["bytes_per_param"])
        for logger in trainer.loggers:
            logger.log_metrics({"memory/optimizer_state_bytes_per_param": state["bytes_per_param"]},
                               step=trainer.global_step)

    def on_train_end(self, trainer, pl_module) -> None:
        self.report["peak_mb"] = peak_memory_bytes(pl_module.device) / 2**20
        where = "CUDA max allocated" if pl_module.device.type == "cuda" else "process peak RSS"
        log.info("memory measured: %.1f MiB (%s)", self.report["peak_mb"], where)
