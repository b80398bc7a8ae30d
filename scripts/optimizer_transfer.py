"""µTransfer for every optimizer of the zoo, SP against µP, with error bars over seeds:
`python scripts/optimizer_transfer.py [--out DIR] [--stage all|sweep|report] [--optimizers a,b] [--seeds 0,1,2]
[--jobs 2] [--launcher ray]`.

For each optimizer and parametrization (SP and µP; with `--parametrizations sp,mup,umup` also u-µP, for AdamW, the
one optimizer its rules are written for), two Hydra multiruns of src/train.py at the CPU µTransfer experiment's
scale (`+experiment=mutransfer_lr`: byte-level Shakespeare, 2 layers, 200 steps, clip 1, no weight decay):
  1. the donor, width 64, over the optimizer's log2 learning-rate grid (its declaration's in mugpt.core.optim, 8
     octaves around the zoo's defaults; muon_rms: mugpt.studies.optimizer_transfer.OPTIONS), every seed;
  2. the target, width 256 (4x), over five octaves around the donor's best lr on its seed-mean curve: one up and
     three down for SP (whose best lr is expected to fall with width), two each way for µP.
Each pair's target starts as soon as its donor is done; `--jobs` pairs run at once, each job with one torch
thread. `--launcher ray` runs each sweep's jobs side by side instead (conf/hydra/launcher/ray.yaml; its keys through
--set, e.g. --set hydra.launcher.ray.remote.num_gpus=0.25): one pair at a time, or --jobs pairs on a Ray cluster
joined with --set hydra.launcher.ray.init.address=auto.
A sweep folder holding all its runs is kept and skipped, so an interrupted call picks up where it stopped.
`--stage coord` runs the coordinate check (scripts/coord_check.py) with each optimizer, widths 64-256, 3 seeds, 4
updates, SP and µP at µP's donor best lr (before the sweeps: 0.01; SGD 0.25, Muon 0.02), into --out/coord/NAME;
the report adds its slopes.
The report (`--stage report`) reads every folder and writes into --out:
  optimizer_transfer.md   the table: per optimizer and parametrization, the donor's and target's best log2 lr,
                          the shift (octaves) and the transfer regret (nats) with 95% CIs over seeds, the target's
                          best loss (mean ± sd over seeds), a mark where a best lr sits on its grid's edge, and
                          where the coordinate check ran, the largest |log-log slope| of a hidden activation
                          against width after the last update (0 = width-independent, µP's promise);
  optimizer_transfer.csv  every run; optimizer_transfer.json  the analysis;
  optimizer_transfer.png  loss against log2 lr, one panel per optimizer (SP dashed, µP solid, u-µP dotted; donor
                          and target);
  optimizer_transfer_summary.png  shift and regret per optimizer with their CIs, the parametrizations side by side.
Adam is not swept: with the experiment's weight decay 0 it is AdamW step for step (same val loss to the last
digit, checked), so its row would repeat AdamW's.
"""

import argparse
import sys

from mugpt.studies.optimizer_transfer import LAUNCHER_PLUGINS, NOT_SWEPT, default_optimizers, grids, optimizer_transfer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="optimizer_transfer", help="folder of the sweeps and the report")
    parser.add_argument("--stage", choices=("all", "sweep", "coord", "report"), default="all",
                        help="all = sweep, coord and report")
    parser.add_argument("--optimizers", default=default_optimizers(),
                        help=f"comma-separated, from {', '.join(grids())} "
                             f"(default: all but {', '.join(NOT_SWEPT)})")
    parser.add_argument("--parametrizations", default="sp,mup",
                        help="sp, mup, umup (u-µP: AdamW only; the others are skipped under it)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=None,
                        help="sweeps at once (default 2, one torch thread each; 1 with --launcher)")
    parser.add_argument("--launcher", choices=sorted(LAUNCHER_PLUGINS),
                        help="hydra/launcher for every sweep: its jobs side by side (ray) or as SLURM jobs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a training override for every sweep (repeatable), e.g. --set trainer.max_steps=20")
    args = parser.parse_args(argv)
    optimizer_transfer(args.out, args.stage, args.optimizers, args.parametrizations, args.seeds, args.jobs,
                       args.launcher, args.set)
    return 0


if __name__ == "__main__":
    sys.exit(main())
