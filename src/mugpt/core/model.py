"""GPT-2 in plain PyTorch: one config dataclass, one model class.

No Lightning and no mup here: the model exposes the knobs a parametrization needs (attention logit
scale, embedding multiplier, a swappable readout) and `mugpt.core.parametrization` turns them for SP or µP.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

# Kernels behind F.scaled_dot_product_attention that a config can pin (GPU benchmarks compare them).
SDPA_BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                 "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


LOSS_IMPLS = ("full", "chunked", "fused")


@dataclass
class GPTConfig:
    vocab_size: int = 50257  # the tokenizer's vocabulary; the embedding is padded up (see padded_vocab_size)
    block_size: int = 256  # context length
    width: int = 256  # d_model
    n_layer: int = 4
    n_head: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0
    bias: bool = True
    norm: Literal["pre", "post"] = "pre"  # pre-norm as GPT-2; post-norm as the original Transformer
    tie_embeddings: bool = True
    init_std: float = 0.02  # std of the embedding tables (and untied readout); of the hidden matrices too unless set
    hidden_init_std: float | None = None  # std of every matrix inside a block; None: init_std (GPT-2: 0.02 for all)
    pad_vocab_multiple: int = 64  # 50257 -> 50304: matmuls on a multiple of 64 run faster
    attn_scale: float | None = None  # attention logit scale; None means 1/sqrt(head_size) (SP)
    embed_mult: float = 1.0  # forward multiplier on the embedding output (µP's input multiplier)
    branch_mult: float = 1.0  # multiplier on every residual branch's output (depth-µP / CompleteP: (L_base/L)^α)
    init_depth: int | None = None  # the depth in GPT-2's 1/sqrt(2·depth) init of residual projections; None: n_layer
    activation_checkpointing: bool = False  # recompute each block in backward to save memory
    attention_backend: str = "auto"  # auto: PyTorch picks the SDPA kernel; flash | cudnn | efficient | math pin one
    # How the training loss is computed from the last hidden states. full: all logits at once (fp32, with their
    # gradient: 2·B·T·V·4 bytes). chunked: loss_chunk positions at a time, their gradients computed in the
    # forward pass, so all logits are never held (plain PyTorch, CPU and GPU). fused: liger-kernel's linear + CE
    # (CUDA only). The readout's own multiplier (µP) applies in all three.
    loss_impl: str = "full"
    loss_chunk: int = 2048  # positions per chunk for loss_impl=chunked

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "width", "n_layer", "n_head", "mlp_ratio", "pad_vocab_multiple"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
        if self.width % self.n_head:
            raise ValueError(f"model.width={self.width} is not divisible by model.n_head={self.n_head}")
        if self.norm not in ("pre", "post"):
            raise ValueError(f"model.norm must be 'pre' or 'post', got {self.norm!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.loss_impl not in LOSS_IMPLS:
            raise ValueError(f"model.loss_impl must be one of {', '.join(LOSS_IMPLS)}, got {self.loss_impl!r}")
        if not isinstance(self.loss_chunk, int) or self.loss_chunk <= 0:
            raise ValueError(f"model.loss_chunk must be a positive integer, got {self.loss_chunk!r}")
        if self.init_depth is not None and (not isinstance(self.init_depth, int) or self.init_depth <= 0):
            raise ValueError(f"model.init_depth must be a positive integer or null, got {self.init_depth!r}")
        for name in ("init_std", "hidden_init_std"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or value < 0):
                raise ValueError(f"model.{name} must be a non-negative number, got {value!r}")
        if self.branch_mult <= 0:
            raise ValueError(f"model.branch_mult must be positive, got {self.branch_mult}")
        if self.attention_backend != "auto" and self.attention_backend not in SDPA_BACKENDS:
            raise ValueError(f"model.attention_backend must be auto or one of {', '.join(SDPA_BACKENDS)}, "
                             f"got {self.attention_backend!r}")

    @property
    def head_size(self) -> int:
        return self.width // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    @property
    def mlp_width(self) -> int:
        return self.mlp_ratio * self.width

    def to_dict(self) -> dict:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.head_size = config.head_size
        self.qkv = nn.Linear(config.width, 3 * config.width, bias=config.bias)
        self.proj = nn.Linear(config.width, config.width, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.attn_dropout = config.dropout
        self.scale = config.attn_scale if config.attn_scale is not None else 1.0 / math.sqrt(self.head_size)
        self.backend = SDPA_BACKENDS.get(config.attention_backend)  # None: PyTorch's own choice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.head_size).transpose(1, 2) for t in (q, k, v))
        with sdpa_kernel([self.backend]) if self.backend is not None else contextlib.nullcontext():
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=self.scale, dropout_p=self.attn_dropout if self.training else 0.0
            )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.width, config.mlp_width, bias=config.bias)
        self.act = nn.GELU(approximate="tanh")  # GPT-2's gelu
        self.proj = nn.Linear(config.mlp_width, config.width, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.pre_norm = config.norm == "pre"
        self.ln_1 = nn.LayerNorm(config.width, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.width, bias=config.bias)
        self.mlp = MLP(config)
        self.branch_mult = config.branch_mult

    def _branch(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        y = module(x)
        return y * self.branch_mult if self.branch_mult != 1.0 else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            x = x + self._branch(self.attn, self.ln_1(x))
            return x + self._branch(self.mlp, self.ln_2(x))
        x = self.ln_1(x + self._branch(self.attn, x))
        return self.ln_2(x + self._branch(self.mlp, x))


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """mean cross-entropy(scale·h Wᵀ, targets) over positions in chunks, with the gradients of h and W computed
    chunk by chunk in the forward pass, so that neither all logits nor a recomputation of them is ever needed:
    the same three matmuls per position as the unfused readout (logits, then dlogits·W and dlogitsᵀ·h), on
    chunk × vocab logits at a time. Targets of -1 are ignored."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, scale: float, chunk: int,
                grads: bool) -> torch.Tensor:
        valid_count = (targets != -1).sum().clamp(min=1)
        grad_h = torch.empty_like(h) if grads else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if grads else None
        total = h.new_zeros((), dtype=torch.float32)
        for start in range(0, h.size(0), chunk):
            x, t = h[start:start + chunk], targets[start:start + chunk]
            x = x * scale if scale != 1.0 else x
            logits = (x @ weight.t()).float()
            valid = t != -1
            safe = t.clamp(min=0).unsqueeze(1)
            target_logit = logits.gather(1, safe).squeeze(1)
            # softmax in place on the logits buffer: one chunk × vocab tensor per chunk, not three
            peak = logits.amax(dim=-1, keepdim=True)
            probs = logits.sub_(peak).exp_()
            norm = probs.sum(dim=-1, keepdim=True)
            lse = peak.squeeze(1) + norm.squeeze(1).log()
            total += ((lse - target_logit) * valid).sum()
            if grads:  # d(mean loss)/d logits = (softmax - onehot) / count, zero on ignored positions
                d = probs.div_(norm)
                d.scatter_add_(1, safe, -torch.ones_like(safe, dtype=d.dtype))
                d.mul_((valid / valid_count).unsqueeze(1))
                grad_x = d.to(weight.dtype) @ weight
                grad_h[start:start + chunk] = grad_x * scale if scale != 1.0 else grad_x
                grad_w.addmm_(d.t(), x.float())
        if grads:
            ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        return total / valid_count

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_loss, grad_w * grad_loss, None, None, None, None


