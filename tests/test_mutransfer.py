"""µTransfer: the analysis on known curves, the pipeline's choices, and a miniature sweep through the report."""

import csv
import json
import math

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from conftest import CONF_DIR, compose_config, run_script
from mugpt.studies.transfer import (
    analyse,
    best_log2_lr,
    chosen_settings,
    format_pipeline,
    format_report,
    grid,
    mean_ci,
    report,
    run_pipeline,
    t_quantile,
)
from mugpt.training.train import check_config, train

T_975_2 = 4.302652729911275  # Student t, two-sided 95%, 2 degrees of freedom (3 seeds)


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
    with pytest.raises(ValueError, match="the target is the donor on every axis"):
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
            "search_by_parametrization.sp.model.init_std=[0.02]",
            "search_by_parametrization.mup.parametrization.hidden_init_scale=[0.5]", f"output_dir={tmp_path}"])
    composed = []

    def compose_only(overrides, output_dir):
        run_cfg = compose_config(overrides, output_dir, cache_dir)
        composed.append((run_cfg.data.tokenizer, run_cfg.model.width, run_cfg.parametrization.base_width,
                         run_cfg.optim.lr))
        return {"status": "completed", "val_loss": 5.0 + abs(run_cfg.optim.lr - 2.0 ** -9)}

    result = run_pipeline(cfg, compose_only)
    # SP: 2 donor runs + 1 target; µP: 2 lrs x 3 output_alpha + 1 target
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


# ------------------------------------------------------------------ error bars over seeds, any axis
def seed_rows(curves: dict, axis: str = "width", extra: dict | None = None) -> list[dict]:
    """Rows of known per-seed curves: {(parametrization, axis value, seed): {log2 lr: loss}}."""
    return [{"parametrization": p, "width": v if axis == "width" else 64, axis: v, "lr": 2.0 ** e, "seed": seed,
             "val_loss": loss, "status": "completed" if math.isfinite(loss) else "diverged", "output_dir": "",
             **(extra or {})}
            for (p, v, seed), curve in curves.items() for e, loss in curve.items()]


def test_t_quantiles_and_intervals_over_seeds():
    assert t_quantile(0.95, 2) == pytest.approx(T_975_2, abs=1e-9)
    assert [round(t_quantile(0.95, d), 3) for d in (1, 3, 4, 9, 30)] == [12.706, 3.182, 2.776, 2.262, 2.042]
    stats = mean_ci([-7.0, -7.5, -6.5])
    assert (stats["mean"], stats["sd"], stats["n"]) == (pytest.approx(-7.0), pytest.approx(0.5), 3)
    assert stats["half_width"] == pytest.approx(T_975_2 * 0.5 / math.sqrt(3))
    one = mean_ci([-7.0])  # one seed: a mean, no interval
    assert one["mean"] == -7.0 and one["n"] == 1 and math.isnan(one["half_width"]) and math.isnan(one["sd"])
    diverged = mean_ci([0.1, math.inf, 0.2])  # a diverged seed is not dropped: infinite mean, no interval
    assert diverged["mean"] == math.inf and math.isnan(diverged["half_width"])
    assert mean_ci([math.nan, 1.0])["n"] == 1  # a missing seed is left out


def test_per_seed_best_lr_shift_and_regret_with_confidence_intervals():
    """Three seeds whose parabola vertices are known: donor (width 64) at -7, -7.5, -6.5; target (width 256) at
    -8, -8.5, -7.3, each seed with its own offset. Every number is checked against its definition."""
    grid_e = range(-11, -3)
    donor_min, target_min, offset = [-7.0, -7.5, -6.5], [-8.0, -8.5, -7.3], [2.0, 2.1, 2.3]

    def loss(m, c, e):
        return (e - m) ** 2 / 10 + c

    curves = {}
    for seed in range(3):
        curves[("mup", 64, seed)] = {e: loss(donor_min[seed], offset[seed], e) for e in grid_e}
        curves[("mup", 256, seed)] = {e: loss(target_min[seed], offset[seed] - 0.3, e) for e in grid_e}
    a = analyse(seed_rows(curves))["mup"]
    ci = a["best_log2_lr_seeds"][64]
    assert [ci["seeds"][s] for s in range(3)] == pytest.approx(donor_min)  # each seed's own parabola vertex
    assert ci["mean"] == pytest.approx(-7.0) and ci["n"] == 3
    assert ci["half_width"] == pytest.approx(T_975_2 * 0.5 / math.sqrt(3))
    # the shift is paired by seed: -1, -1, -0.8
    shifts = [t - d for t, d in zip(target_min, donor_min)]
    shift = a["shift_from_donor"][256]
    assert shift["mean"] == pytest.approx(np.mean(shifts))
    assert shift["half_width"] == pytest.approx(T_975_2 * np.std(shifts, ddof=1) / math.sqrt(3))
    # the donor's lr comes from its seed-mean curve (vertex -7: grid -7); the regret per seed is the target seed's
    # loss there minus its own grid minimum, and minus the seed-mean curve's minimum
    assert a["donor_lr"] == 2.0 ** -7
    own = [loss(m, c - 0.3, -7) - min(loss(m, c - 0.3, e) for e in grid_e) for m, c in zip(target_min, offset)]
    mean_curve = {e: np.mean([loss(m, c - 0.3, e) for m, c in zip(target_min, offset)]) for e in grid_e}
    at_donor = [loss(m, c - 0.3, -7) for m, c in zip(target_min, offset)]
    assert own == pytest.approx([0.1, 0.2, 0.0])
    assert a["regret_seeds"]["mean"] == pytest.approx(np.mean(own))
    assert a["regret_seeds"]["half_width"] == pytest.approx(T_975_2 * np.std(own, ddof=1) / math.sqrt(3))
    vs_mean = [x - min(mean_curve.values()) for x in at_donor]
    assert a["regret_seeds_vs_mean_best"]["mean"] == pytest.approx(np.mean(vs_mean))
    assert a["regret_seeds_vs_mean_best"]["sd"] == pytest.approx(np.std(vs_mean, ddof=1))
    # the mean-curve numbers are kept as they were
    assert a["regret"] == pytest.approx(mean_curve[-7] - min(mean_curve.values()))
    assert a["regret"] == pytest.approx(a["regret_seeds_vs_mean_best"]["mean"])
    assert a["best_lr"][256] == 2.0 ** -8 and a["donor_width"] == 64 and a["target_width"] == 256
    # the best loss per width: the seed-mean curve's minimum, with the seeds' spread at that lr
    spread = a["best_loss_seeds"][256]
    assert spread["mean"] == pytest.approx(a["best_loss"][256])
    assert spread["sd"] == pytest.approx(np.std([loss(m, c - 0.3, -8) for m, c in zip(target_min, offset)], ddof=1))
    text = format_report(analyse(seed_rows(curves)))
    assert f"log2 lr -7.00 ± {T_975_2 * 0.5 / math.sqrt(3):.2f} (95% CI, 3 seeds)" in text
    assert "shift from 64 -0.93 ± " in text and "regret 0.1000 ± " in text


