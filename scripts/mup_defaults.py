"""Where µP's default init and output multiplier come from:
`python scripts/mup_defaults.py NAME=SWEEP_DIR[,SWEEP_DIR...] [NAME=...] --default EMB_STD,C,OUTPUT_MULT [--out DIR]`.

Each NAME's sweep directories hold one donor setting's grid (parametrization=mup at its base width, over
parametrization.embedding_init_std × hidden_init_scale × output_mult × lr, any number of seeds; a key left null
counts as what the run used instead: model.init_std, output_alpha / base_width). Prints, per setting, the best
loss over the learning rates at each combination, and how far the candidate default is from each setting's own
optimum; writes defaults.csv (every run) and defaults.json (the summary) to --out.
"""

import argparse
import json
import sys
from pathlib import Path

from mugpt.mutransfer import INIT_KEYS, defaults_table, read_summaries, write_csv

MODEL_INIT = ("model.init_std", "model.width", "parametrization.base_width", "parametrization.output_alpha")


def with_init_defaults(run: dict) -> dict:
    """A run's three init settings as numbers: a null one is what the run used instead (model.init_std for the
    tables; for the hidden matrices c = model.init_std · sqrt(base_width); output_alpha / base_width for the
    output multiplier)."""
    emb, c, mult = (run[k] for k in INIT_KEYS)
    std, base = float(run["model.init_std"]), float(run["parametrization.base_width"])
    c = float(c) if c is not None else round(std * base ** 0.5, 4)
    mult = float(mult) if mult is not None else float(run["parametrization.output_alpha"]) / base
    return {**run, INIT_KEYS[0]: float(emb) if emb is not None else std, INIT_KEYS[1]: c, INIT_KEYS[2]: mult}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("settings", nargs="+", metavar="NAME=SWEEP_DIR[,SWEEP_DIR...]",
                        help="one donor setting's grid (in one or several multirun directories)")
    parser.add_argument("--default", required=True,
                        help="the candidate default: embedding_init_std,hidden_init_scale,output_mult")
    parser.add_argument("--out", default=None, help="write defaults.csv and defaults.json here")
    args = parser.parse_args(argv)
    try:
        default = tuple(float(x) for x in args.default.split(","))
    except ValueError:
        parser.error(f"--default: expected three numbers 'embedding_init_std,hidden_init_scale,output_mult', "
                     f"got {args.default!r}")
    if len(default) != len(INIT_KEYS):
        parser.error(f"--default: expected three numbers 'embedding_init_std,hidden_init_scale,output_mult', "
                     f"got {args.default!r}")
    settings, every = {}, []
    for item in args.settings:
        name, sep, folders = item.partition("=")
        if not sep or not name or not folders:
            parser.error(f"{item!r}: expected NAME=SWEEP_DIR[,SWEEP_DIR...]")
        folders = folders.split(",")
        for folder in folders:
            if not Path(folder).is_dir():
                parser.error(f"{name}: no such sweep directory {folder}")
        runs = [with_init_defaults(r) for r in read_summaries(folders, [*INIT_KEYS, *MODEL_INIT, "data.tokenizer"])
                if r["parametrization"] == "mup"]
        if not runs:
            parser.error(f"{item}: no parametrization=mup runs there")
        settings[name] = runs
        every += [{**r, "setting": name} for r in runs]
    rows, text = defaults_table(settings, default)
    print(text)
    if args.out:
        out = Path(args.out)
        write_csv(every, out / "defaults.csv", ["setting", *INIT_KEYS, "data.tokenizer", "parametrization.base_width"])
        (out / "defaults.json").write_text(json.dumps({"default": dict(zip(INIT_KEYS, default)), "settings": rows},
                                                      indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
