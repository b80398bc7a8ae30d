"""Shakespeare as one token stream, and random windows of it as (x, y) batches: the small fixed corpus the
coordinate check, the doctor and Adam's ε study train on."""

from __future__ import annotations

import numpy as np
import torch


def load_tokens(tokenizer: str = "byte") -> np.ndarray:
    """Shakespeare's plays as one token stream (UTF-8 bytes for the byte tokenizer)."""
    from mugpt.data.text import get_tokenizer, shakespeare_text  # imports Lightning: only when data is needed

    tok = get_tokenizer(tokenizer)
    ids = np.asarray(tok.encode(shakespeare_text()), dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= tok.vocab_size):
        raise ValueError(f"tokenizer {tokenizer!r} produced ids outside [0, {tok.vocab_size})")
    return ids


def sample_batches(tokens: np.ndarray, count: int, batch_size: int, block_size: int,
                   seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`count` batches of random (x, y) windows: the same tokens for the same seed, whatever the model."""
    if len(tokens) <= block_size + 1:
        raise ValueError(f"corpus of {len(tokens)} tokens is too short for block_size={block_size}")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        starts = rng.integers(0, len(tokens) - block_size - 1, size=batch_size)
        windows = np.stack([tokens[s : s + block_size + 1] for s in starts])
        w = torch.from_numpy(windows)
        out.append((w[:, :-1].contiguous(), w[:, 1:].contiguous()))
    return out
