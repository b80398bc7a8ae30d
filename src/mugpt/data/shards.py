"""Token shards, the training side: check a prepared folder's manifest and stream it (data=shards).

Shards are made once by `mugpt.data.prepare_shards` (scripts/prepare_data.py). `ShardDataModule` streams DIR/train
with litdata's StreamingDataset (TokensLoader windows of block_size+1 tokens, shuffled by chunk and within chunks)
through a StreamingDataLoader, which shards by rank and node itself. Resume: the loader's own state_dict,
snapshotted after every batch, so the checkpoint holds the state after exactly the batches the optimizer consumed
(Lightning fetches one batch ahead).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import deque
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mugpt.data.prepare_shards import FORMAT, MANIFEST, preparation_in_progress
from mugpt.data.text import _checksum, get_tokenizer

log = logging.getLogger(__name__)


# -------------------------------------------------------------------------------------- checking
def is_url(path: str) -> bool:
    return "://" in str(path)


def load_manifest(path: str) -> dict:
    """DIR's manifest, read without checking the chunks: the folder exists, no preparation is writing it, the
    manifest is complete. One-line errors naming data.path; nothing is modified."""
    root = Path(path).expanduser()
    where = f"data.path={path}"
    if not root.is_dir():
        raise FileNotFoundError(f"{where}: no such folder (prepare it with scripts/prepare_data.py output={path})")
    state = preparation_in_progress(root)
    if state and state.startswith("running"):
        raise ValueError(f"{where}: a preparation is still writing it {state[8:]}")
    mpath = root / MANIFEST
    if not mpath.is_file():
        if state:
            raise ValueError(f"{where}: an unfinished preparation (its process, {state[7:-1]}, is gone): "
                             f"re-run scripts/prepare_data.py")
        raise FileNotFoundError(f"{where}: no {MANIFEST} (prepare it with scripts/prepare_data.py output={path})")
    return _parse_manifest(mpath.read_bytes(), path, str(mpath))


def _parse_manifest(data: bytes, path: str, source: str) -> dict:
    try:
        manifest = json.loads(data)
        assert manifest["format"] == FORMAT and isinstance(manifest["tokenizer"], str)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise ValueError(f"data.path={path}: {source} is not a mugpt shard manifest") from None
    return manifest


def remote_manifest(url: str, cache_dir: str | Path) -> dict:
    """The manifest of shards in a bucket (s3://, gs://, ...), fetched with litdata's downloader for that URL (the
    credentials litdata itself uses) into a temporary file under `cache_dir`, so it is never a stale copy."""
    import tempfile

    from litdata.streaming.downloader import get_downloader

    cache = Path(cache_dir).expanduser() / "litdata"
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        local = Path(tmp) / MANIFEST
        try:
            get_downloader(url, tmp, []).download_file(f"{url.rstrip('/')}/{MANIFEST}", str(local))
            data = local.read_bytes()
        except Exception as exc:  # noqa: BLE001 - each storage backend fails in its own way
            lines = str(exc).strip().splitlines()
            raise FileNotFoundError(f"data.path={url}: its {MANIFEST} could not be read "
                                    f"({lines[0][:160] if lines else type(exc).__name__}); give data.tokenizer to "
                                    f"train without it") from None
    return _parse_manifest(data, url, f"{url.rstrip('/')}/{MANIFEST}")


def check_tokenizer(manifest: dict, tokenizer: str | None, path: str) -> str:
    """The tokenizer to train with: data.tokenizer when given, which must be the manifest's, else the manifest's.
    Refused in one line: another tokenizer than the shards were made with, or a manifest whose vocabulary is not
    its tokenizer's."""
    recorded = manifest["tokenizer"]
    try:
        vocab_size = get_tokenizer(recorded).vocab_size
    except ValueError:  # shards from a newer version: get_tokenizer's message would blame data.tokenizer
        raise ValueError(f"data.path={path}: the manifest's tokenizer '{recorded}' is not one this version "
                         f"knows") from None
    if tokenizer and tokenizer != recorded:
        raise ValueError(f"data.tokenizer={tokenizer}: the manifest of data.path={path} says tokenizer {recorded} "
                         f"(vocabulary {manifest.get('vocab_size')}); leave data.tokenizer null to use it")
    if manifest.get("vocab_size") != vocab_size:
        raise ValueError(f"data.path={path}: manifest says vocabulary {manifest.get('vocab_size')}, its tokenizer "
                         f"{recorded} has {vocab_size}")
    return recorded