def test_one_seed_has_no_interval_and_groups_split_the_series():
    curves = {("mup", 2, 0): {-8: 2.6, -7: 2.5, -6: 2.6}, ("mup", 8, 0): {-8: 2.4, -7: 2.3, -6: 2.5}}
    rows = seed_rows(curves, "model.n_layer", {"parametrization.depth_alpha": 1.0})
    rows += seed_rows({("mup", 2, 0): {-8: 2.6, -7: 2.5, -6: 2.6}, ("mup", 8, 0): {-8: 2.2, -7: 2.4, -6: 2.9}},
                      "model.n_layer", {"parametrization.depth_alpha": 0.0})
    rows += seed_rows({("sp", 2, 0): {-8: 2.6, -7: 2.5, -6: 2.6}, ("sp", 8, 0): {-8: 2.6, -7: 2.5, -6: 2.6}},
                      "model.n_layer", {"parametrization.depth_alpha": None})  # SP's config has no depth_alpha
    a = analyse(rows, "model.n_layer", ["parametrization.depth_alpha"])
    assert list(a) == ["mup depth_alpha=0.0", "mup depth_alpha=1.0", "sp"]
    assert a["mup depth_alpha=1.0"]["values"] == [2, 8] and "widths" not in a["mup depth_alpha=1.0"]
    assert a["mup depth_alpha=1.0"]["regret"] == pytest.approx(0.0)
    assert a["mup depth_alpha=0.0"]["regret"] == pytest.approx(0.2)
    assert a["mup depth_alpha=0.0"]["group"] == {"parametrization.depth_alpha": 0.0}
    text = format_report(a)
    assert "model.n_layer     8: lr 0.00391  log2 -8.00" in text and "log2 lr -7.00 (1 seed)" in text
    assert "± 0" not in text  # one seed: no interval anywhere


def write_run(folder, summary: dict, config: dict | None, hydra_only: bool = False) -> None:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    if config is not None:
        target = folder / ".hydra" / "config.yaml" if hydra_only else folder / "config.yaml"
        target.parent.mkdir(exist_ok=True)
        OmegaConf.save(OmegaConf.create(config), target)


