"""Where µP's default init and output multiplier come from: `python scripts/mup_defaults.py NAME=SWEEP_DIR
[NAME=SWEEP_DIR ...] --default C,OUTPUT_MULT [--out DIR]`.

Each SWEEP_DIR is one donor setting's grid (parametrization=mup at its base width, over
parametrization.hidden_init_scale × parametrization.output_mult × lr, any number of seeds). Prints, per setting,
the best loss over the learning rates at each (init scale, output multiplier), and how far the candidate default
is from each setting's own optimum; writes defaults.csv (every run) and defaults.json (the summary) to --out.
"""

import argparse
import json
import sys
from pathlib import Path

from mugpt.mutransfer import INIT_KEYS, defaults_table, read_summaries, write_csv


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("settings", nargs="+", metavar="NAME=SWEEP_DIR", help="one donor grid per setting")
    parser.add_argument("--default", required=True, help="the candidate default: hidden_init_scale,output_mult")
    parser.add_argument("--out", default=None, help="write defaults.csv and defaults.json here")
    args = parser.parse_args(argv)
    try:
        default = tuple(float(x) for x in args.default.split(","))
    except ValueError:
        parser.error(f"--default: expected two numbers 'hidden_init_scale,output_mult', got {args.default!r}")
    if len(default) != len(INIT_KEYS):
        parser.error(f"--default: expected two numbers 'hidden_init_scale,output_mult', got {args.default!r}")
    settings, every = {}, []
    for item in args.settings:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            parser.error(f"{item!r}: expected NAME=SWEEP_DIR")
        if not Path(folder).is_dir():
            parser.error(f"{item}: no such sweep directory {folder}")
        runs = read_summaries(folder, [*INIT_KEYS, "data.tokenizer"])
        runs = [{**r, **{k: float(r[k]) for k in INIT_KEYS if r[k] is not None}} for r in runs
                if r["parametrization"] == "mup"]
        if not runs or any(r[k] is None for r in runs for k in INIT_KEYS):
            parser.error(f"{item}: needs parametrization=mup runs with parametrization.hidden_init_scale set")
        settings[name] = runs
        every += [{**r, "setting": name} for r in runs]
    rows, text = defaults_table(settings, default)
    print(text)
    if args.out:
        out = Path(args.out)
        write_csv(every, out / "defaults.csv", ["setting", *INIT_KEYS, "data.tokenizer"])
        (out / "defaults.json").write_text(json.dumps({"default": dict(zip(INIT_KEYS, default)), "settings": rows},
                                                      indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
