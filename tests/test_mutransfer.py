"""µTransfer: the analysis on known curves, the pipeline's choices, and a miniature sweep through the report."""

import csv
import json
import math

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from conftest import CONF_DIR, compose_config
from mugpt.mutransfer import analyse, best_log2_lr, chosen_settings, grid, report, run_pipeline
from mugpt.training import check_config, train


def rows_from(curves: dict) -> list[dict]:
    return [{"parametrization": p, "width": w, "lr": 2.0 ** e, "seed": 0, "val_loss": loss,
             "status": "completed" if math.isfinite(loss) else "diverged", "output_dir": ""}
            for (p, w), curve in curves.items() for e, loss in curve.items()]


def test_parabola_refines_the_best_learning_rate():
    # loss = (log2 lr + 7.3)^2 sampled on integers: the grid says -7, the vertex is -7.3
    curve = {2.0 ** e: (e + 7.3) ** 2 + 2.0 for e in range(-10, -4)}
    grid_best, refined = best_log2_lr(curve)
    assert grid_best == 2.0 ** -7 and refined == pytest.approx(-7.3)
    # at the edge of the grid there is no parabola to fit: the grid point stands
    edge = {2.0 ** e: float(e + 20) for e in range(-10, -4)}
    assert best_log2_lr(edge) == (2.0 ** -10, -10.0)


def test_regret_and_shift_from_known_curves():
    inf = math.inf
    curves = {
        ("mup", 64): {-9: 2.6, -8: 2.5, -7: 2.6}, ("mup", 256): {-9: 2.5, -8: 2.4, -7: 2.5},
        # SP: the best lr moves down two octaves; at the donor's best the target diverges
        ("sp", 64): {-10: 2.7, -9: 2.6, -8: 2.5, -7: 2.6}, ("sp", 256): {-10: 2.4, -9: 2.5, -8: inf, -7: inf},
    }
    a = analyse(rows_from(curves))
    assert a["mup"]["regret"] == pytest.approx(0.0) and a["mup"]["shift_octaves"] == pytest.approx(0.0)
    assert a["mup"]["best_loss"] == {64: 2.5, 256: 2.4}
    assert a["sp"]["donor_lr"] == 2.0 ** -8 and a["sp"]["regret"] == inf
    assert a["sp"]["best_lr"][256] == 2.0 ** -10 and a["sp"]["shift_octaves"] == pytest.approx(2.0)


def test_grid_is_the_cartesian_product():
    assert grid({"lr_log2": [-8, -6], "optim.weight_decay": [0.0]}) == [
        ["lr_log2=-8", "optim.weight_decay=0.0"], ["lr_log2=-6", "optim.weight_decay=0.0"]]
    assert grid({"lr_log2": [-8], "parametrization": {"output_mult": [1, 2]}}) == [
        ["lr_log2=-8", "parametrization.output_mult=1"], ["lr_log2=-8", "parametrization.output_mult=2"]]
    with pytest.raises(ValueError, match="search.x"):
        grid({"x": []})


