"""One rule for command lines: the scripts that launch training runs take Hydra's key=value overrides, honour
hydra.run.dir and refuse a bad option in one line (`error: KEY=VALUE: why`, exit 1) before any run trains.

scripts/compare_optimizers.py's study in-process (mugpt.studies.compare_optimizers: its options, the runs they
compose, a tiny comparison end to end), and
both it and scripts/loss_by_frequency.py as a user runs them (subprocesses, `slow`). loss_by_frequency.py's
options in-process are in test_diagnostics.py."""

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import compose_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def compare():
    import mugpt.studies.compare_optimizers as compare

    return compare


# ------------------------------------------------------------------------ compare_optimizers in-process
def test_compare_optimizers_options_keep_the_old_defaults(compare):
    assert compare.read_options(compose_script("compare_optimizers")) == compare.Options(
        optimizers=("adamw", "adam", "sgd", "adagrad", "rmsprop", "adafactor", "adam8bit", "muon"),
        lr_factors=(0.5, 1.0, 2.0), steps=150, eval_every=25, target=2.9, width=64, n_layer=2, n_head=2,
        block_size=64, batch_size=16, val_batches=4, seed=1337, mup=True, threads=1, out=Path("results/optimizers"))


def test_compare_optimizers_plans_every_run_before_training(compare, tmp_path):
    opts = compare.read_options(compose_script("compare_optimizers", "optimizers=[muon,sgd]", "lr_factors=[1,4]",
                                               "steps=60", "width=32", f"out={tmp_path}"))
    runs, skipped = compare.plan_runs(opts)
    assert not skipped and [(r.optimizer, r.lr_factor) for r in runs] == [("muon", 1), ("muon", 4), ("sgd", 1),
                                                                          ("sgd", 4)]
    for run in runs:
        cfg = run.cfg
        default_lr = float(compare.default_optim(run.optimizer).lr)
        assert run.lr == pytest.approx(default_lr * run.lr_factor) and cfg.optim.lr == run.lr
        assert cfg.optim.name == run.optimizer and cfg.output_dir == str(run.output_dir)
        assert run.output_dir == tmp_path / "runs" / f"{run.optimizer}_lr{run.lr:g}"
        assert (cfg.model.width, cfg.trainer.max_steps, cfg.eval_every, cfg.data.tokenizer) == (32, 60, 25, "byte")
        assert cfg.parametrization.name == "mup" and cfg.parametrization.base_width == 32  # µP at its base width
    sp = compare.read_options(compose_script("compare_optimizers", "optimizers=[sgd]", "mup=false"))
    (cfg,) = [r.cfg for r in compare.plan_runs(sp)[0] if r.lr_factor == 1]
    assert cfg.parametrization.name == "sp"
    assert not list(tmp_path.iterdir())  # planning writes nothing


@pytest.mark.parametrize("overrides, message", [
    (["optimizers=[adamw,nope]"], "error: optimizers=[adamw,nope]: unknown optimizer 'nope' (choose from adamw, "),
    (["optimizers=[]"], "error: optimizers=[]: must be a list of strings, e.g. optimizers=[adamw,muon]"),
    (["optimizers=[sgd,sgd]"], "error: optimizers=[sgd,sgd]: sgd listed twice"),
    (["optimizers=sgd"], None),  # one name is a list of one: accepted (the run itself is stopped below)
    (["lr_factors=[0.5,0]"], "error: lr_factors=[0.5,0]: 0 is not a positive number"),
    (["lr_factors=[1,x]"], "error: lr_factors=[1,x]: must be a list of numbers"),
    (["steps=0"], "error: steps=0: must be a positive integer"),
    (["eval_every=-5"], "error: eval_every=-5: must be a positive integer"),
    (["width=65"], "error: width=65: not divisible by n_head=2"),
    (["target=abc"], "error: target=abc: must be a positive number"),
    (["mup=sp"], "error: mup=sp: must be true or false"),
    (["threads=0"], "error: threads=0: must be a positive integer or null"),
    (["out=7"], "error: out=7: must be a string"),
    (["steps=${oops}"], "error: steps: Interpolation key 'oops' not found"),
])
def test_compare_optimizers_refuses_a_bad_option_in_one_line_before_training(compare, overrides, message,
                                                                             tmp_path, monkeypatch):
    class Trained(Exception):
        pass

    def no_training(*args, **kwargs):
        raise Trained

    monkeypatch.setattr("mugpt.training.train.train", no_training)
    out = tmp_path / "out"
    cfg = compose_script("compare_optimizers", f"out={out}", *overrides)
    if message is None:
        with pytest.raises(Trained):
            compare.compare_optimizers(cfg)
        return
    with pytest.raises(SystemExit) as exc:
        compare.compare_optimizers(cfg)
    assert isinstance(exc.value.code, str) and "\n" not in exc.value.code
    assert exc.value.code.startswith(message), exc.value.code
    assert not out.exists()


