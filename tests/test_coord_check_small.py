"""The width coordinate check at small widths (64-256, one seed, three steps), for the fast tier: µP's logits
start as width^-1/2 (the readout's 1/m) and are Θ(1) after two updates, and the CSV and figure are written.
tests/test_coord_check.py runs the same check up to width 1024 (slow), where SP's blow-up is measured too."""

import csv

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import CONF_DIR
from mugpt.data.windows import load_tokens
from mugpt.studies.coord_check import CSV_COLUMNS, run_coord_check

WIDTHS = [64, 128, 256]


@pytest.fixture(scope="module")
def small_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("coord_check_small")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("coord_check", overrides=[f"widths={WIDTHS}", "seeds=[0]", "steps=3", f"output_dir={out}"])
    GlobalHydra.instance().clear()
    return run_coord_check(cfg, tokens=load_tokens("byte"))


def test_logits_under_mup_start_as_one_over_sqrt_width_and_stay_flat_after_updates(small_result):
    logits = {(s["parametrization"], s["step"]): s["slope"] for s in small_result["slopes"]
              if s["module"] == "logits"}
    # measured at widths 64-256: µP -0.50 at init and +0.01 after two steps; SP's readout starts at +0.50
    assert logits["mup", 0] == pytest.approx(-0.5, abs=0.1)
    assert abs(logits["mup", 2]) < 0.2  # the bound of the width-1024 check, met here with a wide margin
    assert logits["sp", 0] == pytest.approx(0.5, abs=0.1)


def test_the_width_check_writes_its_csv_and_figure(small_result):
    out = small_result["output_dir"]
    with open(out / "coord_check.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 2 * len(WIDTHS) * 3 * 8  # parametrizations x widths x steps x modules (one seed)
    assert {int(r["width"]) for r in rows} == set(WIDTHS)
    assert all(float(r["l1"]) > 0 for r in rows)
    assert (out / "coord_check.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
