"""Training diagnostics, off by default (`diagnostics=on`): loss by token frequency, activation and update norms.

Every `every_n_steps` optimizer steps, one callback runs one extra no-grad forward of the raw (uncompiled) model
on that step's training batch, just before the step's own forward (so with the same weights: what is measured is
the training loss of the batch, split up), and logs at the row where Lightning logs that batch's train/loss:

* `freq_loss/bucket_k` — the training loss of the batch's target tokens in frequency bucket k (Kunstner et al.
  2024, "Heavy-Tailed Class Imbalance and Why Adam Outperforms Gradient Descent on Language Models"). Buckets
  are deciles (by default) of the training split's token *occurrences*, as in the paper's figure 1, where the
  classes, sorted by frequency, are split into groups that each hold about 10% of the samples (rather than
  deciles of the vocabulary, whose last nine would all be tokens seen a handful of times or never): bucket 0
  holds the most frequent tokens that together make up the first 10% of the corpus, bucket 9 the long tail that
  makes up the last 10%. Each bucket thus holds about a tenth of a batch's targets on average (comparable
  sample sizes), and the rare buckets hold thousands of token types each. `frequency_buckets` has the exact rule.
* `act/<module>` — mean |output| of each module that the coordinate check probes (mugpt.training.probe's
  `probed_modules`, measured with its own hooks, `record_l1`): embedding, per block attn/mlp/residual, logits.
* `update/<matrix>` — relative update size ||W_t − W_s|| / ||W_s|| (Frobenius) of every weight matrix (every
  2-D parameter; a tied readout is the token embedding) since the previous logging event s (the start of
  training, or of the resumed run, for the first event, which so covers every_n_steps − 1 updates).

Cost. Nothing when disabled: no callback is installed. When enabled, nothing on the other steps (no hook stays
registered, no device sync); at an event, one forward without gradients on one micro-batch (the step's first,
under gradient accumulation; in the training precision, through Lightning's precision plugin), and the loss sums,
token counts and update norms come back to the host in a single copy. `record_l1` reads each probed module's
mean back as the forward goes (one small copy per module, all within that one forward). The event's time counts
in the throughput window it falls in (perf/*: one forward more every every_n_steps steps). The update norms keep
a copy of every weight matrix from the previous event on the training device: as much memory again as the
weights (in their dtype), about 0.5 GB for GPT-2 124M in fp32 (150 MB of it the token embedding) and 3 GB for a
774M model; `diagnostics.module_norms=false` turns them (and act/*) off when that does not fit.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mugpt.training.probe import record_l1

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------- token frequency
def token_counts(tokens: np.ndarray, vocab_size: int, chunk: int = 1 << 24) -> np.ndarray:
    """Occurrences of each token id in `tokens` (length vocab_size); a memmapped split is read in chunks, so that
    a corpus of billions of tokens is never copied whole into memory."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, len(tokens), chunk):
        part = np.asarray(tokens[start:start + chunk]).astype(np.int64)
        if int(part.max()) >= vocab_size:
            raise ValueError(f"token id {int(part.max())} is outside the vocabulary of {vocab_size}")
        counts += np.bincount(part, minlength=vocab_size)
    return counts


def frequency_buckets(counts: np.ndarray, n_buckets: int) -> np.ndarray:
    """Bucket of every token id, 0 = most frequent, by quantiles of the corpus' token occurrences.

    Token types are sorted by count, most frequent first (ties by id). Token t goes to bucket
    floor(n_buckets · C_t / N), where C_t is the number of occurrences of all tokens before it in that order and
    N the corpus length: bucket k holds the tokens whose occurrences start in the k-th n_buckets-quantile of the
    sorted corpus. A single token heavier than 1/n_buckets of the corpus spans several quantiles, so the buckets
    after it can be empty (their ids are then simply unused). Tokens never seen are in the last bucket.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if n_buckets < 1:
        raise ValueError(f"token_frequency_buckets must be at least 1, got {n_buckets}")
    total = int(counts.sum())
    if total <= 0:
        raise ValueError("token frequency buckets need a non-empty corpus")
    order = np.argsort(-counts, kind="stable")
    before = np.cumsum(counts[order]) - counts[order]
    buckets = np.empty_like(counts)
    buckets[order] = np.minimum(n_buckets * before // total, n_buckets - 1)
    return buckets


def bucket_loss_sums(logits: torch.Tensor, targets: torch.Tensor, buckets: torch.Tensor,
                     n_buckets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-bucket sum of the targets' cross-entropy and number of targets, as the model's loss computes it (fp32,
    over every logit column, targets of -1 ignored). sums.sum() / counts.sum() is the batch's mean loss."""
    logits = logits.float().reshape(-1, logits.size(-1))
    targets = targets.reshape(-1)
    losses = F.cross_entropy(logits, targets, reduction="none", ignore_index=-1)
    valid = targets >= 0
    which = buckets[targets.clamp(min=0)]
    sums = torch.zeros(n_buckets, dtype=torch.float32, device=logits.device)
    sums.index_add_(0, which[valid], losses[valid])
    counts = torch.bincount(which[valid], minlength=n_buckets).to(torch.float32)
    return sums, counts


