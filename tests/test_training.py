"""The training path end to end: configs composed as src/train.py composes them, Lightning underneath."""

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import CONF_DIR, TINY, run_if, run_train_cli
from mugpt.config import register_configs
from mugpt.errors import ConfigError
from mugpt.training import train as training
from mugpt.training.module import GPTLightningModule
from mugpt.training.train import build_datamodule, train

ROOT = Path(__file__).resolve().parents[1]


def read_summary(cfg) -> dict:
    return json.loads((Path(cfg.output_dir) / "summary.json").read_text())


def test_fast_dev_run_trains_one_step(make_cfg):
    cfg = make_cfg("trainer.fast_dev_run=true")
    summary = train(cfg)
    assert summary["status"] == "completed"
    assert summary["steps"] == 1
    assert summary["tokens"] == 8 * 32
    assert read_summary(cfg)["status"] == "completed"


@pytest.mark.parametrize("parametrization", ["sp", "mup"])
def test_short_run_learns_and_writes_summary(make_cfg, parametrization):
    cfg = make_cfg(f"parametrization={parametrization}",
                   "parametrization.base_width=32" if parametrization == "mup" else "seed=1337",
                   "trainer.max_steps=40", "eval_every=40", "optim.lr=1e-2")
    summary = train(cfg)
    on_disk = read_summary(cfg)
    for key in ("status", "train_loss", "val_loss", "steps", "tokens", "tokens_per_sec", "params", "width",
                "parametrization", "optimizer", "lr", "seed"):
        assert key in on_disk, key
    assert on_disk == json.loads(json.dumps(summary, default=str))
    assert summary["status"] == "completed" and summary["steps"] == 40
    assert summary["parametrization"] == parametrization and summary["width"] == 64
    assert summary["tokens"] == 40 * 8 * 32 and summary["tokens_per_sec"] > 0
    # byte-level Shakespeare: uniform guessing costs ln(256) = 5.55 nats; 40 steps get well below
    assert summary["val_loss"] < math.log(256) - 2.0
    assert summary["val_ppl"] == pytest.approx(math.exp(summary["val_loss"]), rel=1e-6)
    assert (Path(cfg.output_dir) / "config.yaml").read_text().count("parametrization") >= 1


@pytest.mark.slow  # GPT-2's tokenizer and data; the same claim on the model, fast: test_model.py
def test_loss_at_initialisation_is_log_vocab(make_cfg):
    """Before training, the model predicts every token as about equally likely."""
    cfg = make_cfg("data.tokenizer=gpt2", "model.block_size=64")
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    module = GPTLightningModule({**cfg.model, "vocab_size": dm.vocab_size}, cfg.parametrization, cfg.optim)
    x, y = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        _, loss = module(x, y)
    assert loss.item() == pytest.approx(math.log(50304), abs=0.1)


def test_divergence_is_recorded_not_raised(make_cfg):
    """Losses are read back once per log window (10 steps): the first bad step is named, training stops there."""
    cfg = make_cfg("max_loss=1.0", "trainer.max_steps=40", "eval_every=40")
    summary = train(cfg)
    assert summary["status"] == "diverged"
    assert summary["steps"] == 10
    assert summary["diverged_reason"].startswith("train loss 5.")
    assert "at step 1 (bound 1.0)" in summary["diverged_reason"]


@pytest.mark.parametrize(
    "override, match",
    [
        ("model.width=65", "model.width=65 is not divisible by model.n_head=2"),
        ("data.tokenizer=sentencepiece", "data.tokenizer"),
        ("precision=16-mixed", "precision=16-mixed"),
        ("optim.warmup_fraction=2", "optim.warmup_fraction must be in"),
        ("optim.weight_decay_timescale=-1", "optim.weight_decay_timescale must be positive"),
    ],
)
def test_bad_input_fails_before_training(make_cfg, override, match):
    cfg = make_cfg(override)
    with pytest.raises(ConfigError, match=match):
        train(cfg)
    summary = read_summary(cfg)
    assert summary["status"] == "failed" and "steps" not in summary
    assert match.split("=")[0] in summary["error"]


