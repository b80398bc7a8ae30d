"""Callbacks: throughput/MFU, the memory report and the divergence guard."""

from __future__ import annotations

import logging
import math
import time

import lightning as L
import torch

log = logging.getLogger(__name__)

# Dense bf16/fp16 tensor-core peak FLOP/s, by substring of the CUDA device name.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 125e12, "4090": 165e12}


def device_peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


class Throughput(L.Callback):
    """Logs tokens/s per optimizer step and, on known GPUs, model FLOPs utilisation (MFU)."""

    def __init__(self, tokens_per_step: int, flops_per_token: float) -> None:
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.peak: float | None = None
        self._t0: float | None = None
        self.tokens_seen = 0
        self.train_seconds = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.peak = device_peak_flops(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._t0 is None:
            self._sync(pl_module)
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # mid-accumulation: no optimizer step yet
        self._sync(pl_module)
        dt = time.perf_counter() - self._t0
        self._t0 = time.perf_counter()
        self.tokens_seen += self.tokens_per_step
        self.train_seconds += dt
        tps = self.tokens_per_step / dt
        metrics = {"perf/tokens_per_sec": tps, "perf/step_ms": 1000 * dt}
        if self.peak:
            metrics["perf/mfu"] = tps * self.flops_per_token / self.peak
        pl_module.log_dict(metrics)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._t0 = None  # evaluation time is not training time

    @staticmethod
    def _sync(pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    @property
    def tokens_per_sec(self) -> float:
        return self.tokens_seen / self.train_seconds if self.train_seconds else 0.0


class DivergenceGuard(L.Callback):
    """Stops training cleanly when the loss is NaN/Inf or above a bound, so a sweep maps where training breaks."""

    def __init__(self, max_loss: float) -> None:
        self.max_loss = max_loss
        self.diverged_at: int | None = None
        self.reason = ""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        value = float(loss.detach())
        if math.isfinite(value) and value <= self.max_loss:
            return
        self.diverged_at = trainer.global_step
        self.reason = f"train loss {value:.4g} at step {trainer.global_step} (bound {self.max_loss})"
        trainer.should_stop = True


def activation_bytes(batch_size: int, block_size: int, width: int, n_layer: int, n_head: int, vocab: int,
                     bytes_per_value: int, checkpointing: bool) -> int:
    """Activations kept for backward, after Korthikanti et al. 2022 ("Reducing Activation Recomputation"):
    per block s·b·h·(34 + 5·a·s/h) bytes at 2 bytes per value (the 5·a·s/h term is the attention matrix,
    which flash-style attention kernels do not store), plus the logits and their gradient. With block
    checkpointing only each block's input (s·b·h values) is kept, plus one block being recomputed."""
    sbh = block_size * batch_size * width
    per_block = sbh * (34 + 5 * n_head * block_size / width) * bytes_per_value / 2
    blocks = n_layer * sbh * bytes_per_value + per_block if checkpointing else n_layer * per_block
    logits = 2 * block_size * batch_size * vocab * 4  # fp32 logits for the loss, and their gradient
    return int(blocks + logits)


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
        self.report = {
            "params_mb": params / 2**20,
            "grads_mb": params / 2**20,
            "optimizer_state_mb": (state_per_param * n / 2**20) if state_per_param else float("nan"),
            "activations_mb": activation_bytes(self.batch_size, c.block_size, c.width, c.n_layer, c.n_head,
                                               c.padded_vocab_size, self.bytes_per_activation,
                                               c.activation_checkpointing) / 2**20,
        }
        self.report["estimate_mb"] = sum(v for v in self.report.values() if math.isfinite(v))
        log.info("memory estimate (MiB): weights %.1f, gradients %.1f, optimizer state %.1f, activations %.1f "
                 "(checkpointing %s), total %.1f", self.report["params_mb"], self.report["grads_mb"],
                 self.report["optimizer_state_mb"], self.report["activations_mb"],
                 "on" if c.activation_checkpointing else "off", self.report["estimate_mb"])

    def on_train_end(self, trainer, pl_module) -> None:
        self.report["peak_mb"] = peak_memory_bytes(pl_module.device) / 2**20
        where = "CUDA max allocated" if pl_module.device.type == "cuda" else "process peak RSS"
        log.info("memory measured: %.1f MiB (%s)", self.report["peak_mb"], where)
