"""Are u-µP's default multipliers near the swept optimum? `python scripts/umup_defaults.py SWEEP_DIR [...] [--out DIR]`.

u-µP's claim (Blake et al. 2025) is that its five multipliers (conf/parametrization/umup.yaml, all 1 by default) are
near-optimal as they stand and, being nearly independent, can be swept one at a time. The SWEEP_DIRs hold
one-at-a-time sweeps: runs of parametrization=umup where at most one multiplier differs from 1, over a few
learning rates and seeds, e.g. (the CPU µTransfer experiment's scale, untied and unclipped as u-µP runs):

    for m in residual_mult residual_attn_ratio attn_softmax_mult ffn_act_mult loss_softmax_mult; do
      python src/train.py -m +experiment=mutransfer_lr parametrization=umup "~parametrization.base_width" \\
        model.tie_embeddings=false optim.grad_clip=null lr_log2=-3,-2,-1 seed=0,1,2 \\
        parametrization.$m=0.25,0.5,2,4 logger=none hydra.sweep.dir=umup_defaults/$m
    done
    python src/train.py -m ... (the same, without a multiplier override) hydra.sweep.dir=umup_defaults/default
    # where a best value or lr sits on an edge, extend it into a new folder, e.g. for the README's table:
    #   ... lr_log2=-2,-1,0 parametrization.residual_mult=0.0625,0.125 hydra.sweep.dir=umup_defaults/residual_low
    #   ... lr_log2=0 parametrization.residual_mult=0.25,0.5 hydra.sweep.dir=umup_defaults/residual_lr0
    #   ... lr_log2=0 hydra.sweep.dir=umup_defaults/default_lr0
    python scripts/umup_defaults.py umup_defaults --out umup_defaults

For each multiplier and value it takes the best learning rate on the seed-mean curve, and reports the seed-mean
loss there, and the default's gap: per seed, the default's loss at its best lr minus the best value's loss at its
best lr (mean ± 95% CI over seeds; positive = the default is worse). Writes umup_defaults.md, .csv, .json and
umup_defaults.png (loss against each multiplier, mean ± sd over seeds) into --out.
"""

import argparse
import sys

from mugpt.studies.umup_defaults import umup_defaults


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dirs", nargs="+", metavar="SWEEP_DIR")
    parser.add_argument("--out", default=None, help="where the report goes (default: the first SWEEP_DIR)")
    args = parser.parse_args(argv)
    return umup_defaults(args.sweep_dirs, args.out)


if __name__ == "__main__":
    sys.exit(main())
