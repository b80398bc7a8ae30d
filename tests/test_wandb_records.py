"""The W&B dashboard of this project's runs, read back from the offline `.wandb` files they write (decoded by
tests/wandb_records.py): names, groups, job types, tags, the summary fields that decide a run, and the µTransfer
curves as W&B data."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_script, run_train_cli
from mugpt.errors import ConfigError
from mugpt.training.loggers import NAME_LIMIT, check_loggers, launch_name, load_env, short_name, swept_keys
from mugpt.training.train import train
from wandb_records import WandbRun, find_runs

DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}")
TINY_RUN = ["data.tokenizer=byte", "data.batch_size=8", "trainer.max_steps=3", "eval_every=3", "optim.warmup_steps=1",
            "data.val_batches=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
            "checkpoint.every_n_steps=0"]


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")


def chart_lines(run: WandbRun, key: str) -> set[str]:
    """The lines of a wandb.plot.line_series chart the run logged under `key`: its table file's lineKey column."""
    table = json.loads((run.files / run.summary[f"{key}_table"]["path"]).read_text())
    column = table["columns"].index("lineKey")
    return {row[column] for row in table["data"]}


def table_rows(run: WandbRun, key: str) -> list[dict]:
    table = json.loads((run.files / run.summary[key]["path"]).read_text())
    return [dict(zip(table["columns"], row)) for row in table["data"]]


# ---- names and groups


def test_names_are_the_swept_overrides_abbreviated():
    assert short_name(["model.width=256", "lr_log2=-9", "seed=0"]) == "w256-lr2^-9-s0"
    # a group choice is its value; another key the initials of its last part; a word value is set off by `=`
    assert short_name(["parametrization=mup", "parametrization.output_alpha=128", "model.loss_impl=chunked",
                       "optim.betas=[0.9, 0.95]"]) == "mup-oa128-li=chunked-betas[0.9,0.95]"
    # only the keys asked for, after the role
    assert short_name(["+experiment=mutransfer_lr", "model.width=32", "lr_log2=-8", "seed=0"], {"lr_log2"},
                      prefix="donor") == "donor-lr2^-8"
    assert short_name([], set()) == ""


def test_a_long_name_is_cut_to_the_limit_and_stays_distinct():
    # the seed, last, falls past the cut: the hash of the whole name keeps the five apart
    names = {short_name([*(f"model.layer_{i}_dim=1000000" for i in range(7)), f"seed={j}"]) for j in range(5)}
    assert len(names) == 5 and {len(n) for n in names} == {NAME_LIMIT}
    assert {n[:NAME_LIMIT - 9] for n in names} == {"l0d1000000-l1d1000000-l2d1000000-l3d1000000-l4d1000"}


def test_the_swept_keys_are_read_from_the_sweeps_command_line_and_search_space(tmp_path):
    from omegaconf import OmegaConf

    hc = OmegaConf.create({"sweeper": {"params": None}, "sweep": {"dir": str(tmp_path)}})
    assert swept_keys(hc) is None  # no multirun.yaml, no search space: every override names the job
    OmegaConf.save({"hydra": {"overrides": {"task": ["model.width=32,64", "seed=0", "lr_log2=range(-9,-7)",
                                                     "+experiment=smoke", "parametrization=glob(*)"]}}},
                   tmp_path / "multirun.yaml")
    assert swept_keys(hc) == {"model.width", "lr_log2", "parametrization"}
    hc.sweeper.params = {"optim.lr": "interval(1e-4, 1e-1)"}  # Optuna's search space
    assert swept_keys(hc) == {"model.width", "lr_log2", "parametrization", "optim.lr"}