@pytest.mark.slow  # three script processes; the same command line in-process: test_report_commands.py
def test_report_reads_axis_and_groups_from_config_yaml_across_several_sweeps(tmp_path, capsys):
    """Two multiruns (depth 2 and depth 8, two seeds, two depth_alpha under µP, SP beside them) read as one
    sweep along model.n_layer: the CSV keeps one row per run with the axis and group columns, the figures exist."""
    def vertex(param, depth, alpha):  # CompleteP (α=1) keeps the best lr; α=0 and SP move it down with depth
        return -7.0 if depth == 2 or (param == "mup" and alpha == 1.0) else -8.0

    n = 0
    for depth in (2, 8):
        for param, alpha in (("mup", 0.0), ("mup", 1.0), ("sp", None)):
            for seed in (0, 1):
                for e in (-9, -8, -7, -6):
                    loss = (e - vertex(param, depth, alpha)) ** 2 / 10 + 2.0 + 0.01 * seed
                    config = {"model": {"n_layer": depth, "width": 64}, "seed": seed,
                              "parametrization": {"name": param, **({"depth_alpha": alpha} if param == "mup" else {})}}
                    write_run(tmp_path / f"depth{depth}" / str(n), {"parametrization": param, "width": 64,
                              "lr": 2.0 ** e, "seed": seed, "val_loss": loss, "status": "completed"}, config)
                    n += 1
    # a run refused before training: no config.yaml, Hydra's .hydra/config.yaml still places it on the axis
    write_run(tmp_path / "depth8" / "refused", {"parametrization": "sp", "width": 64, "lr": 2.0 ** -5, "seed": 0,
                                                "val_loss": None, "status": "failed"},
              {"model": {"n_layer": 8}, "parametrization": {"name": "sp"}}, hydra_only=True)
    out = tmp_path / "report"
    done = run_script("mutransfer_report", str(tmp_path / "depth2"), str(tmp_path / "depth8"), "--out", str(out),
                      "--axis", "model.n_layer", "--group", "parametrization.depth_alpha")
    assert done.returncode == 0, done.stderr
    printed = done.stdout
    assert f"{n + 1} runs: {n} completed, 1 failed" in printed
    assert "mup depth_alpha=1.0: best learning rate per model.n_layer" in printed
    assert "transfer: donor model.n_layer 2 best lr 0.00781 -> target model.n_layer 8" in printed
    analysis = json.loads((out / "mutransfer.json").read_text())
    assert set(analysis) == {"mup depth_alpha=0.0", "mup depth_alpha=1.0", "sp"}
    assert analysis["mup depth_alpha=1.0"]["regret"] == pytest.approx(0.0)
    assert analysis["sp"]["regret"] == pytest.approx(0.1)
    assert analysis["sp"]["best_log2_lr_seeds"]["8"]["half_width"] == pytest.approx(0.0)  # both seeds agree
    with open(out / "mutransfer.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n + 1
    assert list(rows[0]) == ["parametrization", "width", "lr", "seed", "model.n_layer", "parametrization.depth_alpha",
                             "val_loss", "status", "output_dir"]
    assert {r["model.n_layer"] for r in rows} == {"2", "8"}
    for png in ("mutransfer.png", "mutransfer_transfer.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # refusals, one line each: several folders and nowhere to write; an axis a completed run does not have
    done = run_script("mutransfer_report", str(tmp_path / "depth2"), str(tmp_path / "depth8"))
    assert done.returncode == 2 and "2 sweep directories: say where the report goes (--out DIR)" in done.stderr
    done = run_script("mutransfer_report", str(tmp_path / "depth2"), "--out", str(out), "--axis", "data.batch_size")
    assert done.returncode == 2 and "axis data.batch_size: the run in" in done.stderr


def depth_run(calls: list):
    """A stand-in trainer: the loss is a parabola in log2 lr whose vertex is -7 at the donor's depth (2) and -8
    at depth 4; seeds move the loss, not the vertex."""
    def fake_run(overrides, output_dir):
        calls.append((overrides, output_dir))
        o = dict(x.split("=", 1) for x in overrides)
        vertex = -7 if o.get("model.n_layer", "2") == "2" else -8
        return {"status": "completed", "val_loss": (float(o["lr_log2"]) - vertex) ** 2 / 10 + 2 + 0.01 * int(o["seed"])}

    return fake_run


def pipeline_cfg(tmp_path, **options) -> OmegaConf:
    return OmegaConf.create({"training_experiment": "mutransfer_lr", "parametrizations": ["sp", "mup"],
                             "donor_width": 32, "target_width": None, "search": {"lr_log2": [-8, -7, -6]},
                             "seeds": [0, 1, 2], "overrides": ["trainer.max_steps=5"], "output_dir": str(tmp_path),
                             **options})


def test_pipeline_transfers_along_depth_steps_and_batch(tmp_path):
    """The donor's depth, steps and batch come from the training experiment (composed once, with `overrides`);
    the target's are passed; every run gets the donor's depth as µP's base depth and its batch as base_batch."""
    calls, composed, checked = [], [], []

    def fake_compose(overrides):
        composed.append(overrides)
        return OmegaConf.create({"model": {"n_layer": 2}, "trainer": {"max_steps": 5}, "data": {"batch_size": 16}})

    cfg = pipeline_cfg(tmp_path, target_depth=4, target_steps=20, target_batch_size=32)
    result = run_pipeline(cfg, depth_run(calls), check=checked.append, compose=fake_compose)
    assert composed == [["+experiment=mutransfer_lr", "trainer.max_steps=5"]]
    assert result["donor"] == {"width": 32, "depth": 2, "steps": 5, "batch_size": 16}
    assert result["target"] == {"width": 32, "depth": 4, "steps": 20, "batch_size": 32}
    runs = [o for o, _ in calls]
    assert len(runs) == 2 * (3 + 1) * 3  # 2 parametrizations × (3 donor lrs + the target) × 3 seeds
    assert all("++parametrization.base_depth=2" in o and "optim.base_batch=16" in o
               and "parametrization.base_width=32" in o and "model.width=32" in o for o in runs)
    donors = [o for o, d in calls if d.parent.name == "donor"]
    targets = [o for o, d in calls if d.parent.name == "target"]
    assert len(donors) == 18 and len(targets) == 6
    assert all({"model.n_layer=2", "trainer.max_steps=5", "data.batch_size=16"} <= set(o) for o in donors)
    assert all({"model.n_layer=4", "trainer.max_steps=20", "data.batch_size=32", "lr_log2=-7"} <= set(o)
               for o in targets)
    # the target's settings come after the user's overrides: trainer.max_steps=20 wins over =5
    assert all(o.index("trainer.max_steps=20") > o.index("trainer.max_steps=5") for o in targets)
    assert len(checked) == 2 * (3 + 1)  # every donor setting and the target, per parametrization, before any run
    mup = result["parametrizations"]["mup"]
    assert mup["donor_best"] == ["lr_log2=-7"] and mup["donor_best_log2_lr"] == pytest.approx(-7.0)
    assert mup["target_loss"] == pytest.approx(2.1 + 0.01) and mup["target_loss_sd"] == pytest.approx(0.01)
    assert "target_best" not in mup
    text = format_pipeline(result)
    assert text.splitlines()[0] == ("donor width 32, depth 2, steps 5, batch size 16 → target width 32, depth 4, "
                                    "steps 20, batch size 32 (3 seeds: 0, 1, 2)")
    assert "loss 2.1100 ± 0.0100 (sd, 3 seeds)   3 completed" in text and "not searched" in text
    assert "warning" not in text and mup["donor_edge"] is None  # the donor's best, -7, is inside its grid
    assert text.splitlines()[-1] == ("verdict: sp: donor's lr_log2=-7 -> target loss 2.1100; mup: donor's "
                                     "lr_log2=-7 -> target loss 2.1100; best target: sp")

    # given donor values are not composed; an axis the target leaves alone is the experiment's, passed nowhere
    calls.clear()
    run_pipeline(pipeline_cfg(tmp_path, donor_depth=3, target_depth=6), depth_run(calls), compose=fake_compose)
    assert len(composed) == 1
    assert all("++parametrization.base_depth=3" in o and not any(x.startswith(("optim.base_batch", "data.batch_size"))
                                                                  for x in o) for o, _ in calls)


def test_pipeline_tunes_the_target_for_the_regret(tmp_path):
    """target_search: the target trained at each lr with the donor's other choices; the transferred point is not
    trained twice; the regret of the transferred lr against the target's own optimum, mean and per seed."""
    calls = []
    cfg = pipeline_cfg(tmp_path, donor_depth=2, target_depth=4, parametrizations=["mup"],
                       search={"lr_log2": [-8, -7, -6], "model": {"init_std": [0.02]}},
                       target_search={"lr_log2": [-9, -8, -7, -6]})
    checked = []
    result = run_pipeline(cfg, depth_run(calls), check=checked.append)
    assert len(checked) == 3 + 1 + 4  # the target-search runs are checked too, before any run trains
    searched = [(o, d) for o, d in calls if d.parent.name == "target_search"]
    assert len(searched) == 3 * 3  # -7 is the transferred target, already trained
    assert all("model.init_std=0.02" in o and "model.n_layer=4" in o for o, _ in searched)
    assert not any("lr_log2=-7" in o for o, _ in searched)
    mup = result["parametrizations"]["mup"]
    assert mup["target_best"] == ["lr_log2=-8", "model.init_std=0.02"]
    assert mup["target_best_log2_lr"] == pytest.approx(-8.0)
    assert mup["target_best_loss"] == pytest.approx(2.01)
    # the target's vertex is -8: at the transferred -7 each seed loses 0.1 nats against its own best
    assert mup["regret"] == pytest.approx(0.1)
    assert mup["regret_seeds"]["mean"] == pytest.approx(0.1) and mup["regret_seeds"]["half_width"] == pytest.approx(0)
    assert [t["overrides"][0] for t in mup["target_search_trials"]] == ["lr_log2=-9", "lr_log2=-8", "lr_log2=-7",
                                                                       "lr_log2=-6"]
    text = format_pipeline(result)
    assert "target's best  lr_log2=-8 model.init_std=0.02 (log2 lr -8.00)   loss 2.0100 ± 0.0100 (sd, 3 seeds)" in text
    assert "regret         0.1000 nats; per seed 0.1000 ± 0.0000 nats (95% CI, 3 seeds)" in text
    written = json.loads((tmp_path / "transfer.json").read_text())
    assert written["parametrizations"]["mup"]["regret"] == pytest.approx(0.1)
    assert text.splitlines()[-1] == ("verdict: mup: donor's lr_log2=-7 model.init_std=0.02 -> target loss 2.1100, "
                                     "regret 0.1000 nats")


def test_pipeline_warns_when_a_best_learning_rate_sits_at_the_grid_edge(tmp_path):
    """The donor's vertex is -7, its grid -9..-7: the best is the highest rate tried; the target's (vertex -8)
    search -8..-6 ends at its lowest. Both are named, with the way to widen, and marked in the verdict."""
    cfg = pipeline_cfg(tmp_path, donor_depth=2, target_depth=4, parametrizations=["mup"],
                       search={"lr_log2": [-9, -8, -7]}, target_search={"lr_log2": [-8, -7, -6]})
    result = run_pipeline(cfg, depth_run([]))
    mup = result["parametrizations"]["mup"]
    assert (mup["donor_edge"], mup["target_edge"]) == ("highest", "lowest")
    text = format_pipeline(result)
    assert ("  warning: donor's best lr 2^-7 is the highest tried: the optimum may lie beyond it, widen the grid "
            "towards larger learning rates") in text.splitlines()
    assert ("  warning: target's best lr 2^-8 is the lowest tried: the optimum may lie beyond it, widen the grid "
            "towards smaller learning rates") in text.splitlines()
    assert text.splitlines()[-1] == ("verdict: mup: donor's lr_log2=-7 (grid edge) -> target loss 2.1100, regret "
                                     "0.1000 nats (grid edge)")


def test_the_report_warns_where_a_best_learning_rate_sits_at_the_grid_edge():
    """Width 64's best is inside its grid; width 256's is its lowest rate: one warning, for 256 only."""
    curves = {("mup", 64, 0): {-8: 2.6, -7: 2.5, -6: 2.6}, ("mup", 256, 0): {-8: 2.3, -7: 2.4, -6: 2.5}}
    a = analyse(seed_rows(curves))
    assert a["mup"]["edge"] == {64: None, 256: "lowest"}
    warnings = [line.strip() for line in format_report(a).splitlines() if "warning" in line]
    assert warnings == ["warning: best lr 2^-8 is the lowest tried: the optimum may lie beyond it, widen the grid "
                        "towards smaller learning rates (so not refined)"]


@pytest.mark.parametrize("options, message", [
    ({"target_depth": 0}, "target_depth=0: must be a positive integer (or null: the donor's)"),
    ({"target_depth": "abc"}, "target_depth=abc: must be a positive integer"),
    ({"target_steps": 2.5}, "target_steps=2.5: must be a positive integer"),
    ({"target_batch_size": True}, "target_batch_size=True: must be a positive integer"),
    ({"donor_depth": -1, "target_depth": 4}, "donor_depth=-1: must be a positive integer (or null: the training"),
    ({"donor_width": None}, "donor_width: required"),
    ({"target_width": 16}, "target_width=16: narrower than donor_width=32"),
    ({"donor_depth": 4, "target_depth": 2}, "target_depth=2: shallower than the donor's depth 4"),
    ({"target_width": 32, "donor_steps": 100, "target_steps": 100}, "the target is the donor on every axis "
                                                                     "(width 32, steps 100)"),
    ({"target_width": 64, "target_search": {"lr_log2": []}}, "target_search.lr_log2: give at least one value"),
    ({"target_width": 64, "target_search": {"lr_log2": -7}}, "target_search.lr_log2=-7: give a list of values"),
])
def test_pipeline_refuses_bad_targets_before_any_run(tmp_path, options, message):
    trained = []
    with pytest.raises(ValueError) as refused:
        run_pipeline(pipeline_cfg(tmp_path, **options), lambda overrides, out: trained.append(overrides),
                     compose=lambda overrides: pytest.fail("no composition needed"))
    assert message in str(refused.value) and "\n" not in str(refused.value) and trained == []


@pytest.mark.slow  # composes every run of the real configs; the pipeline's checks stay fast above
def test_depth_transfer_composes_for_both_parametrizations(tmp_path, cache_dir):
    """The real configs: the donor's depth is mutransfer_lr's (2), read by composing it; SP accepts the
    base_depth every run gets (`++`: its config has no such key), µP runs CompleteP at the target's depth; every
    run, target-search points included, passes check_config."""
    cfg = pipeline_cfg(tmp_path, target_depth=4, target_steps=40, seeds=[0], search={"lr_log2": [-8, -7]},
                       overrides=["++parametrization.depth_alpha=1"], target_search={"lr_log2": [-8]})
    composed = []

    def check(overrides):
        check_config(compose_config(overrides, tmp_path / "unused", cache_dir))

    def compose_only(overrides, output_dir):
        c = compose_config(overrides, output_dir, cache_dir)
        composed.append((c.parametrization.name, c.model.n_layer, c.parametrization.base_depth, c.trainer.max_steps,
                         c.parametrization.get("depth_alpha")))
        return {"status": "completed", "val_loss": 5.0 + abs(c.optim.lr - 2.0 ** -7) * c.model.n_layer}

    result = run_pipeline(cfg, compose_only, check=check)
    assert result["donor"]["depth"] == 2 and result["donor"]["steps"] == 200
    assert ("sp", 4, 2, 40, 1) in composed and ("mup", 4, 2, 40, 1) in composed and ("mup", 2, 2, 200, 1) in composed
    assert len(composed) == 2 * (2 + 1 + 1)


@pytest.mark.slow  # three script processes; the same command line in-process: test_report_commands.py
def test_defaults_report_finds_each_settings_optimum_and_the_defaults_gap(tmp_path, capsys):
    """Two donor grids (embedding std × init scale × output multiplier × lr, two seeds): the report takes the
    seed-mean loss at each lr, the best lr per combination, a diverged seed makes its lr unusable, a run with the
    keys null counts as model.init_std's init (c = init_std · sqrt(base_width)) and its output_alpha, the output
    multiplier is compared as output_alpha = output_mult · base_width, and the default's gap to each setting's
    optimum is the difference of the two best losses."""
    def loss(setting, emb, c, mult, e):  # optimum (0.08, 0.5, 2) at 2^-6 in "a", (0.08, 0.5, 4) at 2^-7 in "b"
        best_mult, best_lr = (2, -6) if setting == "a" else (4, -7)
        return 2.0 + abs(emb - 0.08) + abs(c - 0.5) + 0.01 * abs(mult - best_mult) + 0.1 * (e - best_lr) ** 2

    n = 0
    for setting in ("a", "b"):
        for emb, c, mult in ((0.08, 0.5, 2), (0.08, 0.5, 4), (0.02, 1.0, 2), (None, None, None)):
            for e in (-7, -6):
                for seed in (1, 2):
                    value = loss(setting, emb if emb else 0.02, c if c else 0.16, mult or 1, e) + 0.01 * seed
                    diverged = setting == "a" and mult == 4 and e == -6 and seed == 2
                    config = {"model": {"init_std": 0.02, "width": 64}, "seed": seed,
                              "parametrization": {"name": "mup", "base_width": 64, "embedding_init_std": emb,
                                                  "output_alpha": 64.0, "hidden_init_scale": c,
                                                  "output_mult": mult}}
                    write_run(tmp_path / setting / str(n), {"parametrization": "mup", "width": 64, "lr": 2.0 ** e,
                              "seed": seed, "val_loss": 9.0 if diverged else value,
                              "status": "diverged" if diverged else "completed"}, config)
                    n += 1
    out = tmp_path / "report"
    done = run_script("mup_defaults", f"a={tmp_path / 'a'}", f"b={tmp_path / 'b'}", "--default", "0.08,0.5,128",
                      "--out", str(out))
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "defaults.json").read_text())
    a, b = summary["settings"]
    assert a["best"] == {"embedding_init_std": 0.08, "hidden_init_scale": 0.5, "output_alpha": 128.0}
    assert a["best_log2_lr"] == -6 and a["best_loss"] == pytest.approx(2.015) and a["gap"] == 0.0
    assert b["best"]["output_alpha"] == 256.0 and b["best_log2_lr"] == -7
    assert b["gap"] == pytest.approx(0.02)  # 0.01 · |2 - 4|
    text = done.stdout
    assert "0.02 0.16" in text  # the null run, as model.init_std's init: c = 0.02 · 8
    with open(out / "defaults.csv") as f:
        assert len(list(csv.DictReader(f))) == 32
    assert run_script("mup_defaults", f"a={tmp_path / 'missing'}", "--default", "0.08,0.5,2").returncode != 0
    assert run_script("mup_defaults", f"a={tmp_path / 'a'}", "--default", "0.08,2").returncode != 0


