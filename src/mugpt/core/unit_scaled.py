"""u-µP's GPT: mugpt.core.model's GPT-2 built from Graphcore's `unit-scaling` layers (Blake et al., ICLR 2025).

The architecture is GPTConfig's, parameter for parameter and name for name (token and position tables, pre-norm
blocks of LayerNorm → attention → LayerNorm → GELU MLP, final LayerNorm, untied readout); only the layers differ:
every weight is drawn N(0, 1) and each op scales its output (and, separately, its input gradients) so that
activations and gradients start at unit scale at any width, and the residual stream is a weighted average whose
weights follow the package's depth rule. So checkpoints, the coordinate check's hooks (drop, blocks[i].attn,
.mlp, lm_head), diagnostics, inspection and generate() see the same modules as in a GPT.

Only `parametrization=umup` imports this module (mugpt.core.parametrization imports it lazily), so the project runs
without the unit-scaling package.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import unit_scaling as uu
import unit_scaling.functional as U
from torch.nn.attention import sdpa_kernel
from torch.utils.checkpoint import checkpoint
from unit_scaling.scale import scale_bwd

from mugpt.core.model import GPT, SDPA_BACKENDS, ChunkedLinearCrossEntropy, GPTConfig


def forward_value(grad_source: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """`value` in the forward pass, `grad_source`'s gradient in the backward pass. The loss reports the mean
    cross-entropy over the valid positions (as GPT's does), while its gradient stays the unit-scaled one, which
    depends on no data-dependent count. Written so that the forward value is `value` exactly: grad_source + (value -
    grad_source) would lose value's low bits when grad_source is much larger (the chunked loss's is ~1000×)."""
    return value.detach() + (grad_source - grad_source.detach())


class UnitScaledAttention(nn.Module):
    def __init__(self, config: GPTConfig, softmax_mult: float) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.head_size = config.head_size
        self.qkv = uu.Linear(config.width, 3 * config.width, bias=config.bias)
        self.proj = uu.Linear(config.width, config.width, bias=config.bias)
        self.resid_dropout = uu.Dropout(config.dropout)
        self.attn_dropout = config.dropout
        self.softmax_mult = softmax_mult  # logits are softmax_mult · q·k / d_head (µP's 1/d_head)
        self.backend = SDPA_BACKENDS.get(config.attention_backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.head_size).transpose(1, 2) for t in (q, k, v))
        # unit-scaling's output scale for causal attention has log(T)/T in it, which is 0 at T = 1 and fails
        # (math domain error). One position attends only to itself, so there is nothing to mask: non-causal
        # attention is the same function there, and its scale rule gives 1 (the output is v).
        causal = T > 1
        with sdpa_kernel([self.backend]) if self.backend is not None else contextlib.nullcontext():
            y = U.scaled_dot_product_attention(q, k, v, is_causal=causal, mult=self.softmax_mult,
                                               dropout_p=self.attn_dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.proj(y))


class UnitScaledMLP(nn.Module):
    def __init__(self, config: GPTConfig, act_mult: float) -> None:
        super().__init__()
        self.fc = uu.Linear(config.width, config.mlp_width, bias=config.bias)
        self.act = uu.GELU(mult=act_mult, approximate="tanh")  # GPT-2's gelu
        self.proj = uu.Linear(config.mlp_width, config.width, bias=config.bias)
        self.dropout = uu.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(self.act(self.fc(x))))


class UnitScaledBlock(nn.Module):
    """A pre-norm block whose residual adds are u-µP's weighted averages: x ← (τ·f(x) + x) / sqrt(1 + τ²), with
    the branch's τ from the package's depth rule (so the stream stays at unit scale however deep)."""

    def __init__(self, config: GPTConfig, attn_tau: float, mlp_tau: float, attn_softmax_mult: float,
                 ffn_act_mult: float) -> None:
        super().__init__()
        # the gains and biases of GPT-2's LayerNorms are kept (the package's default drops them) so that the
        # architecture is GPTConfig's; they are u-µP "norm" and "bias" parameters
        self.ln_1 = uu.LayerNorm(config.width, elementwise_affine=True, bias=config.bias)
        self.attn = UnitScaledAttention(config, attn_softmax_mult)
        self.ln_2 = uu.LayerNorm(config.width, elementwise_affine=True, bias=config.bias)
        self.mlp = UnitScaledMLP(config, ffn_act_mult)
        self.attn_tau, self.mlp_tau = attn_tau, mlp_tau

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = U.residual_apply(lambda r: self.attn(self.ln_1(r)), x, tau=self.attn_tau)
        return U.residual_apply(lambda r: self.mlp(self.ln_2(r)), x, tau=self.mlp_tau)


class UnitScaledGPT(nn.Module):
    """GPT-2 under u-µP. forward(idx, targets) returns (logits, loss) as GPT's does; the logits include the loss
    softmax multiplier, so that sampling and F.cross_entropy on them see the distribution the loss trains.

    The loss's value is the mean cross-entropy over the valid positions; its gradient is unit-scaled (the
    package's cross-entropy: the gradient of the summed loss, not divided by the number of positions). Adam's
    steps do not depend on that overall factor; a gradient-norm clip does (see conf/parametrization/umup.yaml)."""

    def __init__(self, config: GPTConfig, residual_mult: float = 1.0, residual_attn_ratio: float = 1.0,
                 attn_softmax_mult: float = 1.0, ffn_act_mult: float = 1.0, loss_softmax_mult: float = 1.0) -> None:
        super().__init__()
        if config.tie_embeddings or config.norm != "pre":
            raise ValueError("UnitScaledGPT needs model.tie_embeddings=false and model.norm=pre "
                             "(UnitScaledParametrization.check_model says why)")
        self.config = config
        V, C, L = config.padded_vocab_size, config.width, config.n_layer
        self.tok_emb = uu.Embedding(V, C)
        self.pos_emb = uu.Embedding(config.block_size, C)
        self.drop = uu.Dropout(config.dropout)
        # The package's rule gives the 2L residual branches (attention, MLP, attention, ...) their τ, as its own
        # TransformerStack does; DepthModuleList tags every block parameter with the depth L, which its
        # learning-rate rule reads (block parameters get lr·L^-1/2).
        tau = uu.transformer_residual_scaling_rule(residual_mult, residual_attn_ratio)
        self.blocks = uu.DepthModuleList(
            UnitScaledBlock(config, tau(2 * i, 2 * L), tau(2 * i + 1, 2 * L), attn_softmax_mult, ffn_act_mult)
            for i in range(L))
        self.ln_f = uu.LayerNorm(C, elementwise_affine=True, bias=config.bias)
        self.lm_head = uu.LinearReadout(C, V, bias=False)  # logits = W h / fan_in: µP's readout
        self.loss_softmax_mult = loss_softmax_mult

    def forward(self, idx: torch.Tensor,
                targets: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        T = idx.size(1)
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} is longer than model.block_size={self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.drop(U.add(self.tok_emb(idx), self.pos_emb(pos)))  # (tok + pos) / sqrt(2): unit scale
        for block in self.blocks:
            if self.config.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        h = self.ln_f(x)
        if targets is not None and self.config.loss_impl != "full":
            return None, self._loss_without_logits(h, targets)
        logits = self.lm_head(h)
        loss = None
        if targets is not None:
            flat = targets.reshape(-1)
            total = U.cross_entropy(logits.float().view(-1, logits.size(-1)), flat, ignore_index=-1,
                                    reduction="sum", mult=self.loss_softmax_mult)
            loss = forward_value(total, total / (flat != -1).sum().clamp(min=1))
        mult = self.loss_softmax_mult
        return (logits * mult if mult != 1.0 else logits), loss

    def _loss_without_logits(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """loss_impl=chunked: the project's chunked cross-entropy (never all logits at once) with the gradients
        rescaled to exactly the full path's unit-scaled ones. The chunked function computes the gradients of
        the mean loss, s·D·W / count for h and s·Dᵀh / count for W (s = loss_softmax_mult / width, D = softmax
        − one-hot); u-µP's readout and cross-entropy give c·D·W / sqrt(V) and c·Dᵀh / sqrt(N) instead
        (c = V / sqrt(V − 1), V = padded vocabulary, N = positions). Both are constant factors: the one they
        share goes on the loss's gradient, the weight's own sqrt(V / N) on the weight."""
        if self.config.loss_impl != "chunked":
            raise ValueError(f"parametrization=umup: model.loss_impl={self.config.loss_impl} is not supported "
                             f"(use full or chunked)")
        h, targets = h.reshape(-1, h.size(-1)), targets.reshape(-1)
        weight = self.lm_head.weight
        n, vocab = h.size(0), weight.size(0)
        scale = self.loss_softmax_mult / weight.size(1)  # logits = mult · W h / fan_in
        grads = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
        loss = ChunkedLinearCrossEntropy.apply(h, scale_bwd(weight, math.sqrt(vocab / n)), targets, scale,
                                               self.config.loss_chunk, grads)
        count = (targets != -1).sum().clamp(min=1)
        shared = count * (vocab / math.sqrt(vocab - 1)) / (math.sqrt(vocab) * scale)
        return forward_value(loss * shared, loss)

    # GPT's own methods read only config, tok_emb, pos_emb and the forward: the same code serves both models.
    generate = GPT.generate
    num_params = GPT.num_params
    flops_per_token = GPT.flops_per_token
