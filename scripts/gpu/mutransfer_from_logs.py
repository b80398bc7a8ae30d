"""Rebuild this folder's CSV, figure and numbers from the device logs in logs/.

The runs' summary.json files stayed on the GPU machine (its file transfer drops deep folders), so the rows
come from the training log lines: each job's overrides, then its `val_loss ... after N steps` line (a run
that hit max_loss also logs `run diverged`). Run from the repository root:
    python scripts/gpu/mutransfer_from_logs.py
"""
import csv
import json
import math
import re
from pathlib import Path

from mugpt.studies.transfer import analyse, format_report, plot

HERE = Path(__file__).resolve().parents[2] / "results" / "mutransfer_gpu"  # the folder this rebuilds
DEFAULTS = {"model.init_std": 0.02, "parametrization.output_mult": 1.0, "seed": 1337}


def runs() -> list[dict]:
    rows = []
    for log in sorted((HERE / "logs").glob("*.txt")):
        job = None
        for line in log.read_text().splitlines():
            overrides = re.search(r"(\+experiment=mutransfer_gpu.*)$", line)  # a job's banner or its command
            if overrides:
                job = dict(o.split("=", 1) for o in overrides.group(1).split() if "=" in o)
                job["diverged"] = False
                continue
            if "run diverged" in line and job is not None:
                job["diverged"] = True
            result = re.search(r"val_loss ([0-9.]+) .*after (\d+) steps", line)
            if result and job is not None:
                rows.append(_row(job, float(result.group(1)), int(result.group(2)), log.name))
                job = None
    return rows


def _row(job: dict, val_loss: float, steps: int, log: str) -> dict:
    get = lambda key: float(job.get(key, DEFAULTS[key]))  # noqa: E731
    return {"parametrization": job["parametrization"], "width": int(job["model.width"]),
            "lr": 2.0 ** int(job["lr_log2"]), "seed": int(get("seed")), "init_std": get("model.init_std"),
            "output_mult": get("parametrization.output_mult"), "val_loss": val_loss,
            "status": "diverged" if job["diverged"] else "completed", "steps": steps,
            "device": "H100 80GB HBM3" if log.startswith("part1_") else "H200", "log": log}


if __name__ == "__main__":
    rows = runs()
    with open(HERE / "mutransfer_gpu.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: (r["parametrization"], r["width"], r["init_std"],
                                                     r["output_mult"], r["seed"], r["lr"])))
    # Figure 1: the learning-rate sweep at the default multipliers (part 1, and SP's runs past the grid edge);
    # the donor sweep's repeat of µP 256 at 2^-9 stays out of it (it is the run-to-run noise estimate)
    sweep = [r for r in rows if r["log"].startswith("part1_") or r["log"].endswith("_edge.txt")]
    plot(sweep, HERE / "mutransfer_gpu.png",
         title="µTransfer on a GPU: GPT-2 BPE, 4 layers, 300 steps, widths 256→2048 (default multipliers)")
    analysis = analyse(sweep)
    (HERE / "mutransfer_gpu.json").write_text(json.dumps(analysis, indent=2, default=str))
    print(f"{len(rows)} runs ({len(sweep)} in the learning-rate sweep)\n" + format_report(analysis))
    print("\nother runs (tuned multipliers, second seed):")
    for r in sorted(rows, key=lambda r: (r["parametrization"], r["width"], r["seed"], r["lr"])):
        if r not in sweep:
            print(f"  {r['parametrization']:>4} width {r['width']:>4} lr 2^{math.log2(r['lr']):.0f} "
                  f"init {r['init_std']:<5} out {r['output_mult']:<3} seed {r['seed']:<4} "
                  f"{r['status']:<9} {r['val_loss']:.4f}")
