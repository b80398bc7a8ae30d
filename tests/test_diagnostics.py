"""diagnostics=on: loss by token-frequency bucket, activation and update norms (mugpt.training.diagnostics)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from mugpt.core.model import GPT, GPTConfig
from mugpt.training.diagnostics import (
    Diagnostics,
    UpdateNorms,
    bucket_loss_sums,
    build_diagnostics,
    frequency_buckets,
    token_counts,
    weight_matrices,
)
from mugpt.training.module import GPTLightningModule
from mugpt.training.probe import probed_modules
from mugpt.training.train import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def metrics_rows(cfg) -> list[dict[str, str]]:
    return list(csv.DictReader(next(Path(cfg.output_dir).rglob("metrics.csv")).open()))


def logged(rows: list[dict[str, str]], prefix: str) -> dict[int, dict[str, float]]:
    """{step: {metric: value}} of the metrics whose name starts with prefix."""
    out: dict[int, dict[str, float]] = {}
    for r in rows:
        for k, v in r.items():
            if k.startswith(prefix) and v:
                out.setdefault(int(r["step"]), {})[k] = float(v)
    return out


# ------------------------------------------------------------------------------------------ buckets
def test_frequency_buckets_by_share_of_the_corpus():
    # counts by id: 0→30, 1→6, 2→4, 3→40, 4→0 (never seen), 5→20; 100 tokens
    tokens = np.array([3] * 40 + [0] * 30 + [5] * 20 + [1] * 6 + [2] * 4, dtype=np.uint16)
    np.random.default_rng(0).shuffle(tokens)
    counts = token_counts(tokens, vocab_size=6)
    assert counts.tolist() == [30, 6, 4, 40, 0, 20]
    # sorted 3, 0, 5, 1, 2, 4 with 0, 40, 70, 90, 96, 100 tokens before each: bucket = floor(K * before / 100)
    assert frequency_buckets(counts, 10).tolist() == [4, 9, 9, 0, 9, 7]  # deciles 1-3, 5-6 and 8 stay empty
    assert frequency_buckets(counts, 4).tolist() == [1, 3, 3, 0, 3, 2]
    assert frequency_buckets(counts, 1).tolist() == [0] * 6
    # 12 tokens, 0, 5, 8, 11 before ids 0-3: a token heavier than a bucket (id 0, 5/12 > 1/5) leaves the next empty
    assert frequency_buckets(np.array([5, 3, 3, 1, 0, 0]), 2).tolist() == [0, 0, 1, 1, 1, 1]
    assert frequency_buckets(np.array([5, 3, 3, 1, 0, 0]), 5).tolist() == [0, 2, 3, 4, 4, 4]
    # ties go by token id
    assert frequency_buckets(np.array([0, 2, 2, 2, 2]), 4).tolist() == [3, 0, 1, 2, 3]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        token_counts(np.array([0, 6]), vocab_size=6)


def test_bucket_losses_average_back_to_the_batch_loss():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=16, width=32, n_layer=1, n_head=2))  # padded to 64 columns
    x = torch.randint(0, 50, (3, 16))
    y = torch.randint(0, 50, (3, 16))
    y[0, :3] = -1  # ignored, as in the model's own loss
    buckets = torch.as_tensor(frequency_buckets(np.random.default_rng(1).integers(0, 100, 50), 5))
    with torch.no_grad():
        logits, loss = model(x, y)
    sums, counts = bucket_loss_sums(logits, y, buckets, 5)
    assert counts.sum().item() == (y >= 0).sum().item()
    per_bucket = sums / counts.clamp(min=1)
    assert torch.allclose((per_bucket * counts).sum() / counts.sum(), loss, rtol=1e-5)
    for k in range(5):  # each bucket's loss is the plain mean over its own targets
        mask = (y >= 0) & (buckets[y.clamp(min=0)] == k)
        if mask.any():
            expected = F.cross_entropy(logits[mask].float(), y[mask])
            assert torch.allclose(per_bucket[k], expected, rtol=1e-5)


# -------------------------------------------------------------------------------------- update norms
def test_update_norms_by_hand():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, block_size=8, width=16, n_layer=2, n_head=2))
    assert set(weight_matrices(model)) == {"tok_emb", "pos_emb"} | {
        f"blocks.{i}.{m}" for i in range(2) for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")}
    norms = UpdateNorms(model)
    norms.snapshot()
    w = model.blocks[1].mlp.fc.weight
    before = w.detach().clone()
    delta = torch.randn_like(w) * 1e-2
    with torch.no_grad():
        w += delta
    rel = dict(zip(norms.params, norms.relative().tolist()))
    assert rel["blocks.1.mlp.fc"] == pytest.approx((delta.norm() / before.norm()).item(), rel=1e-5)
    assert all(v == 0.0 for k, v in rel.items() if k != "blocks.1.mlp.fc")
    norms.snapshot()  # the next event measures from here
    assert norms.relative().abs().max().item() == 0.0


# ---------------------------------------------------------------------------------------- training
def test_diagnostics_logged_at_every_nth_step(make_cfg):
    cfg = make_cfg("logger=csv", "diagnostics=on", "diagnostics.every_n_steps=10", "trainer.max_steps=20")
    assert train(cfg)["status"] == "completed"
    rows = metrics_rows(cfg)
    model = GPT(GPTConfig(vocab_size=256, **{k: cfg.model[k] for k in ("width", "n_layer", "n_head")}))
    probed = {f"act/{name}" for name in probed_modules(model)}
    matrices = {f"update/{name}" for name in weight_matrices(model)}
    freq, act, upd = logged(rows, "freq_loss/"), logged(rows, "act/"), logged(rows, "update/")
    train_loss = logged(rows, "train/loss")
    # the batches of steps 10 and 20, in the rows where Lightning logs their train/loss
    assert set(freq) == set(act) == set(upd) == {9, 19} and {9, 19} <= set(train_loss)
    for step in (9, 19):
        assert set(act[step]) == probed and set(upd[step]) == matrices
        # the batch's 256 targets fall in most of the 10 byte-frequency buckets; none may be missing by mistake
        assert len(freq[step]) >= 8 and set(freq[step]) <= {f"freq_loss/bucket_{k}" for k in range(10)}
        for values in (freq[step], act[step], upd[step]):
            assert all(math.isfinite(v) and v > 0 for v in values.values()), values
        # the same batch and weights as the training forward: its loss is an average of the buckets' losses
        loss = train_loss[step]["train/loss"]
        assert min(freq[step].values()) < loss < max(freq[step].values())
    # rare bytes are predicted worse than frequent ones
    assert freq[19]["freq_loss/bucket_0"] < max(freq[19].values())


def test_update_norm_equals_hand_computation(make_cfg):
    """One event, on the batch of step 20: update/<matrix> = ||W_19 - W_0|| / ||W_0||, W_0 rebuilt from the seed and
    W_19 the final checkpoint of a 19-step run (a constant schedule makes its steps those of the longer run)."""
    common = ("logger=csv", "optim.schedule=constant", "diagnostics.token_frequency=false")
    cfg = make_cfg(*common, "diagnostics=on", "diagnostics.every_n_steps=20", "trainer.max_steps=20")
    assert train(cfg)["status"] == "completed"
    rows = metrics_rows(cfg)
    upd = logged(rows, "update/")
    assert set(upd) == set(logged(rows, "act/")) == {19}
    assert not logged(rows, "freq_loss/")
    L.seed_everything(cfg.seed)  # train() builds its module right after this seeding
    initial = GPTLightningModule({**OmegaConf.to_container(cfg.model, resolve=True), "vocab_size": 256},
                                 cfg.parametrization, cfg.optim).model.state_dict()
    cfg19 = make_cfg(*common, "trainer.max_steps=19", "eval_every=19", f"output_dir={cfg.output_dir}_19")
    assert train(cfg19)["status"] == "completed"
    final = torch.load(Path(cfg19.output_dir) / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    for name in ("tok_emb", "blocks.1.mlp.fc"):
        w0, w19 = initial[f"{name}.weight"], final[f"model.{name}.weight"]
        assert not torch.equal(w0, w19)
        assert upd[19][f"update/{name}"] == pytest.approx(((w19 - w0).norm() / w0.norm()).item(), rel=1e-5)


def test_every_step_logs_updates_from_the_second_event(make_cfg):
    cfg = make_cfg("logger=csv", "diagnostics=on", "diagnostics.every_n_steps=1", "trainer.max_steps=3",
                   "eval_every=3")
    assert train(cfg)["status"] == "completed"
    rows = metrics_rows(cfg)
    assert set(logged(rows, "freq_loss/")) == set(logged(rows, "act/")) == {0, 1, 2}
    upd = logged(rows, "update/")
    assert set(upd) == {1, 2}  # nothing has been updated at the first batch
    assert all(v > 0 for values in upd.values() for v in values.values())


def test_diagnostics_off_by_default(make_cfg):
    cfg = make_cfg("logger=csv", "trainer.max_steps=10", "eval_every=10")
    assert cfg.diagnostics.token_frequency is False and cfg.diagnostics.module_norms is False
    assert build_diagnostics(cfg.diagnostics, None) == []  # no callback at all: nothing runs
    assert train(cfg)["status"] == "completed"
    columns = set(metrics_rows(cfg)[0])
    assert "train/loss" in columns
    assert not [c for c in columns if c.startswith(("freq_loss/", "act/", "update/"))]


def test_diagnostics_parts_switch_separately(make_cfg):
    cfg = make_cfg("diagnostics=on", "diagnostics.module_norms=false")

    class Data:
        train_tokens = np.array([1, 1, 2, 3], dtype=np.uint16)
        vocab_size = 256

    (callback,) = build_diagnostics(cfg.diagnostics, Data())
    assert isinstance(callback, Diagnostics) and not callback.module_norms and callback.n_buckets == 10
    with pytest.raises(ValueError, match="every_n_steps"):
        Diagnostics(0)


# ------------------------------------------------------------------------- scripts/loss_by_frequency.py
def study():
    """The study scripts/loss_by_frequency.py runs."""
    import mugpt.studies.loss_by_frequency as module

    return module


def compose_script(*overrides: str):
    """conf/loss_by_frequency.yaml with overrides, as `python scripts/loss_by_frequency.py ...` reads it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        return compose(config_name="loss_by_frequency", overrides=list(overrides))


