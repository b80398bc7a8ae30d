"""The coordinate check, reduced: three widths 16x apart, three records (0, 1, 2 AdamW updates), one seed."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from mugpt.coord_check import CSV_COLUMNS, compute_slopes, load_tokens, run_coord_check

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


def test_logits_under_mup_do_not_grow_with_width(result):
    logits = {s["step"]: s["slope"] for s in result["slopes"]
              if s["parametrization"] == "mup" and s["module"] == "logits"}
    assert logits[0] == pytest.approx(-0.5, abs=0.1)  # readout 1/m at init: logits vanish as width^-1/2
    assert abs(logits[2]) < 0.2                        # after updates they are Θ(1)


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
