"""Callbacks: throughput/MFU and the divergence guard."""

from __future__ import annotations

import math
import time

import lightning as L
import torch

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