def test_a_launch_is_named_by_its_date_and_time_wherever_it_lies(tmp_path, monkeypatch):
    assert launch_name("multirun/2026-12-03/17-40-02") == "2026-12-03_17-40-02"
    assert launch_name(tmp_path / "multirun/2026-12-03/17-40-02") == "2026-12-03_17-40-02"
    assert launch_name("outputs/mutransfer/2026-12-03/17-40-02") == "mutransfer_2026-12-03_17-40-02"
    assert launch_name(tmp_path / "outputs/mutransfer/2026-12-03/17-40-02") == "mutransfer_2026-12-03_17-40-02"
    assert launch_name(tmp_path / "my_sweep") == "my_sweep"
    monkeypatch.chdir(tmp_path)
    assert launch_name("sweeps/width") == "sweeps_width"


@pytest.mark.parametrize("override, message", [
    ("logger.wandb.tags=mup", "logger.wandb.tags=mup: give a list of tags of 1 to 64 characters"),
    (f"logger.wandb.tags=[{'x' * 65}]", "logger.wandb.tags=["),
    ("logger.wandb.group=[a,b]", "logger.wandb.group=['a', 'b']: give one text (or null: derived)"),
    ("logger.wandb.job_type={a: 1}", "logger.wandb.job_type={'a': 1}: give one text"),
])
def test_a_bad_wandb_option_is_refused_in_one_line(make_cfg, override, message):
    cfg = make_cfg("logger=wandb", override)
    with pytest.raises(ConfigError) as refused:
        check_loggers(cfg)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


def test_wandb_is_silent_only_offline(monkeypatch):
    monkeypatch.delenv("WANDB_SILENT", raising=False)
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    load_env()
    assert "WANDB_SILENT" not in os.environ  # W&B prints the run's link
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY")
    load_env()
    assert os.environ["WANDB_MODE"] == "offline" and os.environ["WANDB_SILENT"] == "true"


# ---- the summary that decides a run


def test_a_single_run_is_named_typed_and_tagged_and_a_diverged_one_says_so(make_cfg, offline, one_torch_thread):
    cfg = make_cfg("logger=wandb", "parametrization=mup", "max_loss=1.0", "trainer.log_every_n_steps=1",
                   "trainer.max_steps=6", "eval_every=6")
    summary = train(cfg)
    assert summary["status"] == "diverged"
    [run] = find_runs(cfg.output_dir)
    assert run.name == Path(cfg.output_dir).name  # no Hydra: the run's folder names it
    assert (run.job_type, run.group, run.tags) == ("train", "", ["mup", "adamw", "w64", "d2"])
    assert run.summary["status"] == "diverged" and run.summary["diverged_step"] == summary["diverged_step"]
    assert isinstance(summary["diverged_step"], int)
    assert run.summary["diverged_reason"] == summary["diverged_reason"]
    assert run.summary["params"] == summary["params"] and run.summary["tokens_per_sec"] > 0
    assert run.exit_code == 0


def test_a_failed_run_shows_failed_in_wandb(make_cfg, offline, one_torch_thread, monkeypatch):
    from mugpt.training.module import GPTLightningModule

    def breaks(self, batch, batch_idx):
        raise RuntimeError("the data loader lost its file")

    monkeypatch.setattr(GPTLightningModule, "training_step", breaks)
    cfg = make_cfg("logger=wandb", "logger.wandb.name=broken", "logger.wandb.tags=[probe]")
    with pytest.raises(RuntimeError, match="lost its file"):
        train(cfg)
    [run] = find_runs(cfg.output_dir)
    assert (run.name, run.tags) == ("broken", ["probe"])
    assert run.summary["status"] == "failed" and run.exit_code == 1
    assert run.summary["error"] == "RuntimeError: the data loader lost its file"


# ---- what a user launches


