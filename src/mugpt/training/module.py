"""The LightningModule: training/validation steps, metrics and the optimizer wiring.

The model, its parameter groups, optimizer and schedule come from `mugpt.core.recipe.Recipe` (the one place they
are assembled), so this file only says what happens at each step.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from torchmetrics import MeanMetric

from mugpt.core.model import GPT, GPTConfig
from mugpt.core.optim import clip_gradients_
from mugpt.core.recipe import Recipe, plain_dict
from mugpt.core.schedule import lr_factor


class GPTLightningModule(L.LightningModule):
    def __init__(self, model: dict, parametrization: dict, optim: dict, compile_mode: str | None = None,
                 float8: bool = False, global_batch: int | None = None, float8_emulate: bool = False) -> None:
        super().__init__()
        model, parametrization, optim = plain_dict(model), plain_dict(parametrization), plain_dict(optim)
        self.save_hyperparameters({"model": model, "parametrization": parametrization, "optim": optim,
                                   "compile_mode": compile_mode, "global_batch": global_batch})
        self.recipe = Recipe(GPTConfig(**model), parametrization, optim, global_batch)
        self.optim_cfg = self.recipe.optim
        self.model: GPT = self.recipe.build_model()
        if float8:  # before compile and before the optimizer's groups are read: the same parameters, new matmuls
            convert_linears_to_float8(self.model, emulate=float8_emulate)
        # The (compiled) forward is kept off the module tree (in __dict__, past nn.Module's registration), so that
        # checkpoints hold each parameter once, under its plain name: no `_orig_mod.` copy.
        self.__dict__["_forward"] = torch.compile(self.model, mode=compile_mode) if compile_mode else self.model
        self.val_loss = MeanMetric()
        self.last_val_step = -1

    @property
    def config(self) -> GPTConfig:
        return self.model.config

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        return self._forward(idx, targets)

    # --------------------------------------------------------------- steps
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        _, loss = self(x, y)
        # No prog_bar here: Lightning reads progress-bar values back to the host every step (a GPU sync);
        # mugpt.training.callbacks.ProgressBar shows the loss once per refresh instead.
        self.log("train/loss", loss)
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:  # a float is copied to the device: a sync
            self.log("train/lr", self.recipe.lr * lr_factor(self.global_step, self.optim_cfg, self._max_steps()))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        _, loss = self(x, y)
        self.val_loss.update(loss, weight=y.numel())

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.val_loss.reset()
        # already reduced over processes by the metric; sync_dist only tells Lightning so (a no-op on one device)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        self.log("val/ppl", torch.exp(loss), sync_dist=True)
        self.last_val_step = self.global_step

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val=None,
                                    gradient_clip_algorithm=None) -> None:
        """Logs the gradient norm and clips it to `optim.grad_clip`. Done here rather than by Lightning's
        `gradient_clip_val`, whose mixed-precision plugin refuses fused optimizers (the default AdamW on CUDA):
        with fp16's GradScaler the gradients are unscaled first, which a fused step accepts."""
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
            scaler.unscale_(optimizer)  # Lightning unscales only non-fused optimizers before this hook
        max_norm = self.optim_cfg.get("grad_clip")
        sharded = getattr(self.trainer.strategy.model, "clip_grad_norm_", None)  # FSDP's root module
        if sharded is not None and max_norm:
            norm = sharded(max_norm)  # each rank holds a shard of the gradients: the norm is over all of them
        else:
            norm = clip_gradients_(self.model.parameters(), max_norm)
        if norm is not None:  # the norm before clipping: the number to watch when training becomes unstable
            self.log("train/grad_norm", norm)

    # ----------------------------------------------------------- optimizer
    def _max_steps(self) -> int:
        return max(1, self.trainer.max_steps) if self._trainer is not None else 1

    def configure_optimizers(self):
        optimizer, scheduler = self.recipe.build_optimizer(self.model, self._max_steps(),
                                                           on_cuda=self.device.type == "cuda")
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 700.0))


def convert_linears_to_float8(model: GPT, emulate: bool = False) -> None:
    """torchao's float8 training for the blocks' linear layers (dynamic tensorwise scaling): their matmuls run in
    FP8 on Hopper/Ada GPUs, weights stay fp32. The readout (µP's multiplier sits in its forward) and the
    embeddings are left in bf16; so is any layer whose dimensions FP8 kernels cannot take (multiples of 16).
    emulate: the same casts to E4M3 (inputs, weights) and E5M2 (gradients), then the matmul in the autocast
    precision: FP8's rounding on any device, without its speed."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    def takes_fp8(module: torch.nn.Module, name: str) -> bool:
        return (name.startswith("blocks.") and isinstance(module, torch.nn.Linear)
                and module.in_features % 16 == 0 and module.out_features % 16 == 0)

    convert_to_float8_training(model, module_filter_fn=takes_fp8, config=Float8LinearConfig(emulate=emulate))
