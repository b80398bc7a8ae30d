#!/usr/bin/env bash
# Issue 15's GPU depth-transfer sweep, prepared for a session that is lent a GPU (about 8 minutes of one H200).
# Run from the repository root through the device tool:  bash scripts/gpu/mutransfer_depth.sh
# α ∈ {0, 1} × depth {2, 4, 8, 16} × lr 2^-11..2^-7 × seeds {0, 1} = 80 runs (about 6 s each on an H200: estimated, not run) of conf/experiment/
# mutransfer_depth_gpu.yaml in one Hydra multirun (one process: no per-run start-up), then the report with
# confidence intervals. Everything comes back as $OUT/depth.tar.gz. DRY=1 prints the commands instead.
source "$(dirname "$0")/common.sh" depth
run timeout 540 python src/train.py -m +experiment=mutransfer_depth_gpu parametrization.depth_alpha=0,1 \
  model.n_layer=2,4,8,16 "lr_log2=range(-11,-6)" seed=0,1 logger=none checkpoint.every_n_steps=0 \
  "hydra.sweep.dir=$RES/sweep" > "$RES/sweep.log" 2>&1
echo "sweep rc=$?" >> "$RES/rc.txt"
run python scripts/mutransfer_report.py "$RES/sweep" --axis model.n_layer --group parametrization.depth_alpha \
  --out "$RES/report" > "$RES/report.txt" 2>&1
pack