def read_manifest(path: str, tokenizer: str | None, verify: str) -> dict:
    """DIR's manifest, checked: complete, not being written, the tokenizer (when given) the manifest's, every chunk
    whole. One-line errors naming data.path (data.tokenizer for another tokenizer); nothing is modified."""
    manifest = load_manifest(path)
    check_tokenizer(manifest, tokenizer, path)
    root = Path(path).expanduser()
    for split in ("train", "val"):
        for c in manifest["splits"][split]["chunks"]:
            f = root / c["file"]
            if not f.is_file():
                raise FileNotFoundError(f"data.path={path}: shard {f} is missing; re-run scripts/prepare_data.py")
            if f.stat().st_size != c["bytes"]:
                raise ValueError(f"data.path={path}: shard {f} is truncated ({f.stat().st_size} bytes, the manifest "
                                 f"says {c['bytes']}); prepare it again")
            if verify == "checksum" and _checksum(f) != c["sha256"]:
                raise ValueError(f"data.path={path}: shard {f} is corrupt (checksum differs from the manifest); "
                                 f"prepare it again")
    return manifest


# ------------------------------------------------------------------------------------ DataModule
class _Batches:
    """The StreamingDataLoader as (x, y) int64 batches; remembers the loader's state after each batch, so that the
    DataModule can save the state after exactly the batches training consumed (Lightning prefetches one)."""

    def __init__(self, loader, keep: int = 64) -> None:
        self.loader = loader
        self.states: deque = deque(maxlen=keep)  # (batches yielded since start, loader state)
        self.yielded = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            self.yielded += 1
            self.states.append((self.yielded, self.loader.state_dict()))
            batch = batch.long()
            yield batch[:, :-1].contiguous(), batch[:, 1:].contiguous()

    def state_after(self, batches: int) -> dict | None:
        for n, state in self.states:
            if n == batches:
                return state
        return None


class _ValWindows(Dataset):
    """Evenly spaced TokensLoader windows of the val split (the same at every evaluation); rank takes every
    processes-th, so the processes together evaluate what one process does."""

    def __init__(self, ds, count: int, rank: int = 0, processes: int = 1) -> None:
        self.ds = ds
        count = min(count, len(ds))
        self.index = np.linspace(0, len(ds) - 1, num=count).astype(np.int64)[rank::processes]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, j: int):
        chunk = torch.as_tensor(np.asarray(self.ds[int(self.index[j])]).astype(np.int64))
        return chunk[:-1], chunk[1:]