# ----------------------------------------------------------------------------------- update norms
def weight_matrices(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every 2-D parameter under a short name ('blocks.0.attn.qkv'); a tied parameter appears once."""
    return {name.removesuffix(".weight"): p for name, p in model.named_parameters() if p.ndim == 2}


class UpdateNorms:
    """||W − W_prev|| / ||W_prev|| per weight matrix, W_prev being a copy taken by the last `snapshot`.

    The copy lives beside the weights (same device and dtype): as much memory again as the matrices. A matrix whose
    previous norm is zero (µP's zero-initialised untied readout, before its first update) gives inf."""

    def __init__(self, model: nn.Module) -> None:
        self.params = weight_matrices(model)
        self.previous: list[torch.Tensor] | None = None

    @torch.no_grad()
    def snapshot(self) -> None:
        if self.previous is None:
            self.previous = [p.detach().clone() for p in self.params.values()]
        else:
            for q, p in zip(self.previous, self.params.values()):
                q.copy_(p.detach())

    @torch.no_grad()
    def relative(self) -> torch.Tensor:
        """One value per matrix (in `params` order), on the weights' device; no host copy here."""
        if self.previous is None:
            raise RuntimeError("UpdateNorms.relative() before the first snapshot()")
        diffs, norms = [], []
        for p, q in zip(self.params.values(), self.previous):
            q32 = q.float()
            diffs.append(torch.linalg.vector_norm(p.detach().float() - q32))
            norms.append(torch.linalg.vector_norm(q32))
        return torch.stack(diffs) / torch.stack(norms)


# --------------------------------------------------------------------------------------- callback
class Diagnostics(L.Callback):
    """Measures freq_loss/*, act/* and update/* on the batch of every `every_n_steps`-th optimizer step, just before
    that step's forward (with the weights the training forward uses), and logs them straight to the trainer's
    loggers at that batch's row: step = trainer.global_step = every_n_steps·k − 1, where Lightning logs the batch's
    train/loss (every_n_steps=50: rows 49, 99, ...; with one micro-batch per step and no dropout, the freq_loss/*
    split exactly that train/loss). update/* at row s compares the weights after s updates with those at the previous
    event (the first event: with the weights at the start of training, s updates). See the module docstring."""

    def __init__(self, every_n_steps: int, buckets: np.ndarray | None = None, n_buckets: int | None = None,
                 module_norms: bool = True) -> None:
        """buckets: frequency bucket of each token id (see `frequency_buckets`), None for no freq_loss/*."""
        if every_n_steps < 1:
            raise ValueError(f"diagnostics.every_n_steps must be at least 1, got {every_n_steps}")
        self.every = int(every_n_steps)
        self.buckets_np = None if buckets is None else np.asarray(buckets, dtype=np.int64)
        self.n_buckets = 0 if buckets is None else int(n_buckets or self.buckets_np.max() + 1)
        self.module_norms = module_norms
        self._buckets: torch.Tensor | None = None
        self._updates: UpdateNorms | None = None
        self._snapshot_step = -1  # global_step of the weights in the update snapshot
        self._last_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.buckets_np is not None:
            self._buckets = torch.as_tensor(self.buckets_np, device=pl_module.device)
        if self.module_norms:
            self._updates = UpdateNorms(pl_module.model)
            self._updates.snapshot()
            self._snapshot_step = trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx % trainer.accumulate_grad_batches:
            return  # a later micro-batch of the step
        step = trainer.global_step  # updates so far; Lightning logs this batch's train/loss at this row
        if (step + 1) % self.every or step == self._last_step or not trainer.loggers:
            return
        self._last_step = step
        metrics = self.measure(trainer, pl_module, batch)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any) -> dict[str, float]:
        """Every diagnostic on `batch` (the step's first micro-batch), as {metric name: value}."""
        x, y = batch
        model = pl_module.model
        was_training = model.training
        model.eval()  # as the coordinate check measures: dropout off
        probe = record_l1(model) if self.module_norms else contextlib.nullcontext({})
        try:
            with torch.no_grad(), trainer.precision_plugin.forward_context(), probe as acts:
                logits, _ = model(x)
        finally:
            model.train(was_training)
        parts = []
        if self._buckets is not None:
            parts += bucket_loss_sums(logits, y, self._buckets, self.n_buckets)
        del logits
        updated = self._updates is not None and trainer.global_step > self._snapshot_step
        if updated:  # (none at a first event before any update: every_n_steps=1)
            parts.append(self._updates.relative())
            self._updates.snapshot()
            self._snapshot_step = trainer.global_step
        values = torch.cat([p.float() for p in parts]).tolist() if parts else []  # the one device→host copy
        metrics: dict[str, float] = {}
        if self._buckets is not None:
            k = self.n_buckets
            sums, counts, values = values[:k], values[k:2 * k], values[2 * k:]
            for bucket, (s, n) in enumerate(zip(sums, counts)):
                if n > 0:  # a bucket absent from this batch has no loss
                    metrics[f"freq_loss/bucket_{bucket}"] = s / n
        if self._updates is not None:
            metrics.update({f"act/{name}": v for name, v in acts.items()})
        if updated:
            metrics.update({f"update/{name}": v for name, v in zip(self._updates.params, values)})
        return metrics


def build_diagnostics(cfg: Any, datamodule: Any) -> list[L.Callback]:
    """The callbacks cfg.diagnostics asks for ([] when off or absent); `datamodule` is set up (train_tokens)."""
    if not cfg or not (cfg.get("token_frequency") or cfg.get("module_norms")):
        return []
    buckets, n_buckets = None, int(cfg.get("token_frequency_buckets", 10))
    if cfg.get("token_frequency"):
        counts = token_counts(datamodule.train_tokens, datamodule.vocab_size)
        buckets = frequency_buckets(counts, n_buckets)
        sizes = np.bincount(buckets, weights=counts, minlength=n_buckets) / counts.sum()
        log.info("token frequency buckets: %s token types, %s of the training tokens",
                 np.bincount(buckets, minlength=n_buckets).tolist(), [f"{s:.1%}" for s in sizes])
    return [Diagnostics(int(cfg.get("every_n_steps", 50)), buckets, n_buckets, bool(cfg.get("module_norms")))]