def test_compare_optimizers_end_to_end_at_a_tiny_size(compare, tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("MUGPT_CACHE", str(cache_dir))
    out = tmp_path / "out"
    table = compare.compare_optimizers(compose_script(
        "compare_optimizers", "optimizers=[adamw,sgd]", "lr_factors=[1,2]", "steps=8", "eval_every=4", "width=32",
        "val_batches=2", "target=5.0", "threads=null", f"out={out}"))
    assert {p.name for p in out.iterdir()} == {"runs", "optimizers.csv", "optimizers_best.csv", "optimizers.md",
                                               "optimizers.png"}
    with open(out / "optimizers.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["optimizer"], float(r["lr_factor"])) for r in rows] == [("adamw", 1), ("adamw", 2), ("sgd", 1),
                                                                       ("sgd", 2)]
    assert all(r["status"] == "completed" and math.isfinite(float(r["val_loss"])) for r in rows)
    with open(out / "optimizers_best.csv", newline="") as f:
        best = {r["optimizer"]: r for r in csv.DictReader(f)}
    assert set(best) == {"adamw", "sgd"}
    for name, b in best.items():
        assert float(b["val_loss"]) == min(float(r["val_loss"]) for r in rows if r["optimizer"] == name)
        assert b["edge"] == "True" and float(b["state_bytes_per_param"]) == {"adamw": 8.0, "sgd": 4.0}[name]
    assert table == (out / "optimizers.md").read_text() and "| adamw |" in table and "| sgd |" in table


# ------------------------------------------------------------------------------- as a user runs them
def run_script(name: str, *overrides: str, cwd: Path, cache: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUGPT_CACHE": str(cache), "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, str(SCRIPTS / f"{name}.py"), *overrides], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("name, override, message", [
    ("compare_optimizers", "optimizers=[adamw,nope]", "error: optimizers=[adamw,nope]: unknown optimizer 'nope'"),
    ("compare_optimizers", "steps=0", "error: steps=0: must be a positive integer"),
    ("loss_by_frequency", "width=31", "error: width=31: not divisible by n_head=2"),
    ("loss_by_frequency", "every=0", "error: every=0: must be a positive integer"),
])
def test_cli_refuses_a_bad_option_in_one_line(name, override, message, tmp_path, cache_dir):
    run_dir, out = tmp_path / "hydra_run", tmp_path / "out"
    proc = run_script(name, override, f"out={out}", f"hydra.run.dir={run_dir}", cwd=tmp_path, cache=cache_dir)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(message), proc.stderr
    assert (run_dir / ".hydra" / "overrides.yaml").is_file()  # hydra.run.dir honoured
    assert not out.exists() and not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_cli_runs_both_scripts_end_to_end_at_a_tiny_size(tmp_path, cache_dir):
    out, run_dir = tmp_path / "optimizers", tmp_path / "compare_run"
    proc = run_script("compare_optimizers", "optimizers=[sgd]", "lr_factors=[1]", "steps=6", "eval_every=3",
                      "width=32", "val_batches=1", f"out={out}", f"hydra.run.dir={run_dir}", cwd=tmp_path,
                      cache=cache_dir)
    assert proc.returncode == 0, proc.stderr
    assert "| sgd | 0.25 |" in proc.stdout and (out / "optimizers.png").is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / "compare_optimizers.log").is_file()

    out, run_dir = tmp_path / "lbf", tmp_path / "lbf_run"
    tiny = ["steps=4", "every=2", "width=32", "n_layer=1", "block_size=32", "batch_size=4", "final_events=1"]
    proc = run_script("loss_by_frequency", *tiny, f"out={out}", f"hydra.run.dir={run_dir}", cwd=tmp_path,
                      cache=cache_dir)
    assert proc.returncode == 0, proc.stderr
    assert "final training loss by bucket" in proc.stdout
    assert {p.name for p in out.iterdir()} == {"runs", "loss_by_frequency.csv", "loss_by_frequency.png",
                                               "loss_by_frequency_final.csv", "module_norms.csv", "module_norms.png"}
    with open(out / "loss_by_frequency.csv", newline="") as f:
        measured = {(r["optimizer"], int(r["step"])) for r in csv.DictReader(f)}
    assert measured == {(name, step) for name in ("sgd", "adamw") for step in (1, 3)}  # after steps 2 and 4
    assert (run_dir / "loss_by_frequency.log").is_file() and not (tmp_path / "outputs").exists()
    # plot_only=true redraws from the runs in `out` without training them again
    (out / "loss_by_frequency.png").unlink()
    proc = run_script("loss_by_frequency", *tiny, "plot_only=true", f"out={out}", f"hydra.run.dir={run_dir}_plot",
                      cwd=tmp_path, cache=cache_dir)
    assert proc.returncode == 0, proc.stderr
    assert (out / "loss_by_frequency.png").is_file() and "Trainer.fit" not in proc.stdout + proc.stderr
