"""data=shards: preparation (files, folders, globs, HF streaming, workers, kill and re-run), training from shards,
exact resume after SIGKILL, disjoint data under DDP, and the one-line refusals of bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from conftest import ROOT, run_train_cli
from mugpt.data import prepare_shards, shards
from mugpt.data.prepare_shards import PrepareOptions, prepare, preparing
from mugpt.data.text import shakespeare_text
from mugpt.errors import ConfigError
from mugpt.training.train import train

SMALL = dict(tokenizer="byte", group_chars=40_000, chunk_tokens=20_000, val_fraction=0.02, progress=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """About 300 KB of Shakespeare in 6 files, one in a subfolder."""
    text = shakespeare_text()[:300_000]
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "sub").mkdir()
    for k in range(6):
        where = folder / "sub" if k == 5 else folder
        (where / f"part{k}.txt").write_text(text[k * 50_000:(k + 1) * 50_000])
    return folder


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "corpus"
    prepare(PrepareOptions(input=str(corpus), output=str(out), **SMALL))
    return out


def chunk_digests(manifest: dict) -> list[str]:
    return [c["sha256"] for s in ("train", "val") for c in manifest["splits"][s]["chunks"]]


# ------------------------------------------------------------------------------------- preparation
def test_prepare_writes_litdata_shards_and_a_manifest(prepared, corpus):
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert (manifest["tokenizer"], manifest["vocab_size"], manifest["dtype"]) == ("byte", 256, "uint16")
    n = sum(f.stat().st_size for f in corpus.rglob("*.txt"))
    assert manifest["tokens"] == n  # ASCII bytes; the byte tokenizer has no end-of-text token
    assert manifest["splits"]["train"]["tokens"] + manifest["splits"]["val"]["tokens"] == n
    assert len(manifest["splits"]["train"]["chunks"]) == -(-manifest["splits"]["train"]["tokens"] // 20_000)
    assert (prepared / "train" / "index.json").is_file() and not (prepared / ".prepare").exists()
    from litdata import StreamingDataset
    from litdata.streaming.item_loader import TokensLoader

    ds = StreamingDataset(str(prepared / "train"), item_loader=TokensLoader(block_size=65), shuffle=False)
    first = bytes(np.asarray(ds[0]).astype(np.uint8))
    assert first == sorted(corpus.rglob("*.txt"))[0].read_bytes()[:65]


def test_documents_end_with_the_end_of_text_token(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("Hello world.\n\nSecond paragraph." * 3)
    (tmp_path / "in" / "b.txt").write_text("Another document.")
    m = prepare(PrepareOptions(input=str(tmp_path / "in"), output=str(tmp_path / "out"), val_fraction=0.1,
                               chunk_tokens=1000, progress=False))
    from mugpt.data.text import get_tokenizer
    tok = get_tokenizer("gpt2")
    expected = tok.encode("Hello world.\n\nSecond paragraph." * 3) + [50256] + tok.encode("Another document.") + [50256]
    assert m["tokens"] == len(expected) and m["eot_token"] == 50256


@pytest.mark.slow
def test_files_folder_glob_and_workers_give_identical_shards(corpus, prepared, tmp_path):
    """A folder, its files listed with commas, a recursive glob; 1 and 2 workers: the same chunks."""
    reference = json.loads((prepared / "manifest.json").read_text())
    files = ",".join(str(f) for f in sorted(corpus.rglob("*.txt")))
    for k, (spec, workers) in enumerate([(str(corpus), 2), (files, 1), (f"{corpus}/**/*.txt", 2)]):
        m = prepare(PrepareOptions(input=spec, output=str(tmp_path / f"o{k}"), workers=workers, **SMALL))
        assert chunk_digests(m) == chunk_digests(reference), spec
        assert m["groups"] == reference["groups"]
    m = prepare(PrepareOptions(input=str(corpus), output=str(tmp_path / "o0"), workers=1, **SMALL))
    assert m == json.loads((tmp_path / "o0" / "manifest.json").read_text())  # a finished output: nothing to do


def test_a_preparation_killed_by_an_error_resumes_to_the_same_result(corpus, prepared, tmp_path, monkeypatch):
    """An exception after 3 groups (as a kill would leave it): the re-run keeps those 3 and gives the same shards."""
    real, calls = prepare_shards._tokenize_group, []

    def failing(args):
        calls.append(args[1].index)
        if len(calls) > 3:
            raise KeyboardInterrupt("killed")
        return real(args)

    out = tmp_path / "out"
    monkeypatch.setattr(prepare_shards, "_tokenize_group", failing)
    with pytest.raises(KeyboardInterrupt):
        prepare(PrepareOptions(input=str(corpus), output=str(out), **SMALL))
    assert not (out / "manifest.json").exists() and len(list((out / ".prepare" / "groups").glob("*.npy"))) == 3
    calls.clear()
    monkeypatch.setattr(prepare_shards, "_tokenize_group", lambda args: (calls.append(args[1].index), real(args))[1])
    m = prepare(PrepareOptions(input=str(corpus), output=str(out), **SMALL))
    assert calls[0] == 3  # groups 0-2 were kept
    assert m == json.loads((prepared / "manifest.json").read_text()) | {"identity": m["identity"]}
    assert chunk_digests(m) == chunk_digests(json.loads((prepared / "manifest.json").read_text()))


@pytest.mark.slow
def test_a_preparation_killed_with_sigkill_resumes_to_the_same_result(corpus, prepared, tmp_path):
    out = tmp_path / "out"
    args = [sys.executable, str(ROOT / "scripts" / "prepare_data.py"), f"input={corpus}", f"output={out}",
            *(f"{k}={v}" for k, v in SMALL.items() if k != "progress"), "group_chars=10000", "progress=false"]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while len(list((out / ".prepare" / "groups").glob("*.npy"))) < 4:
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not (out / "manifest.json").exists()
    # training refuses the half-written folder, naming it, as an unfinished preparation
    with pytest.raises(ValueError, match=r"data.path=.*an unfinished preparation .*re-run scripts/prepare_data.py"):
        shards.read_manifest(str(out), "byte", "checksum")
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ref = prepare(PrepareOptions(input=str(corpus), output=str(tmp_path / "whole"), **{**SMALL, "group_chars": 10000}))
    assert json.loads((out / "manifest.json").read_text()) == ref | {"identity": ref["identity"]}


def test_hf_dataset_is_streamed_with_a_token_budget(tmp_path, monkeypatch):
    """A fake `datasets.load_dataset(..., streaming=True)`: rows are read lazily, and the budget stops the stream."""
    import types

    read = []

    def rows():
        for i in range(10_000):
            read.append(i)
            yield {"text": f"Document number {i}. " * 20, "id": i}

    def load_dataset(name, config, split, streaming):
        assert (name, config, split, streaming) == ("org/corpus", "small", "train", True)
        return rows()

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    m = prepare(PrepareOptions(input="hf:org/corpus", output=str(tmp_path / "hf"), hf_config="small", group_chars=5000,
                               max_tokens=20_000, chunk_tokens=4096, val_fraction=0.05, progress=False))
    assert 20_000 <= m["tokens"] < 22_000 and len(read) < 300  # never the whole stream
    assert m["identity"]["source"]["hf"] == "org/corpus"


# ------------------------------------------------------------------------------------------ training
def shard_run(prepared: Path, *extra: str) -> list[str]:
    return ["data=shards", f"data.path={prepared}", "data.tokenizer=byte", *extra]


def test_fast_dev_run_from_shards(make_cfg, prepared):
    summary = train(make_cfg(*shard_run(prepared), "trainer.fast_dev_run=true"))
    assert summary["status"] == "completed" and summary["steps"] == 1


def test_without_a_tokenizer_the_manifests_is_used(make_cfg, prepared):
    """data.tokenizer left null (data=shards' default): the shards' own tokenizer (byte here, not gpt2) sizes the
    model, before anything is read but the manifest."""
    cfg = make_cfg("data=shards", f"data.path={prepared}", "data.tokenizer=null", "trainer.fast_dev_run=true")
    assert cfg.data.tokenizer is None
    datamodule = shards.ShardDataModule(path=str(prepared), block_size=64)
    assert (datamodule.tokenizer.name, datamodule.vocab_size, datamodule.manifest) == ("byte", 256, None)
    summary = train(cfg)
    assert summary["status"] == "completed" and summary["steps"] == 1
    assert (summary["vocab_size"], summary["padded_vocab_size"]) == (256, 256)


def test_conf_data_shards_leaves_the_tokenizer_to_the_manifest(tmp_path, cache_dir):
    from conftest import compose_config
    cfg = compose_config(["data=shards", f"data.path={tmp_path}"], tmp_path / "run", cache_dir)
    assert cfg.data.tokenizer is None


def test_a_run_resumes_with_or_without_the_tokenizer_given(make_cfg, prepared, tmp_path):
    """The tokenizer is not part of a checkpoint's identity, only the vocabulary it gives: a run made with
    data.tokenizer=byte resumes with null (the manifest's byte), and the other way round."""
    first = tmp_path / "first"
    common = ["data=shards", f"data.path={prepared}", "eval_every=2", "checkpoint.every_n_steps=2"]
    summary = train(make_cfg(*common, "data.tokenizer=byte", "trainer.max_steps=2", f"output_dir={first}"))
    assert summary["status"] == "completed" and summary["steps"] == 2
    summary = train(make_cfg(*common, "data.tokenizer=null", "trainer.max_steps=4", f"resume={first}",
                             f"output_dir={tmp_path / 'second'}"))
    assert summary["status"] == "completed" and summary["steps"] == 4 and summary["vocab_size"] == 256
    assert json.loads((first / "summary.json").read_text())["steps"] == 4  # continued in the first run's folder
    summary = train(make_cfg(*common, "data.tokenizer=byte", "trainer.max_steps=6", f"resume={first}",
                             f"output_dir={tmp_path / 'third'}"))
    assert summary["status"] == "completed" and summary["steps"] == 6
    assert json.loads((first / "summary.json").read_text())["steps"] == 6


@pytest.mark.slow
def test_short_run_from_shards_learns_and_is_reproducible(make_cfg, prepared, tmp_path):
    a = train(make_cfg(*shard_run(prepared)))
    b = train(make_cfg(*shard_run(prepared), f"output_dir={tmp_path / 'again'}"))
    assert a["status"] == "completed" and a["steps"] == 20
    assert a["val_loss"] < 5.0  # byte tokens: uniform guessing costs ln 256 = 5.55
    assert a["val_loss"] == b["val_loss"] and a["train_loss"] == b["train_loss"]


RESUME_RUN = ["+experiment=smoke", "data.tokenizer=byte", "model.width=64", "model.block_size=64", "data.batch_size=8",
              "trainer.max_steps=60", "eval_every=60", "optim.warmup_steps=5", "checkpoint.every_n_steps=10",
              "trainer.deterministic=true", "trainer.enable_progress_bar=false", "logger=none", "data.val_batches=2"]


@pytest.mark.slow
def test_killed_shard_run_resumes_to_the_same_final_loss(prepared, tmp_path, cache_dir):
    """SIGKILL mid-run (mid-shard), then resume=auto: the same final losses as a run never killed (fp32, CPU)."""
    env = {**os.environ, "MUGPT_CACHE": str(cache_dir), "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    args = [*RESUME_RUN, *shard_run(prepared)]
    whole = tmp_path / "whole"
    proc = run_train_cli([*args, f"hydra.run.dir={whole}"], tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = json.loads((whole / "summary.json").read_text())

    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.Popen([sys.executable, str(ROOT / "src" / "train.py"), *args], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpts = lambda: list(work.glob("outputs/*/*/checkpoints/last.ckpt"))  # noqa: E731
    deadline = time.time() + 300
    while not ckpts():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    step = torch.load(ckpts()[0], map_location="cpu", weights_only=False)["global_step"]
    assert 10 <= step < 60, step
    time.sleep(1.1)
    proc = run_train_cli([*args, "resume=auto"], work, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = json.loads((ckpts()[0].parent.parent / "summary.json").read_text())
    assert resumed["steps"] == reference["steps"] == 60
    assert resumed["val_loss"] == pytest.approx(reference["val_loss"], abs=1e-6)
    assert resumed["train_loss"] == pytest.approx(reference["train_loss"], abs=1e-6)


class WindowRecorder(L.Callback):
    """Writes every training window this process read to OUT/rank{R}.npy (for the DDP disjointness test)."""

    def __init__(self, out: str) -> None:
        self.out, self.rows = Path(out), []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        x, y = batch
        self.rows.append(torch.cat([x, y[:, -1:]], dim=1).cpu().numpy())

    def on_train_end(self, trainer, pl_module):
        self.out.mkdir(parents=True, exist_ok=True)
        np.save(self.out / f"rank{trainer.global_rank}.npy", np.concatenate(self.rows))


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_processes_read_disjoint_windows(prepared, tmp_path, cache_dir, monkeypatch):
    """Two gloo CPU processes: litdata gives each rank its own chunks, so no window is read twice in an epoch."""
    monkeypatch.setenv("PYTHONPATH", f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    rec = tmp_path / "windows"
    args = ["+experiment=smoke", *shard_run(prepared), "model.block_size=64", "data.batch_size=4",
            "trainer.max_steps=30", "eval_every=30", "logger=none", "trainer.enable_progress_bar=false",
            "checkpoint.every_n_steps=0", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
            "+callbacks.rec._target_=test_shards.WindowRecorder", f"+callbacks.rec.out={rec}",
            f"hydra.run.dir={tmp_path / 'run'}"]
    proc = run_train_cli(args, tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = np.load(rec / "rank0.npy"), np.load(rec / "rank1.npy")
    assert r0.shape == r1.shape == (30 * 4, 65)
    seen0, seen1 = {r.tobytes() for r in r0}, {r.tobytes() for r in r1}
    assert len(seen0) == len(r0) and len(seen1) == len(r1)  # no window twice within a process
    assert not seen0 & seen1  # nor across the processes
    # every window is a TokensLoader window of the train split (offsets multiple of 65 within a chunk)
    from litdata import StreamingDataset
    from litdata.streaming.item_loader import TokensLoader
    ds = StreamingDataset(str(prepared / "train"), item_loader=TokensLoader(block_size=65), shuffle=False)
    all_windows = {np.asarray(ds[i]).astype(np.int64).tobytes() for i in range(len(ds))}
    assert {r.astype(np.int64).tobytes() for r in np.concatenate([r0, r1])} <= all_windows


# ------------------------------------------------------------------------------------------ refusals
def refusal(make_cfg, *overrides) -> str:
    with pytest.raises(ConfigError) as info:
        train(make_cfg(*overrides))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_and_unprepared_paths_are_refused(make_cfg, tmp_path):
    assert "no such folder" in refusal(make_cfg, *shard_run(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    assert f"data.path={tmp_path / 'empty'}: no manifest.json" in refusal(make_cfg, *shard_run(tmp_path / "empty"))
    for path in (tmp_path / "nowhere", tmp_path / "empty"):  # without a tokenizer there is no manifest to read it from
        message = refusal(make_cfg, "data=shards", f"data.path={path}", "data.tokenizer=null")
        assert message.startswith(f"data.path={path}: no ")


@pytest.mark.slow
def test_prepare_refuses_missing_and_empty_input(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"input=.*nowhere: no such file, folder or glob"):
        prepare(PrepareOptions(input=str(tmp_path / "nowhere"), output=str(tmp_path / "o"), progress=False))
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(ValueError, match=r"input=.*e.txt: the input is empty"):
        prepare(PrepareOptions(input=str(tmp_path / "e.txt"), output=str(tmp_path / "o"), progress=False))
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "prepare_data.py"), f"input={tmp_path}/x*",
                           f"output={tmp_path / 'o'}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip() == f"error: input={tmp_path}/x*: no such file, folder or glob"


def test_other_tokenizer_is_refused(make_cfg, prepared):
    message = refusal(make_cfg, *shard_run(prepared), "data.tokenizer=gpt2")
    assert message == (f"data.tokenizer=gpt2: the manifest of data.path={prepared} says tokenizer byte (vocabulary "
                       f"256); leave data.tokenizer null to use it")
    with pytest.raises(ValueError, match="^data.tokenizer: unknown tokenizer 'nope'"):
        shards.ShardDataModule(path=str(prepared), tokenizer="nope")


def test_a_buckets_manifest_names_the_tokenizer(prepared, tmp_path, monkeypatch):
    """data.path=URL without data.tokenizer: the manifest is fetched with litdata's downloader for that URL (a fake
    bucket here, served from the prepared folder); one that cannot be fetched is refused naming data.path."""
    from litdata.streaming import downloader

    class FolderBucket(downloader.Downloader):
        def download_file(self, remote_filepath: str, local_filepath: str) -> None:
            Path(local_filepath).write_bytes((prepared.parent / remote_filepath.removeprefix("bucket://")).read_bytes())

    monkeypatch.setitem(downloader._DOWNLOADERS, "bucket://", FolderBucket)
    url = f"bucket://{prepared.name}"
    datamodule = shards.ShardDataModule(path=url, cache_dir=str(tmp_path / "cache"))
    assert (datamodule.tokenizer.name, datamodule.vocab_size) == ("byte", 256)
    assert not list((tmp_path / "cache" / "litdata").iterdir())  # the fetched copy is not kept
    with pytest.raises(FileNotFoundError, match=r"^data.path=bucket://nowhere: its manifest.json could not be read "
                                                r"\(.*\); give data.tokenizer to train without it$"):
        shards.ShardDataModule(path="bucket://nowhere", cache_dir=str(tmp_path / "cache"))
    # a tokenizer given: nothing is fetched before training (litdata reads the bucket then)
    assert shards.ShardDataModule(path="bucket://nowhere", tokenizer="gpt2").vocab_size == 50257


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "missing"])
def test_damaged_shards_are_refused_and_nothing_is_deleted(make_cfg, prepared, tmp_path, damage):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(prepared, copy)
    shard = copy / "train" / "chunk-0-3.bin"
    data = shard.read_bytes()
    if damage == "truncated":
        shard.write_bytes(data[:-100])
    elif damage == "corrupt":
        shard.write_bytes(data[:500] + bytes([data[500] ^ 1]) + data[501:])
    else:
        shard.unlink()
    before = sorted(p.name for p in copy.rglob("*"))
    message = refusal(make_cfg, *shard_run(copy))
    assert f"data.path={copy}: shard {shard}" in message and damage in message
    assert sorted(p.name for p in copy.rglob("*")) == before


def test_a_folder_being_prepared_is_refused(make_cfg, tmp_path):
    folder = tmp_path / "busy"
    folder.mkdir()
    with preparing(folder):
        message = refusal(make_cfg, *shard_run(folder))
        assert message.endswith(f"data.path={folder}: a preparation is still writing it (pid {os.getpid()})")
        with pytest.raises(RuntimeError, match="another preparation is writing it"):
            (tmp_path / "in.txt").write_text("some text")
            prepare(PrepareOptions(input=str(tmp_path / "in.txt"), output=str(folder), progress=False))
    (folder / ".prepare" / "lock").write_text("999999")  # a dead preparation's marker
    message = refusal(make_cfg, *shard_run(folder))
    assert "an unfinished preparation (its process, pid 999999, is gone): re-run scripts/prepare_data.py" in message