def test_optimizer_transfer_pairs_donor_and_target_grids_and_reports_shift_and_regret(tmp_path, monkeypatch, capsys):
    """scripts/optimizer_transfer.py: the target's grid is centred on the donor's seed-mean best lr (SP: three
    octaves down to one up; µP: two each way); the report finds SP's best lr two octaves lower at the target, its
    regret (the target's loss at the donor's lr minus its best), µP's zero shift, and marks a best lr on the edge."""
    import mugpt.studies.grid as grid
    import mugpt.studies.optimizer_transfer as script

    vertex = {("sp", 64): -8, ("sp", 256): -10, ("mup", 64): -6, ("mup", 256): -6}
    grids = []

    def fake_sweep(overrides, folder, launcher, keep_going, resume):  # the multirun's runs, written at once
        given = dict(o.split("=", 1) for o in overrides)
        param, width = given["parametrization"], int(given["model.width"])
        log2_lrs = [int(e) for e in given["lr_log2"].split(",")]
        seeds = [int(x) for x in given["seed"].split(",")]
        grids.append((param, width, list(log2_lrs)))
        for e in log2_lrs:
            for seed in seeds:
                loss = 2.0 + 0.05 * (e - vertex[(param, width)]) ** 2 + 0.01 * seed
                write_run(folder / f"{e}_{seed}", {"parametrization": param, "width": width, "lr": 2.0 ** e,
                                                   "seed": seed, "val_loss": loss, "status": "completed"}, None)
        return {"returncode": 0, "finished": len(log2_lrs) * len(seeds), "expected": len(log2_lrs) * len(seeds),
                "seconds": 0.0}

    monkeypatch.setattr(grid, "_run_multirun", fake_sweep)
    script.run_sweeps(tmp_path, [("adamw", "sp"), ("adamw", "mup")], [0, 1, 2], jobs=1)
    assert grids[0] == ("sp", 64, list(range(-11, -3))) and grids[1] == ("sp", 256, [-11, -10, -9, -8, -7])
    assert grids[3] == ("mup", 256, [-8, -7, -6, -5, -4])
    coord = tmp_path / "coord" / "adamw"  # the coordinate check's slopes: the last step's largest block |slope|
    coord.mkdir(parents=True)
    (coord / "coord_check_slopes.csv").write_text(
        "parametrization,step,module,slope,seed_sd,n_seeds\n"
        "sp,0,block0.mlp,0.9,0.1,3\nsp,4,embedding,-3.0,0.1,3\nsp,4,block0.mlp,1.5,0.2,3\nsp,4,block1.residual,-1.7,0.3,3\n"
        "sp,4,logits,1.1,0.1,3\nmup,4,block0.attn,-0.04,0.01,3\nmup,4,block0.mlp,0.02,0.01,3\nmup,4,logits,0.0,0.0,3\n")
    text = script.report(tmp_path, ["adamw", "sgd"])  # sgd has no sweeps: left out
    table = {t["parametrization"]: t for t in json.loads((tmp_path / "optimizer_transfer.json").read_text())}
    assert table["sp"]["shift"]["mean"] == pytest.approx(-2.0) and table["sp"]["shift"]["sd"] == pytest.approx(0.0)
    assert table["sp"]["regret"]["mean"] == pytest.approx(0.05 * 4)  # 2 octaves off: 0.05 · 2²
    assert table["mup"]["shift"]["mean"] == pytest.approx(0.0) and table["mup"]["regret"]["mean"] == pytest.approx(0.0)
    assert table["sp"]["target_best_loss"]["mean"] == pytest.approx(2.01)  # seeds 0, 1, 2 add 0, .01, .02
    assert not table["sp"]["donor_edge"] and not table["mup"]["target_edge"] and table["sp"]["runs"] == 8 * 3 + 5 * 3
    assert "| adamw | SP | -8 | -10 |" in text and "| adamw | µP | -6 | -6 |" in text
    assert table["sp"]["coord"]["module"] == "block1.residual"
    assert "| 1.70 (0.30) |" in text and "| 0.04 (0.01) |" in text
    for name in ("optimizer_transfer.csv", "optimizer_transfer.md", "optimizer_transfer.png",
                 "optimizer_transfer_summary.png"):
        assert (tmp_path / name).stat().st_size > 0
    # the edge mark: SP's target curve cut at its best lr
    for run in (tmp_path / "target" / "adamw_sp").glob("-1[01]_*"):
        for f in run.iterdir():
            f.unlink()
        run.rmdir()
    assert "| adamw | SP | -8 | -9* |" in script.report(tmp_path, ["adamw"])


