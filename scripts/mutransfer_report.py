"""µTransfer report of a finished sweep: `python scripts/mutransfer_report.py SWEEP_DIR [--out DIR]`.

Reads every job's summary.json under SWEEP_DIR and writes mutransfer.csv, mutransfer.png (validation loss
vs log2 learning rate, one curve per width, SP and µP side by side) and mutransfer.json; prints the best
learning rate per width, its shift across widths, and the donor→target transfer regret.
"""

import argparse
import sys

from mugpt.mutransfer import report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="a Hydra multirun directory (or any folder of runs with summary.json)")
    parser.add_argument("--out", default=None, help="where to write the report (default: SWEEP_DIR)")
    parser.add_argument("--title", default="", help="figure title")
    parser.add_argument("--keys", default="", help="config keys to add as CSV columns, comma-separated "
                        "(e.g. model.init_std,parametrization.output_mult)")
    parser.add_argument("--wandb", action="store_true",
                        help="also log the figure and tables to W&B (offline without a key)")
    args = parser.parse_args(argv)
    try:
        keys = [k.strip() for k in args.keys.split(",") if k.strip()]
        result = report(args.sweep_dir, args.out, title=args.title, keys=keys)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    statuses = {}
    for r in result["rows"]:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    print(f"{len(result['rows'])} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())))
    print(result["text"])
    out = result["output_dir"]
    print(f"wrote {out / 'mutransfer.csv'}, {out / 'mutransfer.png'}, {out / 'mutransfer.json'}")
    if args.wandb:
        from mugpt.run import publish_to_wandb

        local = publish_to_wandb("mutransfer_report", out, [out / "mutransfer.png"], [out / "mutransfer.csv"],
                                 {"sweep_dir": str(args.sweep_dir)})
        print(f"logged to W&B: {local}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
