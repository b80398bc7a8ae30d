"""What the benchmark trains: its model presets and config (one Recipe per row), the cumulative tricks and the
table's rows, and the random-token batches every arm iterates."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from mugpt.config import load_optim_config
from mugpt.core.model import GPT, GPTConfig
from mugpt.core.recipe import Recipe

SCHEDULE_STEPS = 10_000  # the table's rows run an open-ended number of steps: a long cosine, so lr stays ~flat

PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(width=32, n_layer=1, n_head=2, block_size=16, batch_size=4),  # tests
    "small": dict(width=128, n_layer=4, n_head=4, block_size=128, batch_size=8),  # CPU default
    "gpt2": dict(width=768, n_layer=12, n_head=12, block_size=1024, batch_size=16),  # GPT-2 124M
}

Log = Callable[[str], None]
Batch = tuple[torch.Tensor, torch.Tensor]


# ------------------------------------------------------------------------------------------ config
def adamw_config() -> dict:
    """The project's AdamW settings (conf/optim/adamw.yaml on its schema) as a plain dict."""
    return OmegaConf.to_container(load_optim_config("adamw"), resolve=True)


@dataclass(frozen=True)
class BenchConfig:
    device: str = "cpu"
    preset: str = "small"
    width: int = 128
    n_layer: int = 4
    n_head: int = 4
    block_size: int = 128
    batch_size: int = 8
    vocab_size: int = 50257  # GPT-2 BPE
    seed: int = 1337
    compile_mode: str | None = None  # torch.compile mode; None is inductor's default mode
    n_batches: int = 4  # distinct random token batches, cycled
    loss_chunk: int = 2048  # positions per chunk in the chunked cross-entropy row
    threads: int | None = None  # torch intra-op threads; None keeps torch's default (one per core)
    optim: dict = field(default_factory=adamw_config)  # conf/optim/adamw.yaml's keys; `fused` is set per row

    def apply_threads(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> BenchConfig:
        if preset not in PRESETS:
            raise ValueError(f"preset={preset}: unknown preset (choose one of {', '.join(PRESETS)})")
        return cls(preset=preset, **{**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}})

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.block_size

    def model_dict(self, pad_vocab: bool = True, checkpointing: bool = False, loss_impl: str = "full") -> dict:
        return dict(vocab_size=self.vocab_size, block_size=self.block_size, width=self.width, n_layer=self.n_layer,
                    n_head=self.n_head, pad_vocab_multiple=64 if pad_vocab else 1,
                    activation_checkpointing=checkpointing, loss_impl=loss_impl, loss_chunk=self.loss_chunk)

    def optim_config(self, fused: bool | str = "auto") -> DictConfig:
        """The optimizer config with the fused switch set (False: the project's foreach path)."""
        return OmegaConf.create({**self.optim, "fused": fused})

    def recipe(self, parametrization: dict, pad_vocab: bool = True, checkpointing: bool = False,
               fused: bool | str = "auto", loss_impl: str = "full") -> Recipe:
        return Recipe(GPTConfig(**self.model_dict(pad_vocab, checkpointing, loss_impl)), parametrization,
                      self.optim_config(fused))

    def useful_flops_per_token(self) -> float:
        """Training FLOPs per token of the unpadded model: the work MFU counts for every row (padding's extra
        columns and checkpointing's recomputation are not useful work)."""
        with torch.device("meta"):
            return GPT(GPTConfig(**self.model_dict(pad_vocab=False))).flops_per_token()


TRICKS: dict[str, str] = {
    "tf32": "+ TF32 matmuls",
    "bf16": "+ bf16 autocast",
    "pad_vocab": "+ padded vocab",
    "fused_adamw": "+ fused AdamW",
    "compile": "+ torch.compile",
    "chunked_loss": "+ chunked cross-entropy",
    "checkpointing": "+ activation checkpointing",
    "accumulation": "+ grad accumulation (2 x B/2)",
}


@dataclass(frozen=True)
class Row:
    name: str
    tricks: tuple[str, ...] = ()
    key: str | None = None  # the trick this row adds (None for the baseline)
    parent: int | None = None  # index of the row it extends

    def has(self, trick: str) -> bool:
        return trick in self.tricks

    @property
    def micro_batches(self) -> int:
        return 2 if self.has("accumulation") else 1


def build_rows(tricks: Iterable[str] = tuple(TRICKS), carry_bf16: bool = True) -> list[Row]:
    """The baseline, then one row per trick, each adding its trick to all earlier ones. With carry_bf16=False
    the bf16 row is measured but later rows are built without bf16 (for CPUs without native bf16, where
    autocast is several times slower and would bury every later trick)."""
    tricks = list(tricks)
    unknown = [t for t in tricks if t not in TRICKS]
    if unknown:
        raise ValueError(f"rows: unknown trick(s) {unknown} (choose from {', '.join(TRICKS)})")
    rows = [Row("baseline fp32")]
    active: list[str] = []
    parent = 0
    for key in (t for t in TRICKS if t in tricks):  # always in the table's order
        rows.append(Row(TRICKS[key], tuple(active + [key]), key=key, parent=parent))
        if key == "bf16" and not carry_bf16:
            continue
        active.append(key)
        parent = len(rows) - 1
    return rows


def row_recipe(cfg: BenchConfig, row: Row) -> Recipe:
    """The recipe a table row trains: SP, with the row's vocab padding, checkpointing, loss and AdamW kernel."""
    return cfg.recipe({"name": "sp"}, pad_vocab=row.has("pad_vocab"), checkpointing=row.has("checkpointing"),
                      fused=row.has("fused_adamw"), loss_impl="chunked" if row.has("chunked_loss") else "full")


def make_batches(cfg: BenchConfig, device: torch.device | str) -> list[Batch]:
    """cfg.n_batches random GPT-2 token batches (ids < 50257, as real text gives), contiguous (x, y) pairs."""
    g = torch.Generator().manual_seed(cfg.seed)
    out = []
    for _ in range(cfg.n_batches):
        tokens = torch.randint(0, cfg.vocab_size, (cfg.batch_size, cfg.block_size + 1), generator=g)
        out.append((tokens[:, :-1].contiguous().to(device), tokens[:, 1:].contiguous().to(device)))
    return out


class TokenBatches(Dataset):
    """`length` batches cycling through a fixed pool: what both arms of an overhead comparison iterate."""

    def __init__(self, pool: list[Batch], length: int) -> None:
        self.pool, self.length = pool, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Batch:
        return self.pool[i % len(self.pool)]


def batch_loader(pool: list, length: int) -> DataLoader:
    return DataLoader(TokenBatches(pool, length), batch_size=None, shuffle=False, num_workers=0)
