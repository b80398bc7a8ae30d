"""The coordinate check, reduced: three widths 16x apart, three records (0, 1, 2 AdamW updates), one seed; and its
depth axis: depths 1, 2, 4 at width 32, µP at depth_alpha 0 against CompleteP (depth_alpha 1)."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from mugpt.data.windows import load_tokens
from mugpt.studies.coord_check import (
    CSV_COLUMNS,
    DEPTH_CSV_COLUMNS,
    DEPTH_KINDS,
    DEPTH_SLOPE_COLUMNS,
    aggregate_by_kind,
    check_coord_check,
    compute_depth_slopes,
    compute_slopes,
    run_coord_check,
)

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("coord_check")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("coord_check", overrides=["widths=[64,256,1024]", "seeds=[0]", "steps=3",
                                                 f"output_dir={out}"])
    GlobalHydra.instance().clear()
    return run_coord_check(cfg, tokens=load_tokens("byte"))


def slopes_after_training(result, parametrization):
    """{(step, module): slope} for steps >= 1, hidden modules only (the logits are checked separately)."""
    return {(s["step"], s["module"]): s["slope"] for s in result["slopes"]
            if s["parametrization"] == parametrization and s["step"] >= 1 and s["module"] != "logits"}


@pytest.mark.slow
def test_mup_activations_are_flat_in_width(result):
    slopes = slopes_after_training(result, "mup")
    assert len(slopes) == 2 * 7  # 2 steps x (embedding + 2 blocks x attn/mlp/residual)
    worst = max(slopes, key=lambda k: abs(slopes[k]))
    # measured: max |slope| 0.11 (block1.attn after 1 step); SP's smallest block slope is above 0.6
    assert abs(slopes[worst]) < 0.25, (worst, slopes[worst])


@pytest.mark.slow
def test_sp_activations_blow_up_with_width(result):
    slopes = slopes_after_training(result, "sp")
    residual = [v for (step, module), v in slopes.items() if module.endswith("residual")]
    # measured: 1.1-1.9, i.e. the residual stream grows ~width^1.5 after two updates at a fixed lr
    assert min(residual) > 0.6, residual
    assert max(slopes.values()) > 1.5


@pytest.mark.slow  # widths to 1024; the same claim at widths 64-256: test_coord_check_small.py
def test_logits_under_mup_do_not_grow_with_width(result):
    logits = {s["step"]: s["slope"] for s in result["slopes"]
              if s["parametrization"] == "mup" and s["module"] == "logits"}
    assert logits[0] == pytest.approx(-0.5, abs=0.1)  # readout 1/m at init: logits vanish as width^-1/2
    assert abs(logits[2]) < 0.2                        # after updates they are Θ(1)


@pytest.mark.slow  # widths to 1024; the CSV and figure at widths 64-256: test_coord_check_small.py
def test_csv_and_figure_are_written(result):
    out = result["output_dir"]
    with open(out / "coord_check.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 2 * 3 * 3 * 8  # parametrizations x widths x steps x modules (one seed)
    assert {r["parametrization"] for r in rows} == {"sp", "mup"}
    assert {int(r["width"]) for r in rows} == {64, 256, 1024}
    assert all(float(r["l1"]) > 0 for r in rows)
    png = (out / "coord_check.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_slope_of_a_power_law_is_its_exponent():
    rows = [{"parametrization": "x", "width": w, "step": 0, "module": "m", "seed": s, "l1": 3.0 * w ** 0.5}
            for w in (64, 128, 256) for s in (0, 1)]
    (slope,) = compute_slopes(rows)
    assert slope["slope"] == pytest.approx(0.5) and slope["seed_sd"] == pytest.approx(0.0)
    assert slope["n_seeds"] == 2


def test_coord_check_needs_two_widths(tmp_path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("coord_check", overrides=["widths=[64]", f"output_dir={tmp_path}"])
    GlobalHydra.instance().clear()
    with pytest.raises(ValueError, match="widths"):
        run_coord_check(cfg, tokens=load_tokens("byte"))


@pytest.mark.slow
def test_coord_check_refuses_a_bad_width_or_option_before_any_model_trains(tmp_path):
    """`python scripts/coord_check.py widths=[64,65]` names the width in one line, and leaves nothing written."""
    for override, message in [("widths=[64,65]", "error: model.width=65 is not divisible by model.n_head=4"),
                              ("parametrizations.mup.output_mult=0",
                               "error: parametrization.output_mult must be positive")]:
        proc = subprocess.run([sys.executable, str(Path(CONF_DIR).parent / "scripts" / "coord_check.py"), override,
                               f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith(message)
        assert "Traceback" not in proc.stderr and not (tmp_path / "run" / "coord_check.csv").exists()


# ------------------------------------------------------------------------------------------ depth axis
DEPTHS = [1, 2, 4]


def compose_coord_check(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("coord_check", overrides=list(overrides))
    GlobalHydra.instance().clear()
    return cfg


# GPT-2's init for both depth parametrizations: with it the blocks are a small part of the stream at init, so the
# depth rules' own effects show alone (µP's defaults, below, make the blocks a visible part of it).
GPT2_INIT = [f"depth_parametrizations.{p}.{option}" for p in ("mup_alpha0", "completep")
             for option in ("hidden_init_scale=null", "embedding_init_std=null", "output_mult=1")]


def _depth_check(tmp_path_factory, *overrides):
    out = tmp_path_factory.mktemp("coord_check_depth")
    cfg = compose_coord_check("axis=depth", f"depths={DEPTHS}", "seeds=[0]", "steps=3", "model.width=32",
                              "model.block_size=16", f"output_dir={out}", *overrides)
    return run_coord_check(cfg, tokens=load_tokens("byte"))


@pytest.fixture(scope="module")
def depth_result(tmp_path_factory):
    return _depth_check(tmp_path_factory, *GPT2_INIT)


@pytest.fixture(scope="module")
def depth_result_defaults(tmp_path_factory):
    return _depth_check(tmp_path_factory)


def depth_slopes(result, parametrization: str, quantity: str, step: int) -> dict[str, float]:
    """{module kind: slope vs log2 depth} of one parametrization, quantity and step."""
    return {s["module"]: s["slope"] for s in result["slopes"]
            if (s["parametrization"], s["quantity"], s["step"]) == (parametrization, quantity, step)}


def test_depth_csv_has_the_depth_column_and_both_sizes(depth_result):
    out = depth_result["output_dir"]
    with open(out / "coord_check_depth.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == DEPTH_CSV_COLUMNS
    assert len(rows) == 2 * 3 * 3 * 6  # parametrizations x depths x steps x module kinds (one seed)
    assert {r["parametrization"] for r in rows} == {"mup_alpha0", "completep"}
    assert sorted({int(r["depth"]) for r in rows}) == DEPTHS
    assert {r["module"] for r in rows} == set(DEPTH_KINDS)
    assert all(float(r["l1"]) > 0 for r in rows)
    assert all(float(r["update_l1"]) == 0.0 for r in rows if r["step"] == "0")  # nothing has moved yet
    moved = [float(r["update_l1"]) for r in rows if r["step"] != "0"]
    assert all(0 < v < 100 for v in moved), (min(moved), max(moved))  # finite and positive
    with open(out / "coord_check_depth_slopes.csv", newline="") as f:
        slopes = list(csv.DictReader(f))
    assert tuple(slopes[0]) == DEPTH_SLOPE_COLUMNS
    # l1 at 3 steps and update_l1 at steps 1 and 2, per parametrization and kind
    assert len(slopes) == 2 * (3 + 2) * 6 and {s["quantity"] for s in slopes} == {"l1", "update_l1"}
    png = (out / "coord_check_depth.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_depth_rules_are_the_identity_at_base_depth(depth_result):
    """base_depth null = the smallest depth, where CompleteP is width-only µP: the same model, the same numbers."""
    at_base = {}
    for r in depth_result["rows"]:
        if r["depth"] == min(DEPTHS):
            at_base.setdefault(r["parametrization"], {})[(r["step"], r["module"])] = (r["l1"], r["update_l1"])
    assert len(at_base["completep"]) == 3 * 6
    assert at_base["completep"] == at_base["mup_alpha0"]


def test_completep_branches_are_flat_in_depth_at_init(depth_result):
    """At init, α = 0 keeps GPT-2's 1/sqrt(2L) on the residual projections, so each block's attention and MLP
    output shrinks as L^-1/2; CompleteP holds that init at base depth (its 1/L multiplier comes after the hook).
    The stream itself starts flat under both: the 1/sqrt(2L) init is what keeps it flat under α = 0."""
    alpha0, alpha1 = (depth_slopes(depth_result, p, "l1", 0) for p in ("mup_alpha0", "completep"))
    # measured: α = 0 attn -0.48, mlp -0.51; α = 1 attn +0.01, mlp -0.01; residual -0.00 and -0.02
    for kind in ("attn", "mlp"):
        assert alpha0[kind] == pytest.approx(-0.5, abs=0.12), (kind, alpha0[kind])
        assert abs(alpha1[kind]) < 0.15, (kind, alpha1[kind])
    assert abs(alpha0["residual"]) < 0.25 and abs(alpha1["residual"]) < 0.25
    assert abs(alpha0["embedding"]) < 0.08 and abs(alpha1["embedding"]) < 0.08  # measured +0.02: no depth in it


def test_completep_updates_are_flat_in_depth_and_width_only_mup_updates_grow(depth_result):
    """After one and two updates, the residual stream the last block hands on has moved by an amount that grows
    with depth under α = 0 (L blocks, each moved by Θ(lr)) and stays put under CompleteP."""
    for step in (1, 2):
        alpha0, alpha1 = (depth_slopes(depth_result, p, "update_l1", step) for p in ("mup_alpha0", "completep"))
        # measured: α = 0 +0.67 and +0.69; α = 1 -0.16 and -0.11 (steps 1 and 2); over seeds 0-2 ± 0.14
        assert alpha0["residual_last"] > 0.45, (step, alpha0)
        assert abs(alpha1["residual_last"]) < 0.3, (step, alpha1)


@pytest.mark.slow  # a second depth check; the depth rules stay fast above, on depth_result
def test_with_mups_defaults_completep_keeps_updates_flat_but_its_stream_starts_smaller_when_deeper(
        depth_result_defaults):
    """With µP's shipped init (σ 0.5/sqrt(width), 3-4x GPT-2's at this width) the blocks are a visible part of the
    stream at init, so CompleteP's 1/L branch multiplier makes a deeper model's stream start smaller (L
    uncorrelated branches, each × 1/L: ~L^-1/2 together), while width-only µP's stays flat. The update rules
    still do their job: α = 0's stream update grows with depth, CompleteP's does not."""
    init0, init1 = (depth_slopes(depth_result_defaults, p, "l1", 0) for p in ("mup_alpha0", "completep"))
    # measured (width 32, depths 1-4, seed 0): α = 0 residual_last -0.03; CompleteP -0.35 (block mean -0.42)
    assert abs(init0["residual_last"]) < 0.15 and init1["residual_last"] < -0.2
    for step in (1, 2):
        alpha0, alpha1 = (depth_slopes(depth_result_defaults, p, "update_l1", step)
                          for p in ("mup_alpha0", "completep"))
        # measured: α = 0 +0.47 and +0.52; CompleteP -0.23 and -0.19
        assert alpha0["residual_last"] > 0.3 and abs(alpha1["residual_last"]) < 0.3, (step, alpha0, alpha1)
        assert alpha0["residual_last"] - alpha1["residual_last"] > 0.5


def test_aggregate_by_kind_averages_blocks_and_keeps_the_last_residual():
    values = {"embedding": 1.0, "logits": 5.0}
    for i in range(12):  # block10 and block11 sort before block2 as strings: the last block is found by number
        values |= {f"block{i}.attn": float(i), f"block{i}.mlp": 2.0 * i, f"block{i}.residual": 10.0 + i}
    kinds = aggregate_by_kind(values)
    assert kinds == {"embedding": 1.0, "attn": 5.5, "mlp": 11.0, "residual": 15.5, "residual_last": 21.0,
                     "logits": 5.0}


def test_depth_slopes_of_power_laws_are_their_exponents():
    rows = [{"parametrization": "x", "depth": d, "step": t, "module": "m", "seed": s, "l1": 2.0 * d ** 0.25,
             "update_l1": 3.0 * d ** -1.0 if t else 0.0} for d in (2, 4, 8) for t in (0, 1) for s in (0, 1)]
    slopes = {(s["quantity"], s["step"]): s for s in compute_depth_slopes(rows)}
    assert set(slopes) == {("l1", 0), ("l1", 1), ("update_l1", 1)}  # no update slope at step 0
    assert slopes[("l1", 0)]["slope"] == pytest.approx(0.25) and slopes[("update_l1", 1)]["slope"] == pytest.approx(-1)
    assert slopes[("update_l1", 1)]["n_seeds"] == 2 and slopes[("update_l1", 1)]["seed_sd"] == pytest.approx(0)


@pytest.mark.parametrize("overrides, message", [
    (["axis=height"], "axis must be one of width, depth, got 'height'"),
    (["axis=depth", "depths=[4]"], "depths: a depth coordinate check needs at least two distinct depths"),
    (["axis=depth", "depths=[4,4]"], "depths: a depth coordinate check needs at least two distinct depths"),
    (["axis=depth", "depths=[0,2]"], "depths: 0 is not a positive integer"),
    (["axis=depth", "depths=[2,-4]"], "depths: -4 is not a positive integer"),
    (["axis=depth", "depths=4"], "depths must be a list"),
    (["axis=depth", "optim=sgd"], "parametrization.depth_alpha=1: the 'sgd' optimizer family has no depth rule"),
])
def test_coord_check_refuses_a_bad_axis_or_depth_in_one_line(tmp_path, overrides, message):
    cfg = compose_coord_check(*overrides, f"output_dir={tmp_path}")
    with pytest.raises(ValueError) as info:
        check_coord_check(cfg)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match=message.split(":")[0]):  # the run refuses it too, before training
        run_coord_check(cfg, tokens=load_tokens("byte"))
    assert not list(tmp_path.glob("*.csv"))


def test_width_axis_ignores_the_depth_options(tmp_path):
    """axis=width (the default) validates and runs what it always did: bad depths are not its business."""
    check_coord_check(compose_coord_check("depths=[0]", f"output_dir={tmp_path}"))


@pytest.mark.slow
def test_depth_coord_check_script_refuses_bad_depths_before_any_model_trains(tmp_path):
    proc = subprocess.run([sys.executable, str(Path(CONF_DIR).parent / "scripts" / "coord_check.py"), "axis=depth",
                           "depths=[8]", f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: depths: a depth coordinate check needs at least")
    assert "Traceback" not in proc.stderr and not list((tmp_path / "run").glob("*.csv"))
