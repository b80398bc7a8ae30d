"""Read an offline W&B run back: the records of its `.wandb` file, decoded with W&B's own protobuf classes.

W&B writes each run as a `:W&B` header (7 bytes) followed by a LevelDB-style log: 32 KiB blocks of chunks, each
with a 7-byte header (crc32 of type + data, 4 bytes; data length, 2 bytes; type, 1 byte). A record that does
not fit in what is left of a block is split into FIRST, MIDDLE and LAST chunks; one that fits is a FULL chunk;
fewer than 7 bytes left at a block's end are padding. W&B no longer ships a reader of its own.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

FILE_HEADER = 7  # b":W&B", a 2-byte magic number, a 1-byte version
BLOCK = 32 * 1024
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def chunks(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, data) of each chunk, the checksum checked."""
    if data[:4] != b":W&B":
        raise ValueError("not a W&B run file: it lacks the :W&B header")
    pos = FILE_HEADER
    while pos + CHUNK_HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK_HEADER:  # the block's padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + CHUNK_HEADER])
        if kind == 0 and length == 0:  # zeros: the file ends inside this block
            return
        body = data[pos + CHUNK_HEADER:pos + CHUNK_HEADER + length]
        if len(body) < length:  # a run still being written: its last chunk is incomplete
            return
        if zlib.crc32(bytes([kind]) + body) & 0xFFFFFFFF != crc:
            raise ValueError(f"checksum mismatch in the chunk at byte {pos}")
        yield kind, body
        pos += CHUNK_HEADER + length


def records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    """Every record of a `.wandb` file, in the order written."""
    pending = b""
    for kind, body in chunks(Path(path).read_bytes()):
        if kind == FULL:
            pending = body
        elif kind == FIRST:
            pending = body
            continue
        elif kind == MIDDLE:
            pending += body
            continue
        elif kind == LAST:
            pending += body
        else:
            raise ValueError(f"unknown chunk type {kind}")
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        yield record


def _merge(into: dict[str, Any], items: Any) -> dict[str, Any]:
    """Summary, history and config items into `into`: W&B sends a nested value (a table's path, a metric's
    min and last) as its key path in `nested_key`, so they are nested back into dicts."""
    for item in items:
        path = list(item.nested_key) or [item.key]
        place = into
        for key in path[:-1]:
            place = place.setdefault(key, {})
        place[path[-1]] = json.loads(item.value_json)
    return into


@dataclass
class WandbRun:
    """What a test asks of a W&B run: its identity, its final summary, its logged history and its files."""

    path: Path
    run_id: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int | None = None

    @property
    def files(self) -> Path:
        """The folder W&B keeps the run's files in (media, tables, config.yaml), beside the `.wandb` file."""
        return self.path.parent / "files"


def read_run(path: Path, wait: float = 30.0) -> WandbRun:
    """A `.wandb` file's run: the first run record's identity (later ones are updates), the summary updates
    merged in order, one dict per history row, and the exit code. W&B's service writes the file on its own
    after the run has finished: until its exit record is there (at most `wait` seconds), it is read again."""
    deadline = time.monotonic() + wait
    while True:
        run = _read_run(Path(path))
        if run.exit_code is not None or time.monotonic() > deadline:
            return run
        time.sleep(0.2)


def _read_run(path: Path) -> WandbRun:
    run = WandbRun(path)
    seen_run = False
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run" and not seen_run:
            r = record.run
            run.run_id, run.name, run.group, run.job_type = r.run_id, r.display_name, r.run_group, r.job_type
            run.tags = list(r.tags)
            run.config = _merge({}, r.config.update)
            seen_run = True
        elif kind == "summary":
            _merge(run.summary, record.summary.update)
        elif kind == "history":
            run.history.append(_merge({}, record.history.item))
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


def find_runs(root: Path) -> list[WandbRun]:
    """Every offline W&B run under `root`, in the order the runs started."""
    runs = (read_run(p) for p in Path(root).rglob("offline-run-*/run-*.wandb"))
    return sorted(runs, key=lambda r: r.path.parent.name)