def test_block_size_larger_than_the_data_is_rejected(make_cfg, tmp_path):
    corpus = tmp_path / "short.txt"
    corpus.write_text("To be, or not to be: that is the question.\n" * 20)  # 860 bytes: ~86 val tokens
    cfg = make_cfg("data=text", f"data.path={corpus}", "model.block_size=128")
    with pytest.raises(ValueError, match="model.block_size=128 is larger than the val split"):
        train(cfg)
    assert read_summary(cfg)["status"] == "failed"


def test_missing_data_path_is_named(make_cfg, tmp_path):
    missing = tmp_path / "no_such_corpus.txt"
    cfg = make_cfg("data=text", f"data.path={missing}")
    with pytest.raises(FileNotFoundError, match="no_such_corpus.txt") as err:
        train(cfg)
    assert isinstance(err.value, ConfigError)  # refused input, and still the FileNotFoundError it was
    assert read_summary(cfg)["status"] == "failed"


def test_empty_corpus_is_rejected(make_cfg, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    cfg = make_cfg("data=text", f"data.path={empty}")
    with pytest.raises(ValueError, match="empty"):
        train(cfg)


@pytest.mark.slow
def test_cli_refuses_bad_input_in_one_line_and_leaves_no_folder(tmp_path, cache_dir):
    """A refused option or path: exit status 1, one line that names it, no traceback, and no run folder (the
    launch is checked before Hydra makes one). A sweep with a refused job is refused whole, before any job."""
    for args, message in [(["model.width=130", "model.n_head=4"],
                           "error: model.width=130 is not divisible by model.n_head=4"),
                          (["data=text", f"data.path={tmp_path / 'nowhere.txt'}"], "nowhere.txt"),
                          (["+callbacks=lr_monitor"], "error: callbacks.lr_monitor: LearningRateMonitor needs a")]:
        out = tmp_path / "refused"
        proc = run_train_cli([*args, "logger=none", f"hydra.run.dir={out}"], tmp_path, cache_dir)
        assert proc.returncode == 1
        assert message in proc.stderr.strip().splitlines()[-1] and "Traceback" not in proc.stderr
        assert not out.exists()
    sweep = tmp_path / "sweep"
    proc = run_train_cli(["-m", *TINY, "trainer.max_steps=2", "model.width=64,65", "logger=none",
                          f"hydra.sweep.dir={sweep}"], tmp_path, cache_dir)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: job 2 of 2 (")
    assert "model.width=65 is not divisible by model.n_head=2" in proc.stderr and not sweep.exists()


@pytest.mark.slow
def test_cli_run_from_the_issue(tmp_path, cache_dir):
    """`python src/train.py trainer.max_steps=30 model.width=64 model.n_layer=2 model.n_head=2 logger=none
    hydra.run.dir=DIR`"""
    out = tmp_path / "run"
    proc = run_train_cli(["trainer.max_steps=30", "model.width=64", "model.n_layer=2", "model.n_head=2",
                          "model.block_size=64",
                     "logger=none", f"hydra.run.dir={out}", "trainer.enable_progress_bar=false", "precision=32"],
                    tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 30
    assert summary["val_loss"] < math.log(50257) - 2.0


@pytest.mark.slow
def test_multirun_gives_one_run_per_width(tmp_path, cache_dir):
    """The mission's sweep: one output directory, one summary.json and one W&B run per width."""
    sweep = tmp_path / "sweep"
    proc = run_train_cli(["-m", "model.width=32,64", "optim=adamw", "model=tiny", "data.tokenizer=byte",
                     "trainer.max_steps=3", "eval_every=3", "optim.warmup_steps=1", "data.val_batches=1",
                     f"hydra.sweep.dir={sweep}", "trainer.enable_progress_bar=false", "logger=wandb"],
                    tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]
    assert [s["width"] for s in summaries] == [32, 64]
    assert [s["status"] for s in summaries] == ["completed", "completed"], [s.get("error") for s in summaries]
    runs = [p for p in sweep.glob("*/wandb/offline-run-*") if p.is_dir()]
    assert len(runs) == 2 and runs[0].parent.parent != runs[1].parent.parent


@pytest.mark.parametrize("option", ["model.norm=post", "model.tie_embeddings=false", "precision=bf16-mixed",
                                    "precision=tf32", pytest.param("compile=default", marks=pytest.mark.slow),
                                    "model.dropout=0.1"])
def test_mup_trains_with_every_option(make_cfg, option):
    """µP composes with the rest of the config: a few steps with each option, the loss going down."""
    cfg = make_cfg("parametrization=mup", "parametrization.base_width=32", option, "trainer.max_steps=8",
                   "eval_every=8", "optim.lr=1e-2")
    summary = train(cfg)
    assert summary["status"] == "completed" and summary["steps"] == 8
    assert summary["val_loss"] < math.log(256) - 0.5


def _weights_after(cfg) -> dict:
    train(cfg)
    return torch.load(Path(cfg.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=False)["state_dict"]


def test_accumulated_micro_batches_equal_one_big_batch(make_cfg, tmp_path):
    """grad_accum=tokens: 4 micro-batches of 4 sequences give the parameters one batch of 16 gives."""
    common = ["trainer.max_steps=2", "eval_every=2", "optim.warmup_steps=0", "optim=adamw", "optim.grad_clip=null"]
    big = _weights_after(make_cfg(*common, "data.batch_size=16"))
    cfg = make_cfg(*common, "data.batch_size=4", "grad_accum=tokens", "grad_accum.batch_tokens=512")
    small = _weights_after(cfg)
    assert read_summary(cfg)["accumulate_grad_batches"] == 4 and read_summary(cfg)["tokens"] == 2 * 512
    for name in big:
        torch.testing.assert_close(small[name], big[name], rtol=1e-4, atol=1e-5)
    moved = (big["model.blocks.0.mlp.fc.weight"] - _weights_after(make_cfg(*common, "trainer.max_steps=1",
                                                                            "data.batch_size=16"))["model.blocks.0.mlp.fc.weight"])
    assert moved.abs().max() > 1e-3  # the comparison is not vacuous: a step moves the weights by ~lr


def test_accumulation_that_does_not_divide_is_refused(make_cfg):
    cfg = make_cfg("grad_accum=tokens", "grad_accum.batch_tokens=1000")
    with pytest.raises(ValueError, match=r"grad_accum.batch_tokens=1000 is not a positive multiple .* = 256"):
        train(cfg)
    assert "steps" not in read_summary(cfg)


def test_activation_checkpointing_trains_identically_and_reports_memory(make_cfg, tmp_path):
    common = ["trainer.max_steps=3", "eval_every=3", "optim.warmup_steps=0"]
    plain = make_cfg(*common)
    plain_weights, a = _weights_after(plain), read_summary(plain)
    ckpt = make_cfg(*common, "activation_checkpointing=blocks")
    assert ckpt.model.activation_checkpointing is True
    ckpt_weights, b = _weights_after(ckpt), read_summary(ckpt)
    for name in plain_weights:
        torch.testing.assert_close(ckpt_weights[name], plain_weights[name], rtol=1e-5, atol=1e-6)
    assert b["memory_estimate_mb"] < a["memory_estimate_mb"]  # activations: one block input per layer
    assert a["peak_memory_mb"] > 0


def _global_norm(tensors: dict) -> float:
    return float(torch.linalg.vector_norm(torch.stack([t.float().norm() for t in tensors.values()])))


def test_grad_clip_bounds_the_first_sgd_step(make_cfg):
    """optim.grad_clip is applied by the module: SGD's first step (Nesterov: 1.9·lr·g) has norm 1.9·lr·clip."""
    common = ["optim=sgd", "optim.lr=0.25", "optim.warmup_steps=0", "optim.schedule=constant", "trainer.max_steps=1",
              "eval_every=1"]
    start = _weights_after(make_cfg(*common, "optim.lr=1e-12"))  # lr must be > 0: a step of ~1e-11
    clip = 1e-3
    clipped = _weights_after(make_cfg(*common, f"optim.grad_clip={clip}"))
    free = _weights_after(make_cfg(*common, "optim.grad_clip=null"))
    step = {k: clipped[k] - start[k] for k in start if "lm_head" not in k}  # the readout is tied to wte
    assert _global_norm(step) == pytest.approx(1.9 * 0.25 * clip, rel=1e-3)
    assert _global_norm({k: free[k] - start[k] for k in step}) > 100 * 1.9 * 0.25 * clip  # the clip did bind


def test_fused_adamw_clips_under_mixed_precision(make_cfg):
    """Fused AdamW (the CUDA default) with clipping under autocast: Lightning's own clipping refuses this pair."""
    cfg = make_cfg("precision=bf16-mixed", "optim.fused=true", "optim.grad_clip=0.5", "trainer.max_steps=3",
                   "eval_every=3")
    summary = train(cfg)
    assert summary["status"] == "completed" and summary["steps"] == 3
    assert summary["val_loss"] < math.log(256)


def test_lightning_gradient_clip_val_is_refused(make_cfg):
    with pytest.raises(ValueError, match=r"trainer.gradient_clip_val: set optim.grad_clip instead"):
        train(make_cfg("trainer.gradient_clip_val=1.0"))


@pytest.mark.parametrize("compile_mode", [None, "default"])
def test_checkpoint_holds_each_parameter_once_under_its_plain_name(compile_mode):
    model_cfg = {"vocab_size": 256, "block_size": 32, "width": 64, "n_layer": 2, "n_head": 2}
    module = GPTLightningModule(model_cfg, {"name": "sp"}, {"name": "adamw", "lr": 1e-3, "weight_decay": 0.1},
                                compile_mode=compile_mode)
    assert set(module.state_dict()) == {f"model.{k}" for k in module.model.state_dict()}


def test_throughput_and_lr_are_logged_once_per_log_window(make_cfg):
    """tokens/s is measured over windows of log_every_n_steps steps (one device sync each), lr on logging steps."""
    import csv

    cfg = make_cfg("logger=csv", "trainer.max_steps=25", "eval_every=25", "trainer.log_every_n_steps=10")
    summary = train(cfg)
    rows = list(csv.DictReader(next(Path(cfg.output_dir).rglob("metrics.csv")).open()))
    steps_with = lambda key: [int(r["step"]) for r in rows if r.get(key)]  # noqa: E731
    assert steps_with("perf/tokens_per_sec") == [9, 19]
    assert steps_with("train/lr") == [9, 19]
    assert steps_with("train/loss") == [9, 19]
    assert [float(r["val/loss"]) for r in rows if r.get("val/loss")][-1] == pytest.approx(summary["val_loss"], rel=1e-5)
    assert summary["tokens_per_sec"] > 0


NEEDS_CUDA = run_if(cuda=True, reason="fp16 autocast with a GradScaler")


@pytest.mark.parametrize("option", ["precision=32-true", "precision=tf32", "precision=bf16-mixed",
                                    "precision=bf16-true",
                                    pytest.param("precision=16-mixed", marks=NEEDS_CUDA),
                                    pytest.param("compile=max-autotune", marks=pytest.mark.slow),
                                    "activation_checkpointing=blocks", "grad_accum=tokens"])
def test_every_efficiency_option_trains(make_cfg, option):
    """Each precision/compile/checkpointing/accumulation option: 4 optimizer steps, the loss going down."""
    extra = ["grad_accum.batch_tokens=512"] if option == "grad_accum=tokens" else []
    cfg = make_cfg(option, *extra, "trainer.max_steps=4", "eval_every=4", "optim.warmup_steps=0", "optim.lr=1e-2")
    summary = train(cfg)
    assert summary["status"] == "completed" and summary["steps"] == 4
    assert summary["val_loss"] < math.log(256) - 0.3, summary["val_loss"]
    if option == "grad_accum=tokens":
        assert summary["accumulate_grad_batches"] == 2 and summary["tokens"] == 4 * 512


def test_loggers_combine_as_a_list(make_cfg):
    """logger=[csv,tensorboard]: both write the same run's metrics into its directory."""
    pytest.importorskip("tensorboard",
                        reason="logger=tensorboard needs the tensorboard package (pip install -e '.[tb]')")
    import csv

    cfg = make_cfg("logger=[csv,tensorboard]", "trainer.max_steps=10", "eval_every=10")
    assert sorted(cfg.logger) == ["csv", "tensorboard"]
    summary = train(cfg)
    out = Path(cfg.output_dir)
    rows = list(csv.DictReader(next(out.rglob("metrics.csv")).open()))
    assert [float(r["val/loss"]) for r in rows if r.get("val/loss")] == [pytest.approx(summary["val_loss"], rel=1e-5)]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next(out.rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert events.Scalars("val/loss")[-1].value == pytest.approx(summary["val_loss"], rel=1e-5)
    assert [e.step for e in events.Scalars("train/loss")] == [9]


def test_a_missing_logger_package_is_named_before_training(make_cfg, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("tensorboard", "tensorboardX") else real(name, *a))
    cfg = make_cfg("logger=tensorboard")
    with pytest.raises(ValueError, match=r"^logger=tensorboard: needs the tensorboard package"):
        train(cfg)
    assert "steps" not in read_summary(cfg)


@pytest.mark.slow
def test_script_figures_are_published_to_wandb_offline(tmp_path, monkeypatch):
    """The coordinate check and the µTransfer report log their PNG as a W&B image and CSVs as W&B tables."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mugpt.training.loggers import publish_to_wandb

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    png, table = tmp_path / "coord_check.png", tmp_path / "coord_check_slopes.csv"
    plt.plot([1, 2], [3, 4])
    plt.savefig(png)
    plt.close()
    table.write_text("parametrization,slope\nsp,1.5\nmup,0.01\n")
    local = publish_to_wandb("coord_check", tmp_path, [png], [table], {"widths": [64, 128]})
    assert local.name.startswith("offline-run-") and local.parent.parent == tmp_path
    images = list(local.rglob("media/images/coord_check_*.png"))
    assert len(images) == 1 and images[0].read_bytes() == png.read_bytes()
    tables = list(local.rglob("media/table/coord_check_slopes_*.table.json"))
    assert len(tables) == 1
    assert json.loads(tables[0].read_text())["data"] == [["sp", "1.5"], ["mup", "0.01"]]


def test_a_checkpoint_between_log_windows_never_holds_diverged_weights(make_cfg):
    """The guard reads losses back once per 10-step window, but a checkpoint due at step 5 makes it check first:
    the run diverged at step 1, so nothing after it is saved."""
    cfg = make_cfg("max_loss=1.0", "trainer.max_steps=40", "eval_every=40", "checkpoint.every_n_steps=5")
    summary = train(cfg)
    assert summary["status"] == "diverged" and "at step 1 " in summary["diverged_reason"]
    assert summary["steps"] == 5  # stopped where the early check found it, not at the window's end
    assert not (Path(cfg.output_dir) / "checkpoints" / "last.ckpt").exists()


def _trainer_of(monkeypatch) -> list:
    """Record the Trainer train() builds (build_trainer is looked up at call time)."""
    built = []
    real = training.build_trainer
    monkeypatch.setattr(training, "build_trainer", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    return built


def test_callbacks_group_adds_a_learning_rate_monitor(make_cfg, monkeypatch):
    """+callbacks=lr_monitor: a LearningRateMonitor on the Trainer, logging each parameter group's lr every
    log window; the project's own callbacks are still there."""
    import csv

    built = _trainer_of(monkeypatch)
    cfg = make_cfg("+callbacks=lr_monitor", "logger=csv", "trainer.max_steps=4", "eval_every=4",
                   "trainer.log_every_n_steps=2")
    assert cfg.callbacks.lr_monitor.logging_interval == "step"
    summary = train(cfg)
    assert summary["status"] == "completed" and summary["steps"] == 4
    names = [type(cb).__name__ for cb in built[0].callbacks]
    assert names.count("LearningRateMonitor") == 1
    assert {"Throughput", "DivergenceGuard", "PreemptionCheckpoint", "MemoryReport", "RunCheckpoint"} <= set(names)
    rows = list(csv.DictReader(next(Path(cfg.output_dir).rglob("metrics.csv")).open()))
    lr_columns = [k for k in rows[0] if k.startswith("lr-")]
    assert lr_columns, list(rows[0])
    assert [int(r["step"]) for r in rows if r.get(lr_columns[0])] == [1, 3]
    assert all(float(r[lr_columns[0]]) > 0 for r in rows if r.get(lr_columns[0]))


def test_callbacks_add_up_and_early_stopping_stops_the_run(make_cfg, monkeypatch):
    """+callbacks=[lr_monitor,early_stopping]: both added. No improvement by 100 nats after the first
    validation, patience 1: the run stops at the second validation (step 4 of 20) and says completed."""
    built = _trainer_of(monkeypatch)
    cfg = make_cfg("+callbacks=[lr_monitor,early_stopping]", "callbacks.early_stopping.patience=1",
                   "callbacks.early_stopping.min_delta=100", "logger=csv", "trainer.max_steps=20", "eval_every=2")
    assert sorted(cfg.callbacks) == ["early_stopping", "lr_monitor"]
    summary = train(cfg)
    names = [type(cb).__name__ for cb in built[0].callbacks]
    assert "LearningRateMonitor" in names and "EarlyStopping" in names
    assert summary["status"] == "completed" and summary["steps"] == 4


def test_default_callbacks_group_adds_nothing(make_cfg):
    cfg = make_cfg()
    assert dict(cfg.callbacks) == {}
    assert training.callback_configs(cfg) == {}


@pytest.mark.parametrize("overrides, match", [
    (["+callbacks=lr_monitor", "logger=none"],
     r"^callbacks.lr_monitor: LearningRateMonitor needs a logger, and logger=none has none"),
    (["+callbacks.bad._target_=no.such.Callback"], r"^callbacks.bad: cannot import _target_=no.such.Callback"),
    (["+callbacks.bad._target_=torch.nn.Linear"], r"^callbacks.bad: _target_=torch.nn.Linear is not a Lightning"),
    (["+callbacks.bad.patience=3"], r"^callbacks.bad: needs a _target_"),
])
def test_a_callback_that_cannot_work_is_refused_before_training(make_cfg, overrides, match):
    cfg = make_cfg(*overrides)
    with pytest.raises(ConfigError, match=match):
        train(cfg)
    summary = read_summary(cfg)
    assert summary["status"] == "failed" and "steps" not in summary and "callbacks." in summary["error"]


@pytest.mark.parametrize("override, option", [
    ("+trainer.val_check_interval=5", "eval_every"),
    ("+trainer.precision=16", "precision=NAME"),
    ("+trainer.enable_checkpointing=false", "checkpoint.every_n_steps"),
    ("+trainer.logger=false", "logger=NAME"),
    ("+trainer.callbacks=[]", r"\+callbacks=NAME"),
    ("+trainer.default_root_dir=/tmp/elsewhere", "output_dir"),
    ("+trainer.plugins=[]", "precision=NAME"),
    ("trainer.gradient_clip_val=1.0", "optim.grad_clip"),
])
def test_trainer_keys_the_project_derives_are_refused(make_cfg, override, option):
    """A trainer.* key train() would overwrite: refused with the project option that sets it."""
    cfg = make_cfg(override)
    key = override.lstrip("+").split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{key}: set {option} instead \("):
        train(cfg)
    summary = read_summary(cfg)
    assert summary["status"] == "failed" and "steps" not in summary and key in summary["error"]


def test_trainer_accumulate_grad_batches_is_read_unless_grad_accum_derives_it(make_cfg):
    summary = train(make_cfg("trainer.accumulate_grad_batches=2", "trainer.max_steps=2", "eval_every=2"))
    assert summary["status"] == "completed" and summary["accumulate_grad_batches"] == 2
    assert summary["tokens"] == 2 * 2 * 8 * 32
    cfg = make_cfg("grad_accum=tokens", "grad_accum.batch_tokens=512", "trainer.accumulate_grad_batches=4")
    with pytest.raises(ConfigError, match=r"^trainer.accumulate_grad_batches=4: grad_accum=tokens derives it"):
        train(cfg)
    # the same directory, relaunched and refused: the first run's summary is kept, the refusal sits beside it
    assert read_summary(cfg)["status"] == "completed"
    refused = json.loads((Path(cfg.output_dir) / "summary.refused.json").read_text())
    assert refused["status"] == "failed" and refused["refused"] is True


def test_trainer_keys_that_are_always_derived_are_not_in_the_trainer_configs():
    from omegaconf import OmegaConf

    for path in (ROOT / "conf" / "trainer").glob("*.yaml"):
        trainer = OmegaConf.load(path)
        assert [k for k in training.DERIVED_TRAINER_KEYS if trainer.get(k) is not None] == [], path.name


def test_an_error_during_training_is_a_failed_run_not_refused_input(make_cfg, monkeypatch):
    """A ValueError from inside fit is no ConfigError: the CLI shows its traceback; summary.json says failed."""
    def boom(self, batch, batch_idx):
        raise ValueError("broken step")

    monkeypatch.setattr(GPTLightningModule, "training_step", boom)
    cfg = make_cfg("trainer.max_steps=2")
    with pytest.raises(ValueError, match="broken step") as err:
        train(cfg)
    assert not isinstance(err.value, ConfigError)
    summary = read_summary(cfg)
    assert summary["status"] == "failed" and summary["error"] == "ValueError: broken step"
    assert "Traceback" in summary["traceback"] and summary["wall_seconds"] >= 0


@pytest.mark.slow
def test_pow2_resolves_once_registered_and_nothing_registers_it_on_import(tmp_path):
    """The mutransfer_lr experiment's `optim.lr: ${pow2:${lr_log2}}` needs the resolver each entry point registers."""
    import subprocess
    import sys

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf
    from omegaconf.errors import UnsupportedInterpolationType

    OmegaConf.clear_resolver("pow2")
    try:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("config", overrides=["+experiment=mutransfer_lr", "lr_log2=-9", f"output_dir={tmp_path}"])
        with pytest.raises(UnsupportedInterpolationType, match="pow2"):
            _ = cfg.optim.lr
        register_configs()
        assert cfg.optim.lr == 2.0 ** -9
        register_configs()  # again: no error, same value
        assert cfg.optim.lr == 2.0 ** -9
    finally:
        register_configs()
        GlobalHydra.instance().clear()
    probe = "import mugpt.training.train; from omegaconf import OmegaConf; print(OmegaConf.has_resolver('pow2'))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "False\n"


def test_pow2_takes_an_exponent_offset_so_a_second_lr_follows_the_swept_one(tmp_path):
    """Muon's AdamW part in a transfer sweep: `optim.adamw_lr='${pow2:${lr_log2},-3}'` stays lr/8 at every lr (quoted:
    Hydra's override grammar reads an unquoted comma as a sweep)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            for lr_log2 in (-7, -4.5):
                cfg = compose("config", overrides=["+experiment=mutransfer_lr", "optim=muon", f"lr_log2={lr_log2}",
                                                   "optim.adamw_lr='${pow2:${lr_log2},-3}'", f"output_dir={tmp_path}"])
                assert cfg.optim.lr == 2.0 ** lr_log2
                assert cfg.optim.adamw_lr == 2.0 ** (lr_log2 - 3)
    finally:
        GlobalHydra.instance().clear()
