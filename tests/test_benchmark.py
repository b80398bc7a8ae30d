"""scripts/benchmark.py on a tiny model for a few steps: the structure and sanity of its results, never
wall-clock thresholds (timings on a shared CPU say nothing in a test)."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import benchmark as bench  # noqa: E402

# GPT-2's vocabulary, so the padded-vocab row means what it means at full size; everything else tiny.
TINY = bench.BenchConfig.from_preset("tiny")
TRICKS = ("tf32", "pad_vocab", "fused_adamw", "checkpointing", "accumulation")  # compile and bf16 are slow on CPU
QUIET = lambda *_: None  # noqa: E731


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def table():
    rows = bench.build_rows(TRICKS)
    return bench.run_table(TINY, rows, rounds=2, block_seconds=0.0, warmup=1, isolate=False, log=QUIET)


@pytest.fixture(scope="module")
def lightning_vs_plain():
    return bench.compare_lightning_plain(TINY, warmup=1, blocks=2, block_steps=1, log=QUIET)


@pytest.fixture(scope="module")
def mup_vs_sp():
    return bench.compare_mup_sp(TINY, warmup=1, blocks=2, block_steps=1, log=QUIET)


def test_rows_are_cumulative():
    rows = bench.build_rows()
    assert [r.key for r in rows] == [None, *bench.TRICKS]
    for i, row in enumerate(rows[1:], start=1):
        assert row.parent == i - 1 and set(row.tricks) == set(rows[i - 1].tricks) | {row.key}
    # without native bf16 the bf16 row is measured but later rows extend the row before it
    rows = bench.build_rows(carry_bf16=False)
    bf16 = next(i for i, r in enumerate(rows) if r.key == "bf16")
    assert rows[bf16 + 1].parent == bf16 - 1 and "bf16" not in rows[bf16 + 1].tricks
    assert all("bf16" not in r.tricks for r in rows[bf16 + 1:])
    with pytest.raises(ValueError, match="unknown trick"):
        bench.build_rows(["tf32", "warp_speed"])


def test_table_rows(table):
    assert [r["key"] for r in table] == [None, *TRICKS]
    for r in table:
        assert r["error"] is None
        assert r["ms_per_step"] > 0 and all(ms > 0 for ms in r["ms_per_step_rounds"])
        assert r["tokens_per_step"] == TINY.batch_size * TINY.block_size  # accumulation keeps tokens per step
        assert math.isclose(r["tokens_per_s"], r["tokens_per_step"] / (r["ms_per_step"] / 1000), rel_tol=1e-9)
        assert r["speedup_vs_baseline"] > 0 and math.isfinite(r["final_loss"])
        assert r["mfu"] is None  # no known peak FLOP/s on CPU
    by_key = {r["key"]: r for r in table}
    assert by_key[None]["vocab"] == 50257 and by_key["tf32"]["vocab"] == 50257
    assert by_key["pad_vocab"]["vocab"] == 50304 and by_key["accumulation"]["vocab"] == 50304
    assert by_key[None]["optimizer"] == "foreach" and by_key["fused_adamw"]["optimizer"] == "fused"
    assert by_key["accumulation"]["micro_batches"] == 2 and by_key["accumulation"]["micro_batch_size"] == 2
    assert table[0]["speedup_vs_parent"] is None and table[0]["speedup_vs_baseline"] == 1.0
    # loss at init is about ln(vocab) for every row
    assert all(abs(r["final_loss"] - math.log(50257)) < 0.5 for r in table)


def test_accumulation_matches_one_big_batch():
    """Two half micro-batches with loss/2 take the same optimizer step as the whole batch."""
    rows = {r.key: r for r in bench.build_rows(["accumulation"])}
    whole, halves = bench.RowRunner(TINY, rows[None]), bench.RowRunner(TINY, rows["accumulation"])
    for runner in (whole, halves):
        runner.run(2)
    assert abs(float(whole.last_loss) - float(halves.last_loss)) < 1e-5
    for a, b in zip(whole.model.parameters(), halves.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_lightning_and_plain_loop_agree(lightning_vs_plain):
    r = lightning_vs_plain
    assert r["same_initial_weights"]
    assert r["lightning_steps"] == r["plain_steps"] == r["steps"] == 1 + 2 * 1 + 1
    assert abs(r["loss_lightning"] - r["loss_plain"]) <= 1e-5 and r["max_abs_loss_diff"] <= 1e-5
    assert len(r["lightning_block_ms"]) == len(r["plain_block_ms"]) == 2
    assert r["plain_ms_per_step"] > 0 and r["lightning_ms_per_step"] > 0 and r["ratio"] > 0
    assert math.isclose(r["overhead_pct"], 100 * (r["ratio"] - 1))


def test_mup_vs_sp(mup_vs_sp):
    r = mup_vs_sp
    assert r["base_width"] == TINY.width // 2
    assert r["param_groups"]["mup"] > r["param_groups"]["sp"]  # µP's per-width learning-rate groups
    assert len(r["mup_block_ms"]) == len(r["sp_block_ms"]) == 2 and r["ratio"] > 0
    assert all(math.isfinite(r[k]) and abs(r[k] - math.log(50257)) < 0.5 for k in ("loss_sp", "loss_mup"))


def test_report_files(table, lightning_vs_plain, mup_vs_sp, tmp_path):
    env = bench.environment(TINY, "test machine")
    assert env["date"] and env["torch"] == torch.__version__ and env["torch_threads"] >= 1
    result = {"command": "python scripts/benchmark.py --preset tiny", "environment": env,
              "config": bench.asdict(TINY), "flops_per_token": TINY.useful_flops_per_token(), "table": table,
              "lightning_vs_plain": lightning_vs_plain, "mup_vs_sp": mup_vs_sp, "run_seconds": 1.0}
    result["notes"] = bench.table_notes(result)
    md = bench.render_markdown(result)
    assert md.count("\n| ") == len(table) + 1  # header + one line per row (the separator starts "|---")
    assert "Lightning/plain" in md and "µP/SP" in md and "n/a" in md
    path = tmp_path / "r.json"
    path.write_text(json.dumps(result, default=str))
    assert json.loads(path.read_text())["table"][3]["vocab"] == 50304


def test_row_in_its_own_process_reports_memory():
    """The isolated path: a spawned worker builds, warms up, runs a block and reports its peak memory."""
    rows = bench.build_rows([])
    (r,) = bench.run_table(TINY, rows, rounds=1, block_seconds=0.0, warmup=1, isolate=True, log=QUIET)
    assert r["error"] is None and r["ms_per_step"] > 0
    assert r["steps"] == 1 + int(r["rewarm_step"]) + r["steps_per_block"]  # warm-up, re-warm?, timed
    assert r["peak_memory_mb"] > r["rss_after_import_mb"] > 0
    assert r["memory_kind"] in ("peak_rss_since_warmup", "peak_rss_lifetime")


def test_clock_sampler_files_readings_under_the_row_being_timed():
    """On a GPU the table records the SM clock and power while each row is timed (nvidia-smi's CSV output);
    here a stand-in command prints what nvidia-smi prints."""
    assert bench.ClockSampler.parse("1656, 695.32\n") == (1656.0, 695.32)
    assert bench.ClockSampler.parse("[N/A], [N/A]") is None and bench.ClockSampler.parse("") is None
    fake = [sys.executable, "-c", "print('1656, 695.32')"]
    with bench.ClockSampler(command=fake, interval=0.02) as clocks:
        time.sleep(0.2)  # nothing is being timed: nothing is recorded
        clocks.label = 3
        deadline = time.time() + 20
        while not clocks.samples.get(3) and time.time() < deadline:
            time.sleep(0.05)
        clocks.label = None
    assert clocks.summary(3)["sm_clock_mhz"] == 1656.0 and clocks.summary(3)["power_w"] == 695.32
    assert set(clocks.samples) == {3} and clocks.summary(0) == {"sm_clock_mhz": None, "power_w": None,
                                                               "clock_samples": 0}
    with bench.ClockSampler(command=fake, interval=0.02, enabled=False) as off:  # a CPU run
        off.label = 0
        time.sleep(0.2)
    assert not off.samples


def test_table_shows_clock_columns_only_when_measured(table):
    assert all(r["sm_clock_mhz"] is None for r in table)  # CPU: no sampler runs
    assert "SM clock" not in bench.table_markdown(table, {})
    with_clocks = [{**r, "sm_clock_mhz": 1656.0, "power_w": 695.0} for r in table]
    header, rule, first = bench.table_markdown(with_clocks, {}).splitlines()[:3]
    assert header.endswith("| SM clock (MHz) | power (W) |") and first.endswith("| 1656 | 695 |")
    assert header.count("|") == rule.count("|") == first.count("|")
