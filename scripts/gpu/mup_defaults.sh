#!/usr/bin/env bash
# µP's defaults on a GPU, prepared for a session that is lent one (about 8 minutes of one H200: estimated from the
# session-6 sweep of the same experiment on an H100, not run). Run from the repository root through the device tool:
#   bash scripts/gpu/mup_defaults.sh
# 1. µP with its defaults (hidden init 0.5/sqrt(256), embedding std 0.08, output_alpha 128), conf/experiment/
#    mutransfer_gpu.yaml: widths 256 (donor) / 512 / 1024 / 2048 × lr 2^-10..2^-7 × seeds 0, 1, 2 (48 runs):
#    is wider better, and does the donor's best lr stay the best at 2048?
# 2. SP tuned at 2048: init std 0.01 / 0.02 × lr 2^-13..2^-11 (seed 0), the fair comparison for the µP target.
# Everything comes back as $OUT/mup_defaults.tar.gz. DRY=1 prints the commands instead.
source "$(dirname "$0")/common.sh" mup_defaults
COMMON=(logger=none checkpoint.every_n_steps=0)
run timeout 330 python src/train.py -m +experiment=mutransfer_gpu parametrization=mup model.width=256,512,1024,2048 \
  "lr_log2=range(-10,-6)" seed=0,1,2 "${COMMON[@]}" "hydra.sweep.dir=$RES/mup" > "$RES/mup.log" 2>&1
echo "mup rc=$?" >> "$RES/rc.txt"
run timeout 150 python src/train.py -m +experiment=mutransfer_gpu parametrization=sp model.width=2048 \
  model.init_std=0.01,0.02 "lr_log2=range(-13,-10)" seed=0 "${COMMON[@]}" "hydra.sweep.dir=$RES/sp" > "$RES/sp.log" 2>&1
echo "sp rc=$?" >> "$RES/rc.txt"
run python scripts/mutransfer_report.py "$RES/mup" "$RES/sp" --out "$RES/report" --keys model.init_std \
  > "$RES/report.txt" 2>&1
pack