def test_loss_by_frequency_script_reads_and_plots_module_norms(tmp_path):
    script = study()
    run = tmp_path / "runs" / "sgd" / "csv" / "version_0"
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text("step,act/block0.mlp,update/blocks.0.mlp.fc,train/loss\n"
                                     "4,0.5,0.1,3.0\n9,0.25,,2.5\n9,,0.05,\n")
    rows = script.read_module_norms(tmp_path / "runs" / "sgd")
    assert rows == [{"step": 4, "kind": "act", "name": "block0.mlp", "value": 0.5},
                    {"step": 4, "kind": "update", "name": "blocks.0.mlp.fc", "value": 0.1},
                    {"step": 9, "kind": "act", "name": "block0.mlp", "value": 0.25},
                    {"step": 9, "kind": "update", "name": "blocks.0.mlp.fc", "value": 0.05}]
    script.plot_module_norms({"sgd": rows, "adamw": rows}, tmp_path / "module_norms.png")
    assert (tmp_path / "module_norms.png").stat().st_size > 10_000


def test_loss_by_frequency_options_and_the_runs_they_compose(tmp_path):
    script = study()
    # conf/loss_by_frequency.yaml keeps the defaults the script had as an argparse command
    assert script.read_options(compose_script()) == script.Options(
        steps=200, every=5, buckets=10, width=64, n_layer=2, n_head=2, block_size=64, batch_size=16, sgd_lr=None,
        adamw_lr=None, seed=1337, smooth=5, final_events=5, threads=None, plot_only=False,
        out=Path("results/loss_by_frequency"))
    opts = script.read_options(compose_script("steps=40", "every=4", "buckets=5", "width=32", "adamw_lr=1e-3",
                                              f"out={tmp_path}"))
    cfgs = script.plan_runs(opts)  # composed as src/train.py composes them, and checked
    assert list(cfgs) == ["sgd", "adamw"]
    for name, cfg in cfgs.items():
        assert cfg.optim.name == name and cfg.output_dir == str(tmp_path / "runs" / name)
        assert (cfg.model.width, cfg.trainer.max_steps, cfg.eval_every, cfg.data.tokenizer) == (32, 40, 40, "gpt2")
        assert (cfg.diagnostics.every_n_steps, cfg.diagnostics.token_frequency_buckets) == (4, 5)
        assert cfg.diagnostics.token_frequency and cfg.parametrization.name == "sp"
    assert cfgs["adamw"].optim.lr == 1e-3
    assert cfgs["sgd"].optim.lr == script.compose_run("sgd", script.read_options(compose_script()), tmp_path).optim.lr
    assert not list(tmp_path.iterdir())  # planning writes nothing


