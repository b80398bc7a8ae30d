"""Loss landscape of one or two trained runs: `python scripts/loss_landscape.py ckpt=PATH [key=value ...]`.

    python scripts/loss_landscape.py ckpt=/tmp/ls_sp ckpt2=/tmp/ls_mup resolution=21 span=1.0 batches=4 \
        seed=0 out=scripts/results/landscape

The loss along one random direction (1-D) and on the plane of two (2-D) around the trained weights, with
filter-normalised directions (Li et al. 2018), on `batches` fixed validation batches of each run's own data
(batches = the run's data.val_batches reproduces its logged validation loss at the centre).
ckpt, ckpt2: run directories or .ckpt files; with ckpt2 the runs are drawn side by side.
resolution: odd, points per axis (the 2-D grid has resolution^2); span: the axes run over [-span, span].
out: where landscape_1d.csv, landscape_2d.csv, landscape_1d.png and landscape_2d.png go
(default: a landscape/ folder in the first run's directory). device: cpu, cuda or auto.
threads: torch CPU threads (default: torch's choice); threads=1 is often fastest for tiny models on a busy CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from mugpt.inspection import load_run, optional, parse_key_values
from mugpt.landscape import check_options, compute_landscape, format_summary, write_landscape

OPTIONS = {
    "ckpt": (str, None),
    "ckpt2": (optional(str), None),
    "resolution": (int, 21),
    "span": (float, 1.0),
    "batches": (int, 4),
    "seed": (int, 0),
    "out": (optional(str), None),
    "device": (str, "auto"),
    "threads": (optional(int), None),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__)
        return 0
    try:  # every check before the first evaluation: a bad option is one line, not a traceback
        args = parse_key_values(argv, OPTIONS, required=["ckpt"])
        check_options(args["resolution"], args["span"], args["batches"])
        if args["threads"] is not None and args["threads"] < 1:
            raise ValueError(f"threads={args['threads']}: must be a positive integer")
        runs = [load_run(c, args["device"]) for c in (args["ckpt"], args["ckpt2"]) if c]
        for run in runs:
            run.data_config  # the validation data comes from config.yaml beside the checkpoint: raises if absent
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args["threads"]:
        torch.set_num_threads(args["threads"])
    out = Path(args["out"]) if args["out"] else runs[0].run_dir / "landscape"
    results = []
    for run in runs:
        print(f"{run.label} ({run.description}) on {run.device}: {args['resolution']} + {args['resolution']}^2 "
              f"points x {args['batches']} batches ...", flush=True)
        results.append(compute_landscape(run, args["resolution"], args["span"], args["batches"], args["seed"]))
    paths = write_landscape(results, out)
    print(format_summary(results))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
