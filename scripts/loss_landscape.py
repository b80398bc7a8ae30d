r"""Loss landscape of one or two trained runs: `python scripts/loss_landscape.py ckpt=PATH [overrides]`
(config: conf/loss_landscape.yaml).

    python scripts/loss_landscape.py ckpt=/tmp/ls_sp ckpt2=/tmp/ls_mup resolution=21 span=1.0 batches=4 \
        seed=0 out=results/landscape

The loss along one random direction (1-D) and on the plane of two (2-D) around the trained weights, with
filter-normalised directions (Li et al. 2018), on `batches` fixed validation batches of each run's own data
(batches = the run's data.val_batches reproduces its logged validation loss at the centre).
ckpt, ckpt2: run directories or .ckpt files; with ckpt2 the runs are drawn side by side.
resolution: odd, points per axis (the 2-D grid has resolution^2); span: the axes run over [-span, span].
out: where landscape_1d.csv, landscape_2d.csv, landscape_1d.png and landscape_2d.png go
(default: a landscape/ folder in the first run's directory). device: cpu, cuda or auto.
threads: torch CPU threads (default: torch's choice); threads=1 is often fastest for tiny models on a busy CPU.
Options are Hydra overrides: a path with a comma or '=' is quoted for Hydra, 'ckpt="runs/a,b"'. Hydra's log
and the options used (.hydra/) go to outputs/loss_landscape/DATE/TIME, or hydra.run.dir=...
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from mugpt.studies.inspection import LoadedRun, check_device, load_run, resolve_checkpoint
from mugpt.studies.inspection import typed_option as option
from mugpt.studies.landscape import check_options, compute_landscape, format_summary, write_landscape


def read_options(cfg: DictConfig) -> dict[str, Any]:
    """The typed, checked options: every refusal here comes before a checkpoint is read."""
    opts = {"ckpt": option(cfg, "ckpt", str), "ckpt2": option(cfg, "ckpt2", str, nullable=True),
            "resolution": option(cfg, "resolution", int), "span": option(cfg, "span", float),
            "batches": option(cfg, "batches", int), "seed": option(cfg, "seed", int),
            "out": option(cfg, "out", str, nullable=True), "device": option(cfg, "device", str),
            "threads": option(cfg, "threads", int, nullable=True)}
    check_options(opts["resolution"], opts["span"], opts["batches"])
    if opts["threads"] is not None and opts["threads"] < 1:
        raise ValueError(f"threads={opts['threads']}: must be a positive integer or null")
    check_device(opts["device"])
    for name in ("ckpt", "ckpt2"):  # both paths exist and hold a checkpoint before the first is read
        try:
            if opts[name]:
                resolve_checkpoint(opts[name])
        except ValueError as exc:  # its message names ckpt=; say which of the two
            raise ValueError(f"{name}={str(exc).removeprefix('ckpt=')}") from None
    return opts


def load_runs(opts: dict[str, Any]) -> list[LoadedRun]:
    runs = [load_run(c, opts["device"]) for c in (opts["ckpt"], opts["ckpt2"]) if c]
    for run in runs:
        _ = run.data_config  # the validation data comes from config.yaml beside the checkpoint: raises if absent
    return runs


def landscape(cfg: DictConfig) -> dict[str, Path]:
    """The script without Hydra's entry point (tests call it with a composed config)."""
    try:  # every check before the first evaluation: a bad option is one line naming it, not a traceback
        opts = read_options(cfg)
        runs = load_runs(opts)
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    out = Path(opts["out"]) if opts["out"] else runs[0].run_dir / "landscape"
    results = []
    for run in runs:
        print(f"{run.label} ({run.description}) on {run.device}: {opts['resolution']} + {opts['resolution']}^2 "
              f"points x {opts['batches']} batches ...", flush=True)
        results.append(compute_landscape(run, opts["resolution"], opts["span"], opts["batches"], opts["seed"]))
    paths = write_landscape(results, out)
    print(format_summary(results))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return paths


@hydra.main(version_base="1.3", config_path="../conf", config_name="loss_landscape")
def main(cfg: DictConfig) -> None:
    landscape(cfg)


if __name__ == "__main__":
    main()