@pytest.mark.slow
def test_a_multirun_is_one_group_of_runs_named_by_the_swept_key(tmp_path, cache_dir):
    proc = run_train_cli(["-m", "model.width=32,64", "model=tiny", "lr_log2=-8", "+experiment=mutransfer_lr",
                          *TINY_RUN, "logger=wandb"], tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [sweep] = [p for p in (tmp_path / "multirun").glob("*/*")]
    runs = find_runs(sweep)
    assert sorted(r.name for r in runs) == ["w32", "w64"]  # lr_log2 was not swept: not in the names
    group = f"{sweep.parent.name}_{sweep.name}"
    assert DATE_TIME.fullmatch(group) and {r.group for r in runs} == {group}
    assert {r.job_type for r in runs} == {"train"}
    assert sorted(r.tags for r in runs) == [["sp", "adamw", "w32", "d2"], ["sp", "adamw", "w64", "d2"]]
    for run in runs:
        job = json.loads((run.path.parents[2] / "summary.json").read_text())
        assert run.summary["status"] == job["status"] == "completed"
        assert run.summary["params"] == job["params"] and run.summary["steps"] == 3
        assert run.summary["tokens_per_sec"] == pytest.approx(job["tokens_per_sec"])
        assert run.summary["val/loss"]["min"] == pytest.approx(job["val_loss"])  # the best of one validation
        assert run.exit_code == 0


@pytest.mark.slow
def test_the_pipeline_and_its_report_share_a_group_and_log_the_curves(tmp_path, cache_dir, offline, monkeypatch):
    """scripts/mutransfer.py at its smallest (µP, donor 32 at two learning rates, target 64), then
    scripts/mutransfer_report.py --wandb of its folder."""
    env = {**os.environ, "MUGPT_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1"}
    overrides = "overrides=[" + ",".join(f"'{o}'" for o in TINY_RUN) + "]"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "mutransfer.py"), "donor_width=32",
                           "target_width=64", "parametrizations=[mup]", "search.lr_log2=[-8,-6]",
                           "~search_by_parametrization", "seeds=[0]", overrides], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [out] = list((tmp_path / "outputs" / "mutransfer").glob("*/*"))
    runs = {r.name: r for r in find_runs(out)}
    assert set(runs) == {"donor-lr2^-8", "donor-lr2^-6", "target-lr2^-6", "report"}
    group = f"mutransfer_{out.parent.name}_{out.name}"
    assert DATE_TIME.search(group) and {r.group for r in runs.values()} == {group}
    assert {n: r.job_type for n, r in runs.items()} == {"donor-lr2^-8": "donor", "donor-lr2^-6": "donor",
                                                        "target-lr2^-6": "target", "report": "report"}
    assert all(runs[n].summary["status"] == "completed" for n in runs if n != "report")
    assert runs["target-lr2^-6"].tags == ["mup", "adamw", "w64", "d2"]
    # the figure as data: the report's curves (the donor's at its chosen settings), one line per width
    report = runs["report"]
    assert chart_lines(report, "loss_vs_log2_lr/mup") == {"width 32", "width 64"}
    rows = table_rows(report, "mutransfer_curves")
    assert sorted((r["width"], r["log2_lr"]) for r in rows) == [(32, -8.0), (32, -6.0), (64, -6.0)]
    assert all(r["series"] == "mup" and r["seeds"] == 1 and r["seeds_diverged"] == 0 for r in rows)
    target = next(r for r in rows if r["width"] == 64)
    assert target["loss_mean"] == pytest.approx(runs["target-lr2^-6"].summary["val/loss"]["last"])

    # the report script on the same folder, from another folder: the same group, every run in its curves
    done = run_script("mutransfer_report", str(out), "--out", str(tmp_path / "report"), "--wandb")
    assert done.returncode == 0, done.stderr
    [again] = find_runs(tmp_path / "report")
    assert (again.name, again.group, again.job_type) == (f"report-{group}", group, "report")
    assert chart_lines(again, "loss_vs_log2_lr/mup") == {"width 32", "width 64"}
    assert len(table_rows(again, "mutransfer_curves")) == 3
    assert all(len(r.name) <= NAME_LIMIT for r in [*runs.values(), again])
    assert not math.isnan(target["loss_mean"])
