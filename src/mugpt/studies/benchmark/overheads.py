"""The overheads, each measured on interleaved blocks: Lightning against a plain PyTorch loop on the same
recipe and batches, and µP against SP through the plain loop."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterable

import torch
from omegaconf import OmegaConf

from mugpt.core.model import GPT
from mugpt.core.parametrization import GPT2_INIT, parametrization_class
from mugpt.core.recipe import Recipe, train_step
from mugpt.studies.benchmark.config import BenchConfig, Log, batch_loader, make_batches
from mugpt.studies.benchmark.hardware import _median, bf16_native, ratio_summary, sync, timed_steps


class PlainLoop:
    """`train_step` over a stream of batches, one batch per step: the loop Lightning is compared against."""

    def __init__(self, recipe: Recipe, model: GPT, optimizer, scheduler, batches: Iterable, device: torch.device,
                 bf16: bool = False) -> None:
        self.recipe, self.model, self.optimizer, self.scheduler = recipe, model, optimizer, scheduler
        self.batches = iter(batches)
        self.device = device
        self.autocast_dtype = torch.bfloat16 if bf16 else None
        self.losses: list[torch.Tensor] = []

    @property
    def steps(self) -> int:
        return len(self.losses)

    def step(self) -> None:
        out = train_step(self.model, self.optimizer, self.scheduler, [next(self.batches)],
                         grad_clip=self.recipe.grad_clip, autocast_dtype=self.autocast_dtype)
        self.losses.append(out.loss)

    def run(self, steps: int) -> float:
        return timed_steps(self.step, steps, self.device)


def plain_arm(cfg: BenchConfig, parametrization: dict, batches: Iterable, total_steps: int,
              bf16: bool) -> PlainLoop:
    """A plain loop over the preset's padded model with the project's AdamW (fused on CUDA), its schedule
    spanning total_steps, seeded as the Lightning arm is."""
    device = torch.device(cfg.device)
    recipe = cfg.recipe(parametrization)
    torch.manual_seed(cfg.seed)  # right before the build, as GPTLightningModule's arm and the rows
    model = recipe.build_model(device)
    model.train()
    optimizer, scheduler = recipe.build_optimizer(model, total_steps)
    return PlainLoop(recipe, model, optimizer, scheduler, batches, device, bf16=bf16)


def overhead_precision(device: torch.device) -> tuple[str, bool]:
    """(Lightning precision, plain-loop bf16 autocast) for the overhead comparisons: bf16 autocast on CUDA,
    fp32 on CPU (bf16 autocast without native bf16 would only slow both arms down)."""
    return ("bf16-mixed", True) if device.type == "cuda" and bf16_native(device) else ("32-true", False)


def compare_lightning_plain(cfg: BenchConfig, *, warmup: int = 2, blocks: int = 6, block_steps: int = 2,
                            log: Log = print) -> dict:
    """Lightning (Trainer + GPTLightningModule) vs the plain loop on the same recipe and batches. The plain
    loop's blocks run inside the Lightning fit, from on_train_batch_start, so the two alternate: P1 L1 P2 L2 ...;
    a Lightning block is the time between the on_train_batch_start hooks that open two consecutive blocks, i.e.
    block_steps complete Lightning iterations (data fetch, hooks, training_step, backward, clipping, optimizer
    and scheduler steps, logging), the plain blocks excluded."""
    import lightning as L

    from mugpt.training.module import GPTLightningModule

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", ".*have no `val_dataloader`.*")  # the arms train only
    device = torch.device(cfg.device)
    precision, bf16 = overhead_precision(device)
    torch.set_float32_matmul_precision("high" if device.type == "cuda" else "highest")
    total = warmup + blocks * block_steps + 1  # the last step closes the last Lightning block
    pool = make_batches(cfg, device)
    plain = plain_arm(cfg, {"name": "sp"}, batch_loader(pool, total), total, bf16)
    torch.manual_seed(cfg.seed)
    module = GPTLightningModule(cfg.model_dict(), {"name": "sp"}, OmegaConf.to_container(cfg.optim_config("auto")),
                                compile_mode=None)
    same_init = all(torch.equal(a, b.to(a.device)) for a, b in zip(plain.model.state_dict().values(),
                                                                   module.model.state_dict().values()))

    class InterleavedTimer(L.Callback):
        def __init__(self) -> None:
            self.lightning_s: list[float] = []
            self.plain_s: list[float] = []
            self.hook_window_s: list[float] = []
            self.losses: list[torch.Tensor] = []
            self._block_t0: float | None = None
            self._t_start = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            i = trainer.global_step
            if i >= warmup and (i - warmup) % block_steps == 0:
                sync(device)
                now = time.perf_counter()
                if self._block_t0 is not None:
                    self.lightning_s.append(now - self._block_t0)
                if len(self.plain_s) < blocks:
                    self.plain_s.append(plain.run(block_steps))
                self._block_t0 = time.perf_counter()
            self._t_start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.hook_window_s.append(time.perf_counter() - self._t_start)
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.losses.append(loss.detach())

    timer = InterleavedTimer()
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index] if device.index is not None else 1, max_steps=total, max_epochs=-1,
        precision=precision, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer],
        use_distributed_sampler=False, log_every_n_steps=max(1, total),
    )
    log(f"  Lightning vs plain: {warmup} warm-up steps, then {blocks} x ({block_steps} plain + {block_steps} "
        f"Lightning) steps, precision {precision}")
    plain.run(warmup)  # untimed warm-up of the plain arm, before the Lightning arm's own warm-up steps
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=batch_loader(pool, total))
    fit_s = time.perf_counter() - t0
    while plain.steps < total:  # the step that closed the last Lightning block
        plain.run(1)
    plain_losses = [float(v) for v in plain.losses]
    lightning_losses = [float(v) for v in timer.losses]
    lightning_ms = [1000 * s / block_steps for s in timer.lightning_s]
    plain_ms = [1000 * s / block_steps for s in timer.plain_s]
    windows = timer.hook_window_s[warmup:warmup + blocks * block_steps]
    diffs = [abs(a - b) for a, b in zip(lightning_losses, plain_losses)]
    summary = ratio_summary(lightning_ms, plain_ms)
    return {
        "precision": precision, "steps": total, "lightning_steps": trainer.global_step, "plain_steps": plain.steps,
        "warmup_steps": warmup, "blocks": blocks, "block_steps": block_steps, "same_initial_weights": same_init,
        "plain_ms_per_step": _median(plain_ms), "lightning_ms_per_step": _median(lightning_ms),
        "lightning_hook_window_ms_per_step": 1000 * _median(windows) if windows else None,
        "plain_block_ms": plain_ms, "lightning_block_ms": lightning_ms, **summary,
        "overhead_pct": 100 * (summary["ratio"] - 1), "goal_ratio": 1.02, "goal_met": summary["ratio"] <= 1.02,
        "loss_plain": plain_losses[-1], "loss_lightning": lightning_losses[-1],
        "max_abs_loss_diff": max(diffs) if diffs else None, "losses_equal_1e-5": bool(diffs) and max(diffs) <= 1e-5,
        "fit_seconds": fit_s,
    }


def compare_mup_sp(cfg: BenchConfig, *, warmup: int = 2, blocks: int = 6, block_steps: int = 2,
                   log: Log = print) -> dict:
    """µP (base_width = width / 2) vs SP through the plain loop, blocks alternating S M M S S M ..."""
    device = torch.device(cfg.device)
    _, bf16 = overhead_precision(device)
    torch.set_float32_matmul_precision("high" if device.type == "cuda" else "highest")
    total = warmup + blocks * block_steps
    pool = make_batches(cfg, device)
    base_width = cfg.width // 2
    # µP as measured: GPT-2's init (GPT2_INIT), not the measured defaults the Python route now shares with the yaml
    options = {"sp": {"name": "sp"}, "mup": {"name": "mup", "base_width": base_width, **GPT2_INIT}}
    for name in options:
        parametrization_class(name)  # both registered, or one line naming the known ones before anything is built
    arms = {name: plain_arm(cfg, pcfg, batch_loader(pool, total), total, bf16) for name, pcfg in options.items()}
    log(f"  µP (base_width {base_width}) vs SP: {warmup} warm-up steps each, then {blocks} x {block_steps} steps "
        f"per arm, alternating")
    for arm in arms.values():
        arm.run(warmup)
    times: dict[str, list[float]] = {"sp": [], "mup": []}
    for b in range(blocks):
        for name in (("sp", "mup") if b % 2 == 0 else ("mup", "sp")):
            times[name].append(1000 * arms[name].run(block_steps) / block_steps)
    summary = ratio_summary(times["mup"], times["sp"])
    return {
        "base_width": base_width, "width": cfg.width, "steps": total, "warmup_steps": warmup, "blocks": blocks,
        "block_steps": block_steps, "param_groups": {k: len(a.optimizer.param_groups) for k, a in arms.items()},
        "group_lrs": {k: sorted({g.get("initial_lr", g["lr"]) for g in a.optimizer.param_groups})
                      for k, a in arms.items()},  # before the schedule: µP's hidden lr is lr / (width / base)
        "sp_ms_per_step": _median(times["sp"]), "mup_ms_per_step": _median(times["mup"]),
        "sp_block_ms": times["sp"], "mup_block_ms": times["mup"],
        **summary, "overhead_pct": 100 * (summary["ratio"] - 1), "goal_ratio": 1.02,
        "goal_met": summary["ratio"] <= 1.02, "loss_sp": float(arms["sp"].losses[-1]),
        "loss_mup": float(arms["mup"].losses[-1]),
    }