def readout_input_scale(readout: nn.Module) -> float:
    """The factor a readout's forward puts on its input (µP's output_mult / m; 1 for a plain Linear): what a loss
    that takes the weight rather than the module must apply itself."""
    return readout.input_scale() if hasattr(readout, "input_scale") else 1.0


def fused_linear_cross_entropy(readout: nn.Module, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """liger-kernel's fused readout + cross-entropy (CUDA, Triton), with the readout's input multiplier."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    scale = readout_input_scale(readout)
    loss = LigerFusedLinearCrossEntropyLoss(ignore_index=-1)
    return loss(readout.weight, h * scale if scale != 1.0 else h, targets, readout.bias)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, init: bool = True) -> None:
        """init=False leaves PyTorch's default init, for a parametrization that draws its own."""
        super().__init__()
        self.config = config
        V, C = config.padded_vocab_size, config.width
        self.tok_emb = nn.Embedding(V, C)
        self.pos_emb = nn.Embedding(config.block_size, C)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        # Post-norm blocks already end in a LayerNorm; a final one only belongs to pre-norm.
        self.ln_f = nn.LayerNorm(C, bias=config.bias) if config.norm == "pre" else nn.Identity()
        self.lm_head = nn.Linear(C, V, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        if init:
            self.init_weights()

    # ----------------------------------------------------------------- init
    def residual_projections(self) -> list[nn.Linear]:
        """Layers that write into the residual stream; GPT-2 scales their init by 1/sqrt(2 n_layer)."""
        return [m for b in self.blocks for m in (b.attn.proj, b.mlp.proj)]

    @torch.no_grad()
    def init_weights(self, normal_: Callable[..., torch.Tensor] = nn.init.normal_) -> None:
        """GPT-2's standard-parametrization init: N(0, 0.02) everywhere, residual projections shrunk.

        `normal_(tensor, mean, std)` draws the weights; µP passes mup's width-aware sampler, so that both
        parametrizations draw the same random numbers in the same order (identical models at base width)."""
        std = self.config.init_std
        hidden_std = std if self.config.hidden_init_std is None else self.config.hidden_init_std
        for module in self.modules():
            if isinstance(module, nn.Linear):
                normal_(module.weight, 0.0, std if module is self.lm_head else hidden_std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                normal_(module.weight, 0.0, std)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        # GPT-2 shrinks the residual writes by 1/sqrt(2L) so the stream's variance stays O(1) over L blocks. Under
        # depth-µP / CompleteP the branch multiplier does that job, and this factor is held at the base depth.
        depth = self.config.init_depth or self.config.n_layer
        for proj in self.residual_projections():
            normal_(proj.weight, 0.0, hidden_std / math.sqrt(2 * depth))

    # -------------------------------------------------------------- forward
    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position; the mean cross-entropy too when targets are given (-1 is ignored)."""
        T = idx.size(1)
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} is longer than model.block_size={self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.drop((self.tok_emb(idx) + self.pos_emb(pos)) * self.config.embed_mult)
        for block in self.blocks:
            if self.config.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        h = self.ln_f(x)
        if targets is not None and self.config.loss_impl != "full":
            return None, self._loss_without_logits(h, targets)  # the logits are never all in memory
        logits = self.lm_head(h)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def _loss_without_logits(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mean cross-entropy of loss_impl chunked or fused: equal to `full`'s up to float rounding."""
        h, targets = h.reshape(-1, h.size(-1)), targets.reshape(-1)
        if self.config.loss_impl == "fused":
            return fused_linear_cross_entropy(self.lm_head, h, targets)
        if self.lm_head.bias is not None:
            raise ValueError("model.loss_impl=chunked: the readout has a bias, which the chunked loss does not take")
        weight = self.lm_head.weight
        grads = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)  # not in validation
        return ChunkedLinearCrossEntropy.apply(h, weight, targets, readout_input_scale(self.lm_head),
                                               self.config.loss_chunk, grads)

    @torch.no_grad()
    def generate(
        self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None
    ) -> torch.Tensor:
        """Sample continuations of idx (B, T). temperature=0 is greedy. Padding ids are never sampled."""
        for _ in range(max_new_tokens):
            context = idx[:, -self.config.block_size :]
            logits, _ = self(context)  # the full forward: any readout multiplier applies here too
            logits = logits[:, -1, :].float()
            logits[:, self.config.vocab_size :] = float("-inf")
            if temperature == 0:
                next_id = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits[logits < kth] = float("-inf")
                next_id = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            idx = torch.cat((idx, next_id), dim=1)
        return idx

    # ------------------------------------------------------------ accounting
    def num_params(self, non_embedding: bool = False) -> int:
        """Distinct parameters (a tied head counts once); non_embedding drops both embedding tables."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel() + self.pos_emb.weight.numel()
        return n

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6N for the matmuls with weights plus 12·L·H·Q·T for attention (PaLM appendix B)."""
        c = self.config
        # The readout is a real matmul (tied or not), so the token table counts; the position table is a lookup.
        n = self.num_params() - self.pos_emb.weight.numel()
        return 6 * n + 12 * c.n_layer * c.n_head * c.head_size * c.block_size

    # ------------------------------------------------------- GPT-2 weights
    @classmethod
    def from_hf_state_dict(cls, state_dict: Mapping[str, torch.Tensor], n_head: int, **overrides) -> GPT:
        """Build a model from a GPT-2 state dict in the Hugging Face `transformers` layout.

        HF's GPT-2 stores its linear layers as Conv1D (weight shape (in, out)), so those are transposed.
        The config is read off the tensor shapes; n_head cannot be, so it is passed in.
        """
        sd = {k.removeprefix("transformer."): v for k, v in state_dict.items()}
        vocab_size, width = sd["wte.weight"].shape
        n_layer = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("h."))
        config = GPTConfig(
            vocab_size=vocab_size, block_size=sd["wpe.weight"].shape[0], width=width, n_layer=n_layer,
            n_head=n_head, bias="h.0.attn.c_attn.bias" in sd,
            mlp_ratio=sd["h.0.mlp.c_fc.weight"].shape[1] // width, **overrides,
        )
        model = cls(config)
        names = {"ln_1": "ln_1", "ln_2": "ln_2", "attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj",
                 "mlp.c_fc": "mlp.fc", "mlp.c_proj": "mlp.proj"}
        conv1d = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}
        ours = model.state_dict()
        loaded: dict[str, torch.Tensor] = {}
        wte = torch.zeros_like(ours["tok_emb.weight"])
        wte[:vocab_size] = sd["wte.weight"]
        loaded["tok_emb.weight"] = wte
        loaded["pos_emb.weight"] = sd["wpe.weight"]
        for key in ("weight", "bias"):
            if f"ln_f.{key}" in sd:
                loaded[f"ln_f.{key}"] = sd[f"ln_f.{key}"]
        for i in range(n_layer):
            for hf, mine in names.items():
                for key in ("weight", "bias"):
                    src = sd.get(f"h.{i}.{hf}.{key}")
                    if src is None:
                        continue
                    loaded[f"blocks.{i}.{mine}.{key}"] = src.t() if (hf in conv1d and key == "weight") else src
        if not config.tie_embeddings:
            head = state_dict.get("lm_head.weight", sd["wte.weight"])
            loaded["lm_head.weight"] = torch.cat([head, wte[vocab_size:]])
        else:
            loaded["lm_head.weight"] = wte
        missing = set(ours) - set(loaded)
        if missing:
            raise KeyError(f"GPT-2 state dict lacks tensors for: {sorted(missing)}")
        model.load_state_dict(loaded)
        return model