def test_optimizer_transfer_skips_a_finished_sweep_and_sets_a_partial_one_aside(tmp_path, monkeypatch):
    import mugpt.studies.optimizer_transfer as script
    calls = []
    monkeypatch.setattr(script.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or
                        type("Done", (), {"returncode": 0})())
    finished = tmp_path / "done"
    for i in range(4):
        write_run(finished / str(i), {"lr": 1.0, "width": 64}, None)
    script.run_sweep("sgd", "sp", 64, [-2, -1], [0, 1], finished)
    assert calls == []
    partial = tmp_path / "partial"
    write_run(partial / "0", {"lr": 1.0, "width": 64}, None)
    script.run_sweep("muon", "mup", 256, [-6, -5], [0, 1], partial)
    (cmd,) = calls
    assert "lr_log2=-6,-5" in cmd and "seed=0,1" in cmd and "optim=muon" in cmd and "model.width=256" in cmd
    assert "optim.adamw_lr='${pow2:${lr_log2},-3}'" in cmd and f"hydra.sweep.dir={partial}" in cmd
    assert not partial.exists() and len(list(tmp_path.glob("partial.partial.*"))) == 1  # set aside, kept whole
    calls.clear()
    script.run_coord(tmp_path, "muon", threads=1)
    (cmd,) = calls
    assert "optim=muon" in cmd and "optim.lr=0.02" in cmd and "num_threads=1" in cmd
    assert not any("lr_log2" in c for c in cmd)  # the coordinate check has no swept lr for Muon's AdamW part to follow
    (tmp_path / "coord" / "muon" / "coord_check_slopes.csv").write_text("done")
    script.run_coord(tmp_path, "muon", threads=1)
    assert len(calls) == 1  # already there: skipped
    for e in (-6, -5, -4):  # with µP's donor sweep there, its best lr (2^-5) and Muon's AdamW part at 1/8
        write_run(tmp_path / "donor" / "muon_rms_mup" / str(e), {"parametrization": "mup", "width": 64,
                  "lr": 2.0 ** e, "seed": 0, "val_loss": 2.0 + (e + 5) ** 2, "status": "completed"}, None)
    script.run_coord(tmp_path, "muon_rms", threads=1)
    assert "optim.lr=0.03125" in calls[-1] and "optim.adamw_lr=0.00390625" in calls[-1]
    assert "optim.adjust_lr_fn=match_rms_adamw" in calls[-1]
    with pytest.raises(SystemExit, match="--optimizers=adamx"):
        script.optimizer_transfer(tmp_path, optimizers="adamx")


