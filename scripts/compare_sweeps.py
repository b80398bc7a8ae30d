"""What does one option do to the loss at every learning rate? `python scripts/compare_sweeps.py BASE OTHER`.

BASE and OTHER are two sweeps of the same grid (parametrization × width × lr × seed) that differ in one option,
e.g. the optimizer-transfer sweeps of AdamW run once per precision (README, "FP8's rounding"):

    python scripts/optimizer_transfer.py --out fp8/bf16 --stage sweep --optimizers adamw \\
        --parametrizations sp,mup --set precision=bf16-mixed
    python scripts/optimizer_transfer.py --out fp8/fp8 ... --set precision=fp8-emulated
    python scripts/compare_sweeps.py fp8/bf16 fp8/fp8 --labels bf16,fp8 --out fp8/report

Per (parametrization, width, lr) run in both, the gap OTHER − BASE is taken seed by seed (the same seed draws the
same initialisation and batches in both, so the pair cancels most of the seed noise) and reported as mean ± 95%
CI over the seeds that finished in both; the runs that diverged or failed (+inf in the µTransfer report) are
counted beside it, per sweep. Per (parametrization, width): each sweep's best lr (on its seed-mean curve) and
best loss, and OTHER's gap at BASE's best lr: the price of switching the option without re-tuning.
Writes compare.md, compare.json and compare.png into --out.
"""

import argparse
from pathlib import Path

from mugpt.studies.compare_sweeps import compare_sweeps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="the reference sweep's folder (any depth of summary.json files); several "
                                     "folders read as one sweep: join them with commas")
    parser.add_argument("other", help="the same grid with one option changed (folders as for base)")
    parser.add_argument("--labels", default="base,other", help="two comma-separated names for the table (base,other)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: OTHER's first folder/compare)")
    args = parser.parse_args(argv)
    labels = tuple(args.labels.split(","))
    if len(labels) != 2 or not all(labels):
        parser.error(f"--labels takes two comma-separated names, got {args.labels!r}")
    base, other = ([Path(f) for f in side.split(",")] for side in (args.base, args.other))
    for folder in base + other:
        if not folder.is_dir():
            parser.error(f"sweep folder not found: {folder}")
    return compare_sweeps(base, other, labels, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