def test_pipeline_transfers_the_donors_best_and_skips_diverged_donors(tmp_path):
    """run_pipeline with a stand-in trainer: what it runs, what it picks, what it reports."""
    calls = []

    def fake_run(overrides, output_dir):
        calls.append(overrides)
        o = dict(x.split("=", 1) for x in overrides)
        e = int(o["lr_log2"])
        if e == -4:
            return {"status": "diverged", "val_loss": float("nan")}
        return {"status": "completed", "val_loss": (e + 7) ** 2 / 10 + (0.1 if o["parametrization"] == "sp" else 0)}

    cfg = OmegaConf.create({"training_experiment": "mutransfer_lr", "parametrizations": ["sp", "mup"],
                            "donor_width": 32,
                            "target_width": 128, "search": {"lr_log2": [-8, -7, -4]}, "seeds": [0],
                            "overrides": ["trainer.max_steps=5"], "output_dir": str(tmp_path)})
    result = run_pipeline(cfg, fake_run)
    assert len(calls) == 2 * (3 + 1)
    targets = [c for c in calls if "model.width=128" in c]
    assert all("lr_log2=-7" in c and "parametrization.base_width=32" in c for c in targets)
    assert result["parametrizations"]["mup"]["donor_best"] == ["lr_log2=-7"]
    assert result["parametrizations"]["sp"]["target_loss"] == pytest.approx(0.1)
    assert json.loads((tmp_path / "transfer.json").read_text())["target_width"] == 128
    with pytest.raises(ValueError, match="donor_width=128 must be narrower"):
        run_pipeline(OmegaConf.merge(cfg, {"donor_width": 128}), fake_run)

    # µP's own options are searched for µP alone: 3 lrs × 2 output multipliers for µP, 3 lrs for SP
    calls.clear()
    own = {"search_by_parametrization": {"mup": {"parametrization.output_mult": [1, 2]}}}
    result = run_pipeline(OmegaConf.merge(cfg, own), fake_run)
    donor_calls = [c for c in calls if "model.width=32" in c]
    assert sum("parametrization=mup" in c for c in donor_calls) == 6
    assert not any("parametrization=sp" in c and any(o.startswith("parametrization.output_mult") for o in c)
                   for c in calls)
    assert result["parametrizations"]["mup"]["donor_best"] == ["lr_log2=-7", "parametrization.output_mult=1"]
    # nested spaces (as conf/mutransfer.yaml writes them) merge key by key: µP's own model option adds to the
    # shared model option instead of replacing it
    calls.clear()
    nested = {"search": {"lr_log2": [-7], "model": {"init_std": [0.02, 0.04]}},
              "search_by_parametrization": {"mup": {"model": {"dropout": [0.0, 0.1]}}}}
    run_pipeline(OmegaConf.merge(cfg, nested), fake_run)
    mup_donors = [c for c in calls if "model.width=32" in c and "parametrization=mup" in c]
    assert len(mup_donors) == 4 and all(any(o.startswith("model.init_std=") for o in c) for c in mup_donors)
    # the settings the report draws each donor curve at: all searched keys but the learning rate
    assert chosen_settings(result) == (["parametrization.output_mult"],
                                       {"sp": {}, "mup": {"parametrization.output_mult": 1}})


@pytest.mark.slow
def test_miniature_sweep_through_the_report(tmp_path, cache_dir):
    """Real runs (two widths, two learning rates, one absurd one that must diverge) → CSV, PNG, analysis."""
    sweep = tmp_path / "sweep"
    jobs = [("sp", 32, -8), ("sp", 32, -6), ("sp", 64, -8), ("sp", 64, -6), ("mup", 32, -6), ("mup", 64, -6),
            ("sp", 64, 5)]
    for i, (param, width, lr_log2) in enumerate(jobs):
        cfg = compose_config(["+experiment=mutransfer_lr", f"parametrization={param}", "parametrization.base_width=32",
                              f"model.width={width}", f"lr_log2={lr_log2}", "trainer.max_steps=12", "eval_every=12",
                              "optim.warmup_steps=2", "data.val_batches=2"], sweep / str(i), cache_dir)
        summary = train(cfg)
        assert summary["lr"] == 2.0 ** lr_log2
    result = report(sweep)
    with open(sweep / "mutransfer.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(jobs)
    assert list(rows[0]) == ["parametrization", "width", "lr", "seed", "val_loss", "status", "output_dir"]
    status = {(r["parametrization"], int(r["width"]), float(r["lr"])): r["status"] for r in rows}
    assert status[("sp", 64, 32.0)] == "diverged"
    assert sum(s == "completed" for s in status.values()) == len(jobs) - 1
    a = result["analysis"]
    assert a["sp"]["widths"] == [32, 64] and a["sp"]["best_lr"][64] in (2.0 ** -8, 2.0 ** -6)
    assert a["sp"]["best_loss"][64] < math.log(256) - 1.0  # 12 steps already learn byte statistics
    assert (sweep / "mutransfer.png").read_bytes()[:4] == b"\x89PNG"
    # select: the analysis keeps only the chosen settings' runs, the CSV keeps every run and the asked columns
    picked = report(sweep, tmp_path / "picked", keys=["optim.warmup_steps"], select={"sp": {"model.width": 32}})
    assert picked["analysis"]["sp"]["widths"] == [32] and picked["analysis"]["mup"]["widths"] == [32, 64]
    with open(tmp_path / "picked" / "mutransfer.csv", newline="") as f:
        picked_rows = list(csv.DictReader(f))
    assert len(picked_rows) == len(jobs) and {r["optim.warmup_steps"] for r in picked_rows} == {"2"}


@pytest.mark.slow
def test_gpu_experiment_inherits_the_cpu_setup_and_survives_the_gpt2_vocabulary(tmp_path, cache_dir):
    """+experiment=mutransfer_gpu: GPT-2 BPE and bf16, the CPU experiment's optimizer setup, and a divergence
    bound above the GPT-2 vocabulary's starting loss (ln 50257 = 10.8), so that a healthy run is not stopped."""
    cfg = compose_config(["+experiment=mutransfer_gpu", "parametrization=mup", "lr_log2=-9"], tmp_path / "c", cache_dir)
    assert cfg.data.tokenizer == "gpt2" and cfg.precision.lightning == "bf16-mixed"
    assert cfg.parametrization.base_width == cfg.model.width == 256
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.block_size, cfg.data.batch_size) == (4, 8, 128, 32)
    assert cfg.optim.lr == 2.0 ** -9 and cfg.optim.grad_clip == 1.0 and cfg.optim.warmup_steps == 60
    assert cfg.max_loss > math.log(50257) + 1.0
    assert cfg.trainer.max_steps == cfg.eval_every == 300
    # a miniature on the CPU (fp32, width 64 = base): the first losses sit near ln 50257 and the run completes
    small = compose_config(["+experiment=mutransfer_gpu", "parametrization=mup", "precision=32-true",
                            "model.width=64", "parametrization.base_width=64", "model.n_layer=1", "lr_log2=-9",
                            "trainer.max_steps=3", "eval_every=3", "data.batch_size=4", "data.val_batches=1"],
                           tmp_path / "run", cache_dir)
    summary = train(small)
    assert summary["status"] == "completed" and summary["vocab_size"] == 50257
    assert math.log(50257) - 1.0 < summary["val_loss"] < math.log(50257) + 1.0


