"""The report: the machine's environment, the table and the overheads as markdown, and the table's notes."""

from __future__ import annotations

import datetime
import math
import os
import platform

import torch

from mugpt.studies.benchmark.config import BenchConfig
from mugpt.studies.benchmark.hardware import _median, bf16_native, device_name, peak_flops, tf32_changes_matmuls


def environment(cfg: BenchConfig, machine: str | None) -> dict:
    device = torch.device(cfg.device)
    import lightning

    return {
        "date": datetime.date.today().isoformat(), "machine": machine, "device": cfg.device,
        "device_name": device_name(device), "torch": torch.__version__, "lightning": lightning.__version__,
        "python": platform.python_version(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "bf16_native": bf16_native(device),
        "tf32_changes_matmuls": tf32_changes_matmuls(device), "peak_flops": peak_flops(device),
        "malloc_heap_reuse": all(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _fmt(value: float | None, spec: str, none: str = "n/a") -> str:
    return none if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def table_markdown(rows: list[dict], env: dict) -> str:
    clocks = any(r.get("sm_clock_mhz") is not None for r in rows)  # measured on GPUs only
    lines = ["| # | row | vocab | AdamW | ms/step | speedup vs prev. | vs baseline | tokens/s | MFU | peak mem (MB) |"
             + (" SM clock (MHz) | power (W) |" if clocks else ""),
             "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if clocks else "")]
    for i, r in enumerate(rows):
        name = r["name"]
        if r.get("error"):
            lines.append(f"| {i} | {name} | {r['vocab']} | {r['optimizer'] or '-'} | failed: "
                         f"{r['error'].splitlines()[-1][:80]} | - | - | - | - | - |" + (" - | - |" if clocks else ""))
            continue
        if r["key"] == "tf32" and not env.get("tf32_changes_matmuls", True):
            name += " (no-op here: results bit-identical)"
        if r["key"] == "bf16" and not env.get("bf16_native", True) and r.get("carried") is False:
            name += " (no native bf16: not carried into later rows)"
        prev = (f"{r['speedup_vs_parent']:.2f}x vs #{r['parent']}" if r["speedup_vs_parent"] is not None else "-")
        base = f"{r['speedup_vs_baseline']:.2f}x" if r["speedup_vs_baseline"] is not None else "-"
        mfu = _fmt(100 * r["mfu"] if r["mfu"] is not None else None, ".1f") + ("%" if r["mfu"] is not None else "")
        lines.append(f"| {i} | {name} | {r['vocab']} | {r['optimizer']} | {r['ms_per_step']:.0f} | {prev} | "
                     f"{base} | {r['tokens_per_s']:,.0f} | {mfu} | "
                     f"{_fmt(r['peak_memory_mb'], ',.0f')} |"
                     + (f" {_fmt(r.get('sm_clock_mhz'), '.0f')} | {_fmt(r.get('power_w'), '.0f')} |" if clocks else ""))
    return "\n".join(lines)


def overheads_markdown(result: dict) -> str:
    out = []
    lp = result.get("lightning_vs_plain")
    if lp:
        out.append(
            f"- **Lightning vs plain loop** ({lp['precision']}, {lp['blocks']} interleaved block pairs of "
            f"{lp['block_steps']} steps): plain {lp['plain_ms_per_step']:.1f} ms/step, Lightning "
            f"{lp['lightning_ms_per_step']:.1f} ms/step; ratio Lightning/plain **{lp['ratio']:.3f}** (median of "
            f"pairs; pairs range {lp['pair_ratio_min']:.3f}-{lp['pair_ratio_max']:.3f}, ratio of medians "
            f"{lp['ratio_of_medians']:.3f}); goal <= 1.02: **{'met' if lp['goal_met'] else 'not met'}**. "
            f"Loss after {lp['steps']} steps: Lightning {lp['loss_lightning']:.6f}, plain {lp['loss_plain']:.6f} "
            f"(max |diff| over all steps {lp['max_abs_loss_diff']:.2e}).")
    ms = result.get("mup_vs_sp")
    if ms:
        out.append(
            f"- **µP vs SP** (plain loop, base_width {ms['base_width']}, width {ms['width']}, {ms['blocks']} "
            f"alternating blocks of {ms['block_steps']} steps per arm): SP {ms['sp_ms_per_step']:.1f} ms/step, µP "
            f"{ms['mup_ms_per_step']:.1f} ms/step; ratio µP/SP **{ms['ratio']:.3f}** (pairs range "
            f"{ms['pair_ratio_min']:.3f}-{ms['pair_ratio_max']:.3f}, ratio of medians {ms['ratio_of_medians']:.3f}); "
            f"goal <= 1.02: **{'met' if ms['goal_met'] else 'not met'}**. Loss after {ms['steps']} steps: "
            f"SP {ms['loss_sp']:.4f}, µP {ms['loss_mup']:.4f}.")
    return "\n".join(out)


def render_markdown(result: dict) -> str:
    env, cfg = result["environment"], result["config"]
    machine = env.get("machine") or (f"{env['cpu_count']}-core CPU" if cfg["device"] == "cpu" else env["device_name"])
    load = ""
    if env.get("loadavg_start") and env.get("loadavg_end"):
        load = (f"; 1-min load average {env['loadavg_start'][0]:.1f} at the start, {env['loadavg_end'][0]:.1f} at "
                f"the end (other processes share the machine when it exceeds {env['cpu_count']})")
    clip = (cfg.get("optim") or {}).get("grad_clip")
    parts = [f"# Training-efficiency benchmark ({cfg['device']}, preset {cfg['preset']})", "",
             f"Measured {env['date']} on {machine} ({env['device_name']}, torch {env['torch']}, "
             f"torch threads: {env['torch_threads']}{load}) with `{result['command']}`, "
             f"{result['run_seconds'] / 60:.1f} min in all. Model: GPT-2 BPE vocab ({cfg['vocab_size']}), width "
             f"{cfg['width']}, {cfg['n_layer']} layers, {cfg['n_head']} heads, block {cfg['block_size']}, batch "
             f"{cfg['batch_size']} ({cfg['batch_size'] * cfg['block_size']} tokens per optimizer step), random "
             f"tokens, AdamW (conf/optim/adamw.yaml, gradient norm clipped at {clip})."]
    if result.get("table"):
        parts += ["", table_markdown(result["table"], env)]
    if result.get("notes"):
        parts += [""] + [f"- {n}" for n in result["notes"]]
    over = overheads_markdown(result)
    if over:
        parts += ["", "Overheads (interleaved, ratios from the same run):", "", over]
    return "\n".join(parts) + "\n"


def table_notes(result: dict) -> list[str]:
    env, rows = result["environment"], result.get("table") or []
    notes = ["Rows are cumulative: each adds its trick to the row named in 'speedup vs prev.'; ms/step is the "
             "median over interleaved rounds, speedups the median of per-round ratios. Every step is the "
             "trainer's (mugpt.core.recipe.train_step), gradient-norm clipping included."]
    if not env["tf32_changes_matmuls"] and any(r["key"] == "tf32" for r in rows):
        notes.append("TF32: torch.set_float32_matmul_precision('high') changes nothing on this device (a test "
                     "matmul is bit-identical), so rows 0 and 1 run the same computation: their ratio is the noise "
                     "floor.")
    if any(r["key"] == "bf16" and r.get("carried") is False for r in rows):
        notes.append("bf16: this CPU has no native bf16 (oneDNN reports none), so autocast runs emulated bf16 "
                     "matmuls; the row is measured but later rows are built without it (strict_cumulative=true keeps "
                     "it).")
    compiled = [r for r in rows if r.get("compile_s") is not None]
    if compiled:
        notes.append("torch.compile (inductor): compile time excluded from ms/step; first step took "
                     + ", ".join(f"{r['first_step_s']:.0f} s (#{rows.index(r)})" for r in compiled) + ".")
    kinds = {r["memory_kind"] for r in rows}
    if "peak_rss_since_warmup" in kinds or "peak_rss_lifetime" in kinds:
        base = [r["rss_after_import_mb"] for r in rows if r.get("rss_after_import_mb")]
        notes.append("Peak memory on CPU: the row's own process's peak resident set during its timed steps "
                     "(VmHWM reset after warm-up), including about "
                     f"{_median(base) if base else float('nan'):.0f} MB that Python + torch hold after import; "
                     "glibc keeps freed buffers in the heap (the same settings as src/train.py), so this is the heap's "
                     "high-water mark rather than the live tensors.")
    elif "cuda_max_allocated" in kinds:
        notes.append("Peak memory: torch.cuda.max_memory_allocated over the timed steps of the row's own process.")
    sources = {r.get("clock_source") for r in rows if r.get("clock_samples")}
    if sources:
        notes.append(f"SM clock and power: medians of readings every 0.5 s while the row was timed "
                     f"(from {', '.join(sorted(sources))}).")
    if env["peak_flops"] is None:
        notes.append("MFU: n/a, no known peak FLOP/s for this device (callbacks.PEAK_FLOPS lists GPUs only).")
    else:
        notes.append(f"MFU = tokens/s x {result['flops_per_token']:.3g} FLOPs/token (unpadded model, no recompute) "
                     f"/ {env['peak_flops']:.3g} FLOP/s (dense bf16 peak, also for the fp32/TF32 rows).")
    return notes
