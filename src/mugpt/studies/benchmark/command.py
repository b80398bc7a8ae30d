"""One benchmark run from its checked options: the table, the overheads, the report on screen and on disk."""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import asdict
from typing import Any

import torch

from mugpt.studies.benchmark.config import Log, build_rows
from mugpt.studies.benchmark.options import BenchOptions
from mugpt.studies.benchmark.overheads import compare_lightning_plain, compare_mup_sp
from mugpt.studies.benchmark.rows import run_table
from mugpt.studies.benchmark.tables import environment, render_markdown, table_notes


def run_benchmark(opts: BenchOptions, command: str = "python scripts/benchmark.py", log: Log = print) -> dict:
    """Measure what `opts` asks for, print the markdown report and write OUT_DIR/{device}-{preset}.json and .md."""
    started = time.perf_counter()
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    cfg = opts.bench
    cfg.apply_threads()
    env = environment(cfg, opts.machine)
    log(f"{env['date']}  {env['device_name']}  torch {env['torch']}  threads {env['torch_threads']}  "
        f"load {env['loadavg_start']}")
    log(f"model: width {cfg.width}, {cfg.n_layer} layers, block {cfg.block_size}, batch {cfg.batch_size} "
        f"({cfg.tokens_per_step} tokens/step)")
    result: dict[str, Any] = {"command": command, "environment": env, "config": asdict(cfg),
                              "flops_per_token": cfg.useful_flops_per_token(), "settings": opts.settings()}
    if not opts.skip_table:
        carry = opts.strict_cumulative or env["bf16_native"]
        rows = build_rows(opts.tricks, carry_bf16=carry)
        log(f"\ncumulative tricks table: {len(rows)} rows, {opts.rounds} interleaved rounds"
            + (", one process per row" if opts.isolate else ""))
        table = run_table(cfg, rows, rounds=opts.rounds, block_seconds=opts.block_seconds, warmup=opts.warmup,
                          isolate=opts.isolate, log=log)
        for r in table:
            r["carried"] = not (r["key"] == "bf16" and not carry)
        result["table"] = table
    if not opts.skip_overheads:
        log("\noverheads:")
        kw = dict(warmup=opts.warmup, blocks=opts.overhead_blocks, block_steps=opts.overhead_block_steps, log=log)
        result["lightning_vs_plain"] = compare_lightning_plain(cfg, **kw)
        result["mup_vs_sp"] = compare_mup_sp(cfg, **kw)
    result["run_seconds"] = time.perf_counter() - started
    env["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["notes"] = table_notes(result) if result.get("table") else []
    markdown = render_markdown(result)
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    stem = opts.out_dir / (f"{torch.device(cfg.device).type}-{cfg.preset}"
                           + (f"-threads{cfg.threads}" if cfg.threads else ""))
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    stem.with_suffix(".md").write_text(markdown)
    log("\n" + markdown)
    log(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.md')} ({result['run_seconds']:.0f} s)")
    return result