def test_one_command_config_picks_its_training_experiment(tmp_path, cache_dir):
    """`python scripts/mutransfer.py training_experiment=mutransfer_gpu donor_width=256 target_width=2048`: the
    key must not collide with the `experiment` config group, and every run composes to that experiment."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="mutransfer", overrides=[
            "training_experiment=mutransfer_gpu", "donor_width=256", "target_width=2048", "search.lr_log2=[-9,-8]",
            "search.model.init_std=[0.02]", f"output_dir={tmp_path}"])
    composed = []

    def compose_only(overrides, output_dir):
        run_cfg = compose_config(overrides, output_dir, cache_dir)
        composed.append((run_cfg.data.tokenizer, run_cfg.model.width, run_cfg.parametrization.base_width,
                         run_cfg.optim.lr))
        return {"status": "completed", "val_loss": 5.0 + abs(run_cfg.optim.lr - 2.0 ** -9)}

    result = run_pipeline(cfg, compose_only)
    # SP: 2 donor runs + 1 target; µP: 2 lrs x 3 output multipliers + 1 target
    assert len(composed) == 3 + 7
    assert {c[0] for c in composed} == {"gpt2"} and {c[2] for c in composed} == {256}
    assert sorted({c[1] for c in composed}) == [256, 2048]
    assert result["parametrizations"]["mup"]["donor_best"][0] == "lr_log2=-9"
    assert all(c[3] == 2.0 ** -9 for c in composed if c[1] == 2048)


def test_pipeline_refuses_a_target_that_cannot_run_before_any_donor_trains(tmp_path, cache_dir):
    cfg = OmegaConf.create({"training_experiment": "mutransfer_gpu", "parametrizations": ["sp", "mup"],
                            "donor_width": 256, "target_width": 2050, "search": {"lr_log2": [-9, -8]},
                            "seeds": [0], "overrides": [], "output_dir": str(tmp_path)})
    checked, trained = [], []

    def check(overrides):
        checked.append(overrides)
        check_config(compose_config(overrides, tmp_path / "unused", cache_dir))

    with pytest.raises(ValueError, match="model.width=2050 is not divisible by model.n_head=8"):
        run_pipeline(cfg, lambda overrides, out: trained.append(overrides), check=check)
    assert trained == [] and len(checked) == 3  # SP's two donors passed, its target was refused
