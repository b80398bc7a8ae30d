"""The efficiency benchmark (mugpt.studies.benchmark, scripts/benchmark.py) on a tiny model for a few steps: the
structure and sanity of its results, never wall-clock thresholds (timings on a shared CPU say nothing in a test)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from mugpt.core.model import GPTConfig
from mugpt.core.recipe import Recipe, split_batch, train_step
from mugpt.studies import benchmark as bench
from mugpt.training.callbacks import peak_flops_for

ROOT = Path(__file__).resolve().parents[1]

# GPT-2's vocabulary, so the padded-vocab row means what it means at full size; everything else tiny.
TINY = bench.BenchConfig.from_preset("tiny")
# compile and bf16 are slow on the CPU
TRICKS = ("tf32", "pad_vocab", "fused_adamw", "chunked_loss", "checkpointing", "accumulation")
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


def reference_losses(recipe: Recipe, batches: list, steps: int, micro_batches: int, max_steps: int) -> list[float]:
    """`train_step` on a recipe built from scratch, seeded as the benchmark seeds its models."""
    torch.manual_seed(TINY.seed)
    model = recipe.build_model()
    optimizer, scheduler = recipe.build_optimizer(model, max_steps)
    return [float(train_step(model, optimizer, scheduler, split_batch(batches[i % len(batches)], micro_batches),
                             grad_clip=recipe.grad_clip).loss) for i in range(steps)]


@pytest.mark.parametrize("key", [None, "accumulation"])
def test_row_step_is_the_recipes_train_step(key):
    """A table row trains exactly what `train_step` trains on the same recipe (the trainer's clip included)."""
    row = {r.key: r for r in bench.build_rows(["pad_vocab", "accumulation"])}[key]
    runner = bench.RowRunner(TINY, row)
    losses = []
    for _ in range(3):
        runner.step()
        losses.append(float(runner.last_loss))
    recipe = Recipe(GPTConfig(**TINY.model_dict(pad_vocab=row.has("pad_vocab"))), {"name": "sp"},
                    TINY.optim_config(fused=False))
    assert recipe.grad_clip == 1.0  # conf/optim/adamw.yaml's clip: the rows clip as the trainer does
    assert losses == reference_losses(recipe, bench.make_batches(TINY, "cpu"), 3, row.micro_batches,
                                      bench.SCHEDULE_STEPS)


@pytest.mark.parametrize("parametrization", [{"name": "sp"}, {"name": "mup", "base_width": TINY.width // 2}])
def test_plain_loop_is_the_recipes_train_step(parametrization):
    pool = bench.make_batches(TINY, "cpu")
    loop = bench.plain_arm(TINY, parametrization, bench.batch_loader(pool, 3), 3, bf16=False)
    loop.run(3)
    recipe = Recipe(GPTConfig(**TINY.model_dict()), parametrization, TINY.optim_config("auto"))
    assert [float(v) for v in loop.losses] == reference_losses(recipe, pool, 3, 1, 3)


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
    lr = TINY.optim["lr"]
    assert r["group_lrs"] == {"sp": [lr], "mup": [lr / 2, lr]}  # µP: hidden matrices at lr / m, m = 2
    assert r["param_groups"]["mup"] == r["param_groups"]["sp"]  # the same groups (one per kind), other rates
    assert len(r["mup_block_ms"]) == len(r["sp_block_ms"]) == 2 and r["ratio"] > 0
    assert all(math.isfinite(r[k]) and abs(r[k] - math.log(50257)) < 0.5 for k in ("loss_sp", "loss_mup"))


def test_report_files(table, lightning_vs_plain, mup_vs_sp, tmp_path):
    env = bench.environment(TINY, "test machine")
    assert env["date"] and env["torch"] == torch.__version__ and env["torch_threads"] >= 1
    result = {"command": "python scripts/benchmark.py preset=tiny", "environment": env,
              "config": asdict(TINY), "flops_per_token": TINY.useful_flops_per_token(), "table": table,
              "lightning_vs_plain": lightning_vs_plain, "mup_vs_sp": mup_vs_sp, "run_seconds": 1.0}
    result["notes"] = bench.table_notes(result)
    md = bench.render_markdown(result)
    assert md.count("\n| ") == len(table) + 1  # header + one line per row (the separator starts "|---")
    assert "Lightning/plain" in md and "µP/SP" in md and "n/a" in md
    path = tmp_path / "r.json"
    path.write_text(json.dumps(result, default=str))
    assert json.loads(path.read_text())["table"][3]["vocab"] == 50304


@pytest.mark.slow
def test_row_in_its_own_process_reports_memory():
    """The isolated path: a spawned worker builds, warms up, runs a block and reports its peak memory."""
    rows = bench.build_rows([])
    (r,) = bench.run_table(TINY, rows, rounds=1, block_seconds=0.0, warmup=1, isolate=True, log=QUIET)
    assert r["error"] is None and r["ms_per_step"] > 0
    assert r["steps"] == 1 + int(r["rewarm_step"]) + r["steps_per_block"]  # warm-up, re-warm?, timed
    assert r["peak_memory_mb"] > r["rss_after_import_mb"] > 0
    assert r["memory_kind"] in ("peak_rss_since_warmup", "peak_rss_lifetime")


def test_clock_sampler_files_readings_under_the_row_being_timed():
    """On a GPU the table records the SM clock and power while each row is timed; here a stand-in reader
    (as NVML would answer) and a stand-in command (printing what nvidia-smi prints) take the GPU's place."""
    assert bench.parse_nvidia_smi("1656, 695.32\n") == (1656.0, 695.32)
    assert bench.parse_nvidia_smi("[N/A], [N/A]") is None and bench.parse_nvidia_smi("") is None
    smi = bench.nvidia_smi_reader(command=[sys.executable, "-c", "print('1656, 695.32')"])
    for read in (lambda: (1656.0, 695.32), smi):
        with bench.ClockSampler(read, interval=0.02) as clocks:
            time.sleep(0.2)  # nothing is being timed: nothing is recorded
            clocks.label = 3
            deadline = time.time() + 20
            while not clocks.samples.get(3) and time.time() < deadline:
                time.sleep(0.05)
            clocks.label = None
        assert clocks.summary(3)["sm_clock_mhz"] == 1656.0 and clocks.summary(3)["power_w"] == 695.32
        assert set(clocks.samples) == {3} and clocks.summary(0) == {"sm_clock_mhz": None, "power_w": None,
                                                                   "clock_samples": 0}
    with bench.ClockSampler(lambda: (1656.0, 695.32), interval=0.02, enabled=False) as off:  # a CPU run
        off.label = 0
        time.sleep(0.2)
    assert not off.samples


def test_gpu_reader_prefers_nvml_in_process(monkeypatch):
    """torch.cuda.clock_rate (MHz) and power_draw (mW) read NVML in this process; the first source that answers
    is used, one that raises (torch without nvidia-ml-py, no driver) or is absent is skipped."""
    monkeypatch.setattr(torch.cuda, "clock_rate", lambda device=None: 1755, raising=False)
    monkeypatch.setattr(torch.cuda, "power_draw", lambda device=None: 695320, raising=False)
    assert bench.torch_nvml_reader(0)() == (1755.0, 695.32)

    def broken(index):
        def read():
            raise ModuleNotFoundError("nvidia-ml-py does not seem to be installed")
        return read

    found = bench.gpu_reader(0, {"absent": lambda index: None, "broken": broken,
                                 "torch.cuda": bench.torch_nvml_reader, "never": broken})
    assert found is not None and found[0] == "torch.cuda" and found[1]() == (1755.0, 695.32)
    assert bench.gpu_reader(0, {"absent": lambda index: None, "broken": broken}) is None
    assert bench.nvidia_smi_reader(command=["no-such-nvidia-smi"]) is None


def test_visible_gpu_follows_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,GPU-1234")
    assert bench._visible_gpu(0) == "3" and bench._visible_gpu(1) == "GPU-1234"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert bench._visible_gpu(2) == "2"


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H100 NVL", 835), ("NVIDIA H200", 989),
    ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA A100 80GB PCIe", 312), ("NVIDIA A10G", 125), ("NVIDIA L4", 121),
    ("NVIDIA L40S", 362), ("NVIDIA GeForce RTX 4090", 165), ("Tesla T4", None), ("AMD Instinct MI300X", None)])
def test_peak_flops_by_device_name(name, tflops):
    """The longest matching name wins: 'H100 PCIe' is not the SXM card's 989, 'A100' is not an A10's 125."""
    assert peak_flops_for(name) == (tflops * 1e12 if tflops else None)
    assert bench.peak_flops(torch.device("cpu")) is None


def test_table_shows_clock_columns_only_when_measured(table):
    assert all(r["sm_clock_mhz"] is None for r in table)  # CPU: no sampler runs
    assert "SM clock" not in bench.table_markdown(table, {})
    with_clocks = [{**r, "sm_clock_mhz": 1656.0, "power_w": 695.0} for r in table]
    header, rule, first = bench.table_markdown(with_clocks, {}).splitlines()[:3]
    assert header.endswith("| SM clock (MHz) | power (W) |") and first.endswith("| 1656 | 695 |")
    assert header.count("|") == rule.count("|") == first.count("|")


def run_cli(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUGPT_NO_REEXEC": "1"}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark.py"), *overrides, f"hydra.run.dir={cwd}"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("override, message", [
    ("preset=nope", "error: preset=nope: unknown preset (choose one of tiny, small, gpt2)"),
    ("rows=[tf32,warp_speed]", "error: rows: unknown trick(s) ['warp_speed']"),
])
@pytest.mark.slow
def test_cli_refuses_a_bad_option_in_one_line(override, message, tmp_path):
    proc = run_cli(override, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(message)
    assert not list(tmp_path.glob("*.json"))  # refused before anything was measured


@pytest.mark.slow
def test_cli_refuses_a_missing_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = run_cli("device=cuda", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: device=cuda: no CUDA GPU on this machine (use device=cpu)"


def test_gpu_mfu_table_reads_the_rows_and_judges_the_goals(tmp_path, capsys):
    """scripts/gpu/mfu_table.py on a results folder shaped like mfu_past_50.sh's: MFU is the mean of the logged
    windows after the first, MFU at the held clock scales it by max / median sampled clock, the fp8 speed-up and
    loss gap are fused_fp8 against fused, a row without a summary and a skipped row are listed as not measured."""
    from conftest import run_script

    (tmp_path / "gpu.csv").write_text("name, clocks.max.sm [MHz], power.limit [W]\nNVIDIA H200, 1980 MHz, 700.00 W\n")
    rows = {"full": (64, 400_000.0, [0.20, 0.44, 0.46], 3.41, 6.00),  # batch, tokens/s, MFU windows, val, peak GB
            "fused": (64, 450_000.0, [0.1, 0.50, 0.52], 3.40, 5.50),
            "fused_fp8": (64, 585_000.0, [0.1, 0.66, 0.68], 3.39, 5.51)}
    for name, (batch, tps, mfus, val, peak_gb) in rows.items():
        run = tmp_path / name
        (run / "csv" / "version_0").mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps({"status": "completed", "steps": 60, "tokens_per_sec": tps,
                                                      "val_loss": val, "peak_memory_mb": peak_gb * 1024,
                                                      "logits_memory_mb": 100.0}))
        (run / "config.yaml").write_text(f"data:\n  batch_size: {batch}\nmodel:\n  loss_impl: full\n"
                                         f"precision:\n  lightning: bf16-mixed\n  float8: {name == 'fused_fp8'}\n")
        metrics = "step,perf/mfu,train/loss\n" + "".join(f"{10 * (i + 1)},{m},3.5\n9,,3.6\n"
                                                          for i, m in enumerate(mfus))
        (run / "csv" / "version_0" / "metrics.csv").write_text(metrics)
    (tmp_path / "full.clocks.csv").write_text("clocks.sm [MHz], power.draw [W]\n1980 MHz, 500 W\n1800 MHz, 690 W\n"
                                              "1800 MHz, 699 W\n")
    (tmp_path / "rows.txt").write_text("full rc=0 at 100s\nfused rc=0 at 230s\nfused_fp8 rc=0 at 360s\n"
                                       "chunked rc=124 at 510s\nfused_b96 skipped: 510s used of BUDGET=540s\n")
    done = run_script("gpu/mfu_table", str(tmp_path))
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "mfu_table.json").read_text())
    by_row = {r["row"]: r for r in result["rows"]}
    assert set(by_row) == {"full", "fused", "fused_fp8"}
    assert by_row["full"]["mfu"] == pytest.approx(0.45)  # (0.44 + 0.46) / 2: the first window left out
    assert by_row["full"]["mfu_at_held_clock"] == pytest.approx(0.45 * 1980 / 1800)
    assert math.isnan(by_row["fused"]["mfu_at_held_clock"])  # no clock samples for it
    assert by_row["fused_fp8"]["float8"] and by_row["full"]["peak_memory_gb"] == pytest.approx(6.0)
    mfu_goal = next(g for g in result["goals"] if g["goal"].startswith("MFU"))
    assert mfu_goal["measured"] == pytest.approx(0.51) and mfu_goal["met"] is True  # fused; fp8's 0.67 not counted
    fp8_speed = next(g for g in result["goals"] if "tokens/s" in g["goal"])
    assert fp8_speed["measured"] == pytest.approx(1.3) and fp8_speed["met"] is True
    fp8_loss = next(g for g in result["goals"] if "val loss" in g["goal"])
    assert fp8_loss["measured"] == pytest.approx(-0.01) and fp8_loss["met"] is True
    text = done.stdout
    assert "NVIDIA H200" in text and "not measured: fused_b96 skipped" in text
    assert "not measured: chunked rc=124 at 510s (no summary.json: see chunked.log)" in text