class ShardDataModule(L.LightningDataModule):
    """Prepared token shards (scripts/prepare_data.py) streamed with litdata; see the module docstring."""

    def __init__(self, path: str | None = None, tokenizer: str | None = None, block_size: int = 256,
                 batch_size: int = 16, val_batches: int = 4, cache_dir: str = "~/.cache/mugpt",
                 num_workers: int = 0, seed: int = 1337, shuffle: bool = True, verify: str = "checksum") -> None:
        super().__init__()
        if not path:
            raise ValueError("data.path is required for data=shards (a folder made by scripts/prepare_data.py)")
        if verify not in ("checksum", "size"):
            raise ValueError(f"data.verify={verify}: choose checksum or size")
        for key, value in (("batch_size", batch_size), ("block_size", block_size), ("val_batches", val_batches)):
            if value <= 0:
                raise ValueError(f"data.{key} must be positive, got {value}")
        if tokenizer:
            get_tokenizer(tokenizer)  # an unknown name is refused as such, before any folder is looked at
        self.path, self.block_size, self.batch_size, self.val_batches = str(path), block_size, batch_size, val_batches
        self.cache_root = Path(cache_dir).expanduser()
        # The vocabulary sizes the model (and the memory check) before setup(), so the manifest is read now: a
        # missing one, or another tokenizer than the shards were made with, is refused here. A bucket's manifest
        # is fetched only when there is no data.tokenizer to go by (its chunks are litdata's to check).
        if tokenizer and is_url(self.path):
            self.tokenizer = get_tokenizer(tokenizer)
        else:
            manifest = remote_manifest(self.path, cache_dir) if is_url(self.path) else load_manifest(self.path)
            self.tokenizer = get_tokenizer(check_tokenizer(manifest, tokenizer, self.path))
        self.num_workers, self.seed, self.shuffle, self.verify = num_workers, seed, shuffle, verify
        self.manifest: dict | None = None
        self._resume_state: dict | None = None
        self._batches: _Batches | None = None

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def _input(self, split: str) -> str:
        return f"{self.path.rstrip('/')}/{split}" if is_url(self.path) else str(Path(self.path).expanduser() / split)

    def setup(self, stage: str | None = None) -> None:
        if self.manifest is not None:
            return
        if is_url(self.path):  # litdata reads the bucket; the manifest's checks apply to local folders
            self.manifest = {"splits": {}}
            return
        self.manifest = read_manifest(self.path, self.tokenizer.name, self.verify)
        window = self.block_size + 1
        for split in ("train", "val"):
            if self.manifest["chunk_tokens"] < window or self.manifest["splits"][split]["tokens"] < window:
                raise ValueError(f"model.block_size={self.block_size}: larger than the {split} split "
                                 f"({self.manifest['splits'][split]['tokens']} tokens) or a chunk "
                                 f"({self.manifest['chunk_tokens']} tokens) of data.path={self.path}")

    def _dataset(self, split: str, shuffle: bool):
        from litdata import StreamingDataset
        from litdata.streaming.item_loader import TokensLoader

        cache = str(self.cache_root / "litdata" / hashlib.sha256(self._input(split).encode()).hexdigest()[:16])
        kwargs = {"cache_dir": cache} if is_url(self.path) else {}
        return StreamingDataset(self._input(split), item_loader=TokensLoader(block_size=self.block_size + 1),
                                shuffle=shuffle, drop_last=True, seed=self.seed, **kwargs)

    def _shard(self) -> dict:
        trainer = self.trainer
        return {"rank": trainer.global_rank, "processes": trainer.world_size} if trainer else {}

    def train_dataloader(self):
        from litdata import StreamingDataLoader

        loader = StreamingDataLoader(self._dataset("train", self.shuffle), batch_size=self.batch_size,
                                     num_workers=self.num_workers, drop_last=True,
                                     pin_memory=torch.cuda.is_available())
        if self._resume_state is not None:
            loader.load_state_dict(self._resume_state["loader"])
        self._batches = _Batches(loader)
        self._batches.yielded = self._resume_state["batches"] if self._resume_state else 0
        return self._batches

    def val_dataloader(self) -> DataLoader:
        shard = self._shard()
        count = self.val_batches * self.batch_size * shard.get("processes", 1)
        return DataLoader(_ValWindows(self._dataset("val", False), count, **shard), batch_size=self.batch_size,
                          shuffle=False, drop_last=True, num_workers=0)

    # --------------------------------------------------------------- resume
    def state_dict(self) -> dict:
        trainer = self.trainer
        if trainer is None or self._batches is None:
            return dict(self._resume_state or {})
        consumed = trainer.global_step * trainer.accumulate_grad_batches
        state = self._batches.state_after(consumed)
        if state is None:
            if consumed == (self._resume_state or {}).get("batches"):
                return dict(self._resume_state)
            raise RuntimeError(f"data=shards: no loader state after batch {consumed} "
                               f"(have {[n for n, _ in self._batches.states][-3:]})")
        return {"batches": consumed, "loader": state}

    def load_state_dict(self, state: dict) -> None:
        self._resume_state = dict(state) if state.get("loader") else None