def test_umup_defaults_sweeps_each_multiplier_alone_and_reports_the_defaults_gap(tmp_path, capsys):
    """scripts/umup_defaults.py: runs with one multiplier moved are that multiplier's slice, the default runs
    belong to every slice, a run with two moved is left out; per value the best lr on the seed-mean curve; the
    default's gap is per seed (default at its best lr − best value at its best lr)."""
    import mugpt.studies.umup_defaults as script
    best_log2 = {"residual_mult": 1.0}  # residual_mult's optimum is 2; every other multiplier's is the default 1

    def loss(mults, e, seed):
        off = sum((math.log2(v) - best_log2.get(m, 0.0)) ** 2 for m, v in mults.items())
        return 2.0 + 0.02 * off + 0.05 * (e + 2) ** 2 + 0.01 * seed

    n = 0
    settings = [(None, 1.0)] + [(m, v) for m in ("residual_mult", "loss_softmax_mult") for v in (0.5, 2.0)]
    settings.append(("both", 2.0))
    for moved, value in settings:
        for e in (-3, -2, -1):
            for seed in (0, 1, 2):
                mults = {m: 1.0 for m in script.MULTIPLIERS}
                if moved == "both":
                    mults.update(residual_mult=2.0, loss_softmax_mult=2.0)
                elif moved:
                    mults[moved] = value
                config = {"parametrization": {"name": "umup", **mults}}
                val = 9.0 if moved == "both" else loss(mults, e, seed)
                write_run(tmp_path / "sweep" / str(n), {"parametrization": "umup", "width": 64, "lr": 2.0 ** e,
                          "seed": seed, "val_loss": val, "status": "completed"}, config)
                n += 1
    assert script.umup_defaults([str(tmp_path / "sweep")], tmp_path / "out") == 0
    result = json.loads((tmp_path / "out" / "umup_defaults.json").read_text())
    assert set(result) == set(script.MULTIPLIERS)  # the default runs alone make the unswept ones' slices
    res = result["residual_mult"]
    assert res["best"] == 2.0 and res["gap"]["mean"] == pytest.approx(0.02) and res["gap"]["sd"] == pytest.approx(0)
    assert res["values"]["1.0"]["log2_lr"] == -2 and res["values"]["0.5"]["loss"]["mean"] == pytest.approx(2.01 + 0.08)
    assert res["values"]["1.0"]["loss"]["mean"] == pytest.approx(2.03)  # the default: residual_mult one octave off
    lsm = result["loss_softmax_mult"]
    assert lsm["best"] == 1.0 and lsm["gap"]["mean"] == 0.0
    assert lsm["values"]["2.0"]["loss"]["mean"] == pytest.approx(2.05)
    assert result["ffn_act_mult"]["values"].keys() == {"1.0"}
    text = capsys.readouterr().out
    assert "| residual_mult |" in text and "9.000" not in text  # the two-moved runs are in no slice
    assert (tmp_path / "out" / "umup_defaults.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="no summary.json|not found"):
        script.umup_defaults([str(tmp_path / "missing")])


def test_compare_sweeps_pairs_seeds_and_reports_the_gap_and_each_best_lr(tmp_path, capsys):
    """scripts/compare_sweeps.py: OTHER = BASE + 0.01 nats at every lr plus, under µP, a best lr one octave up
    (OTHER given as two folders, µP's runs in the second).
    The seed noise is common to both (paired), so the gap's CI is 0 where the curves differ by a constant; a failed
    run is counted and left out of its lr's gap; the per-width table finds each sweep's best lr and the cost at
    BASE's."""
    from mugpt.studies.compare_sweeps import compare_sweeps

    def loss(vertex, e, seed):
        return 2.0 + 0.05 * (e - vertex) ** 2 + 0.03 * seed

    for seed in (0, 1, 2):
        for e in range(-9, -3):
            for param, width, vertex_base, vertex_other in (("sp", 64, -7, -7), ("mup", 256, -6, -5)):
                summary = {"parametrization": param, "width": width, "lr": 2.0 ** e, "seed": seed,
                           "status": "completed"}
                write_run(tmp_path / "base" / f"{param}{e}_{seed}",
                          {**summary, "val_loss": loss(vertex_base, e, seed)}, None)
                failed = param == "sp" and e == -4 and seed == 2
                other = {**summary, "val_loss": None if failed else loss(vertex_other, e, seed) + 0.01,
                         "status": "failed" if failed else "completed"}
                write_run(tmp_path / ("other2" if param == "mup" else "other") / f"{param}{e}_{seed}", other, None)
    write_run(tmp_path / "other2" / "sp_wide", {"parametrization": "sp", "width": 512, "lr": 0.01, "seed": 0,
                                                "val_loss": 2.0, "status": "completed"}, None)  # not in BASE: left out
    assert compare_sweeps([tmp_path / "base"], [tmp_path / "other", tmp_path / "other2"], ("bf16", "fp8"),
                          tmp_path / "out") == 0
    result = json.loads((tmp_path / "out" / "compare.json").read_text())
    gaps = {(g["series"], g["width"], g["log2_lr"]): g["gap"] for g in result["gaps"]}
    assert len(gaps) == 12 and ("sp", 512, math.log2(0.01)) not in gaps
    assert gaps[("sp", 64, -7.0)]["mean"] == pytest.approx(0.01) and gaps[("sp", 64, -7.0)]["sd"] == pytest.approx(0)
    failed = next(g for g in result["gaps"] if g["series"] == "sp" and g["log2_lr"] == -4.0)
    assert failed["diverged"] == [0, 1] and failed["other"]["mean"] == math.inf
    assert failed["gap"]["n"] == 2 and failed["gap"]["mean"] == pytest.approx(0.01)  # over the seeds both finished
    # µP: the other curve's vertex one octave up: at lr 2^-6 it pays 0.05·1 - 0.05·0 + 0.01
    assert gaps[("mup", 256, -6.0)]["mean"] == pytest.approx(0.06)
    best = {b["series"]: b for b in result["best"]}
    assert best["mup"]["base_log2_lr"] == -6 and best["mup"]["other_log2_lr"] == -5
    assert best["mup"]["gap_at_base_lr"]["mean"] == pytest.approx(0.06)
    assert best["sp"]["base_loss"]["mean"] == pytest.approx(2.03)
    assert best["sp"]["base_loss"]["sd"] == pytest.approx(0.03)
    text = capsys.readouterr().out
    assert "| mup | 256 | −6 | −5 |" in text and "| fp8 − bf16 at bf16's lr |" in text
    assert (tmp_path / "out" / "compare.png").stat().st_size > 0
    done = run_script("compare_sweeps", str(tmp_path / "base"), str(tmp_path / "nowhere"))
    assert done.returncode == 2 and f"sweep folder not found: {tmp_path / 'nowhere'}" in done.stderr
