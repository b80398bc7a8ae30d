"""Data-path benchmark (scripts/data_benchmark.py is its command line, conf/data_benchmark.yaml its options, and its
docstring says what it measures): corpus generation, shard preparation in a child process, and training from
shards against the in-memory cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from mugpt.rundir import read_summary

ROOT = Path(__file__).resolve().parents[3]

PREPARE_CHILD = """
import json, resource, sys, time
from mugpt.data.prepare_shards import PrepareOptions, prepare
t = time.perf_counter()
m = prepare(PrepareOptions(input=sys.argv[1], output=sys.argv[2], workers=int(sys.argv[3]), progress=False))
wall = time.perf_counter() - t
rss = lambda who: resource.getrusage(who).ru_maxrss / 1024
print(json.dumps({"tokens": m["tokens"], "seconds": wall, "rss_main_mb": rss(resource.RUSAGE_SELF),
                  "rss_worker_mb": rss(resource.RUSAGE_CHILDREN)}))
"""


def generate(folder: Path, size_mb: int) -> Path:
    from mugpt.data.text import shakespeare_text

    paragraphs = shakespeare_text().split("\n\n")
    folder.mkdir(parents=True, exist_ok=True)
    rng, target, written, k = np.random.default_rng(0), size_mb * 10**6, 0, 0
    while written < target:
        order = rng.permutation(len(paragraphs))
        text = "\n\n".join(paragraphs[i] for i in order)[: min(8 * 10**6, target - written)]
        (folder / f"part{k:04d}.txt").write_text(text)
        written, k = written + len(text.encode()), k + 1
    return folder


def prepare_once(corpus: Path, out: Path, workers: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run([sys.executable, "-c", PREPARE_CHILD, str(corpus), str(out), str(workers)],
                          capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["tokens_per_sec"] = result["tokens"] / result["seconds"]
    return result


def train_once(run_dir: Path, data: list[str], steps: int, extra: list[str]) -> dict:
    args = [sys.executable, str(ROOT / "src" / "train.py"), *data, f"trainer.max_steps={steps}", f"eval_every={steps}",
            "logger=none", "trainer.enable_progress_bar=false", "checkpoint.every_n_steps=0", *extra,
            f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "offline"})
    if proc.returncode != 0:
        raise RuntimeError(f"training failed: {' '.join(args)}\n{proc.stderr[-3000:]}")
    s = read_summary(run_dir)
    tokens_per_step = s["tokens"] / s["steps"]
    return {"ms_per_step": 1000 * tokens_per_step / s["tokens_per_sec"], "peak_rss_mb": s["peak_memory_mb"],
            "val_loss": s["val_loss"]}


def data_benchmark(cfg: DictConfig) -> dict:
    """The whole benchmark from conf/data_benchmark.yaml's options; returns the report written to data.json."""
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    extra = list(cfg.train_overrides)
    report = {"machine": cfg.machine, "command": " ".join(["python scripts/data_benchmark.py", *sys.argv[1:]]),
              "prepare": [], "train": []}
    for size in cfg.sizes_mb:
        corpus = generate(work / f"corpus{size}", size)
        for workers in cfg.workers:
            r = prepare_once(corpus, work / f"shards{size}", workers)
            r.update(size_mb=size, workers=workers)
            report["prepare"].append(r)
            print(f"prepare {size} MB, {workers} worker(s): {r['tokens']:,} tokens in {r['seconds']:.1f} s = "
                  f"{r['tokens_per_sec']:,.0f} tokens/s; peak RSS main {r['rss_main_mb']:.0f} MB, "
                  f"worker {r['rss_worker_mb']:.0f} MB", flush=True)
    largest = max(cfg.sizes_mb)
    for size in cfg.sizes_mb:
        rounds = cfg.train_rounds if size == largest else 1
        for k in range(rounds):
            for name, data in (("shards", ["data=shards", f"data.path={work / f'shards{size}'}"]),
                               ("cache", ["data=shakespeare"])):
                if name == "cache" and size != largest:
                    continue
                r = train_once(work / f"run-{name}-{size}-{k}", data, cfg.train_steps, extra)
                r.update(data=name, size_mb=size if name == "shards" else None, round=k)
                report["train"].append(r)
                print(f"train {name} ({size} MB)" if name == "shards" else "train cache (Shakespeare, in memory)",
                      f"round {k}: {r['ms_per_step']:.1f} ms/step, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    shard_ms = [r["ms_per_step"] for r in report["train"] if r["data"] == "shards" and r["size_mb"] == largest]
    cache_ms = [r["ms_per_step"] for r in report["train"] if r["data"] == "cache"]
    report["ratio_shards_over_cache"] = float(np.median(shard_ms) / np.median(cache_ms))
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "data.json").write_text(json.dumps(report, indent=1))
    lines = [f"# Data path benchmark ({cfg.machine or 'unnamed machine'})", "", f"`{report['command']}`", "",
             "| corpus | workers | tokens | seconds | tokens/s | peak RSS main | peak RSS worker |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['size_mb']} MB | {r['workers']} | {r['tokens']:,} | {r['seconds']:.1f} | "
              f"{r['tokens_per_sec']:,.0f} | {r['rss_main_mb']:.0f} MB | {r['rss_worker_mb']:.0f} MB |"
              for r in report["prepare"]]
    lines += ["", f"Training, default config, {cfg.train_steps} steps{' ' + ' '.join(extra) if extra else ''}:", "",
              "| data | corpus | round | ms/step | peak RSS | val loss |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['data']} | {str(r['size_mb']) + ' MB' if r['size_mb'] else 'Shakespeare (in memory)'} | "
              f"{r['round']} | {r['ms_per_step']:.1f} | {r['peak_rss_mb']:.0f} MB | {r['val_loss']:.4f} |"
              for r in report["train"]]
    lines += ["", f"ms/step shards ({largest} MB) / in-memory cache, medians: {report['ratio_shards_over_cache']:.3f}"]
    (out / "data.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not cfg.keep:
        shutil.rmtree(work, ignore_errors=True)
    return report