@pytest.mark.parametrize("overrides, message", [
    (["steps=0"], "error: steps=0: must be a positive integer"),
    (["steps=1.5"], "error: steps=1.5: must be a positive integer"),
    (["every=300"], "error: every=300: more than steps=200, so nothing would be measured"),
    (["buckets=-1"], "error: buckets=-1: must be a positive integer"),
    (["width=30", "n_head=4"], "error: width=30: not divisible by n_head=4"),
    (["sgd_lr=0"], "error: sgd_lr=0: must be a positive number or null"),
    (["adamw_lr=fast"], "error: adamw_lr=fast: must be a positive number or null"),
    (["threads=0"], "error: threads=0: must be a positive integer or null"),
    (["plot_only=1"], "error: plot_only=1: must be true or false"),
    (["seed=true"], "error: seed=True: must be an integer"),
    (["plot_only=true"], "error: plot_only=true: no sgd run to redraw in out="),
])
def test_loss_by_frequency_refuses_a_bad_option_in_one_line_before_training(overrides, message, tmp_path,
                                                                              monkeypatch):
    script = study()

    def no_training(*args, **kwargs):
        raise AssertionError("a run trained (or its data was built) for a refused option")

    monkeypatch.setattr("mugpt.training.train.train", no_training)
    monkeypatch.setattr(script, "bucket_table", no_training)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        script.loss_by_frequency(compose_script(*overrides, f"out={out}"))
    assert isinstance(exc.value.code, str) and "\n" not in exc.value.code
    assert exc.value.code.startswith(message), exc.value.code
    assert not out.exists()
