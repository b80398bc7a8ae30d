"""µTransfer report of finished sweeps: `python scripts/mutransfer_report.py SWEEP_DIR [SWEEP_DIR ...] [--out DIR]
[--axis KEY] [--group KEY[,KEY]]`.

Reads every job's summary.json under the SWEEP_DIRs (an experiment is often several multiruns) and writes
mutransfer.csv (one row per run), mutransfer.png (validation loss vs log2 learning rate, one curve per axis
value, mean ± sd over seeds, one panel per series), mutransfer_transfer.png (best log2 lr vs the axis value with
95% CI error bars, one line per series) and mutransfer.json; prints the best learning rate per axis value, its
shift along the axis, and the donor→target transfer regret, each from the seed-mean curves and per seed
(mean ± 95% CI). The axis is the width unless --axis names a config key (model.n_layer, trainer.max_steps,
data.batch_size, ...), read from each run's config.yaml; --group splits each parametrization's runs by more keys
(e.g. parametrization.depth_alpha) into separate series.
"""

import argparse
import sys

from mugpt.studies.transfer import report


def _keys(values: list[str] | None) -> list[str]:
    """`--group a,b --group c` -> [a, b, c]."""
    return [k.strip() for v in values or [] for k in v.split(",") if k.strip()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dirs", nargs="+", metavar="SWEEP_DIR",
                        help="a Hydra multirun directory (or any folder of runs with summary.json); several are read "
                             "as one sweep")
    parser.add_argument("--out", default=None, help="where to write the report (default: SWEEP_DIR; required with "
                                                    "several)")
    parser.add_argument("--axis", default="width",
                        help="the axis transfer is measured along: width (default) or a dotted config key, e.g. "
                             "model.n_layer, trainer.max_steps, data.batch_size (donor: its smallest value, target: "
                             "its largest)")
    parser.add_argument("--group", action="append", default=None,
                        help="config keys that split each parametrization's runs into series, comma-separated or "
                             "repeated (e.g. parametrization.depth_alpha)")
    parser.add_argument("--title", default="", help="figure title")
    parser.add_argument("--keys", default="", help="config keys to add as CSV columns, comma-separated "
                        "(e.g. model.init_std,parametrization.output_mult)")
    parser.add_argument("--wandb", action="store_true",
                        help="also log the figures, tables and loss-vs-lr curves to W&B as a run of job_type report, "
                             "in the sweep's group (offline without a key)")
    args = parser.parse_args(argv)
    try:
        result = report(args.sweep_dirs if len(args.sweep_dirs) > 1 else args.sweep_dirs[0], args.out,
                        title=args.title, keys=_keys([args.keys]), axis=args.axis, group=_keys(args.group))
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    statuses = {}
    for r in result["rows"]:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    print(f"{len(result['rows'])} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())))
    print(result["text"])
    print("wrote " + ", ".join(str(f) for f in result["files"]))
    if args.wandb:
        from mugpt.training.loggers import launch_name, publish_to_wandb

        out = result["output_dir"]
        # one sweep: the report is named after it and joins its runs' group (its launch name, as they derived it)
        sweep = launch_name(args.sweep_dirs[0]) if len(args.sweep_dirs) == 1 else None
        local = publish_to_wandb("report", out, [out / "mutransfer.png", out / "mutransfer_transfer.png"],
                                 [out / "mutransfer.csv"], {"sweep_dir": ", ".join(args.sweep_dirs),
                                                            "axis": args.axis, "group": _keys(args.group)},
                                 name=f"report-{sweep}" if sweep else None, group=sweep, curves=result["curves"])
        print(f"logged to W&B: {local}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
