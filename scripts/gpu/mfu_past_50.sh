#!/usr/bin/env bash
# Issue 18's GPU measurement, prepared for a session that is lent a GPU (about 8 minutes on one H200 or H100).
# Run from the repository root through the device tool with the wheels carried:
#   here:  pip download --no-deps -d wheels liger-kernel   (plus its deps if the GPU image lacks them)
#   there: bash scripts/gpu/mfu_past_50.sh          (carry: ["wheels"]; results come back as $OUT/mfu.tar.gz)
# What it does: the GPU tests of the loss implementations (fused == full, SP and µP, tied and untied), then
# the trainer's rows on GPT-2 124M (bf16-mixed, compile=default, block 1024, logger=csv), most wanted first:
# full, fused and fused+fp8 (these two 200 steps at the same batch and seed: the fp8 loss parity), chunked,
# fused at batch 96. Each run's summary.json (tokens/s, peak memory, logits memory) and log go into one
# tarball, re-packed after every row; a row that would end past BUDGET seconds (default 540, under the device
# tool's 600 s limit) is skipped and says so in rows.txt, so a slow machine still returns what it measured.
# MFU is read from the logs' perf/mfu against the card's peak (mugpt.training.callbacks.PEAK_FLOPS); the table and the
# goals met or not come back as mfu_table.md (scripts/gpu/mfu_table.py, which also reads a results folder here).
# EXTRA=1 instead runs the full row with compile=max-autotune-no-cudagraphs and with coordinate-descent
# tuning (a second call). DRY=1 prints the commands instead of running them (how it was checked on a CPU).
WHEELS="liger-kernel"
source "$(dirname "$0")/common.sh" mfu
BUDGET=${BUDGET:-540}
ROW_SECONDS=${ROW_SECONDS:-110}  # compile + 60 steps on an H200, with margin; a 200-step row takes ~20 s more
run timeout 120 python -m pytest -q -m gpu tests/test_loss_impl.py -p no:cacheprovider 2>&1 | tee "$RES/pytest_gpu.log"
COMMON=(model=gpt2 precision=bf16-mixed compile=default trainer.max_steps=60 eval_every=60 logger=csv
        checkpoint.every_n_steps=0 trainer.log_every_n_steps=10 data.val_batches=2)
PARITY="trainer.max_steps=200 eval_every=200 data.val_batches=8"  # later overrides win in Hydra
# row name : extra overrides (batch 64 fit the full loss in 41.7 GB on an H200; the others free the logits)
ROWS=("full:data.batch_size=64"
      "fused:data.batch_size=64 model.loss_impl=fused $PARITY"
      "fused_fp8:data.batch_size=64 model.loss_impl=fused precision=fp8 $PARITY"
      "chunked:data.batch_size=64 model.loss_impl=chunked"
      "fused_b96:data.batch_size=96 model.loss_impl=fused")
if [ "${EXTRA:-0}" = 1 ]; then
  ROWS=("full_nocg:data.batch_size=64 compile=max-autotune-no-cudagraphs"
        "full_cdt:data.batch_size=64 compile.coordinate_descent_tuning=true")
fi
for row in "${ROWS[@]}"; do
  name=${row%%:*}; extra=${row#*:}
  if [ "$((SECONDS + ROW_SECONDS))" -gt "$BUDGET" ]; then
    echo "$name skipped: ${SECONDS}s used of BUDGET=${BUDGET}s" >> "$RES/rows.txt"; continue
  fi
  # the SM clock and power while the row runs: MFU against the clock the card held (an H100 at its power cap)
  nvidia-smi --query-gpu=clocks.sm,power.draw --format=csv -lms 500 > "$RES/$name.clocks.csv" 2>/dev/null &
  sampler=$!
  # shellcheck disable=SC2086
  run timeout 150 python src/train.py "${COMMON[@]}" $extra "hydra.run.dir=$RES/$name" > "$RES/$name.log" 2>&1
  echo "$name rc=$? at ${SECONDS}s" >> "$RES/rows.txt"
  kill "$sampler" 2>/dev/null
  pack > /dev/null
done
[ "${DRY:-0}" = 1 ] || python scripts/gpu/mfu_table.py "$RES" > "$RES/mfu_table.log" 2>&1
pack
