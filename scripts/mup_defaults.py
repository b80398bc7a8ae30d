"""Where µP's default init and output multiplier come from:
`python scripts/mup_defaults.py NAME=SWEEP_DIR[,SWEEP_DIR...] [NAME=...] --default EMB_STD,C,ALPHA [--out DIR]`.

Each NAME's sweep directories hold one donor setting's grid (parametrization=mup at its base width, over
parametrization.embedding_init_std × hidden_init_scale × output_mult or output_alpha × lr, any number of seeds; a
key left null counts as what the run used instead: model.init_std, output_alpha). The output multiplier is compared
as output_alpha = output_mult · base_width, so one default reads the same at every base width. Prints, per
setting, the best loss over the learning rates at each combination, and how far the candidate default is from each
setting's own optimum; writes defaults.csv (every run) and defaults.json (the summary) to --out.
"""

import argparse
import json
import sys
from pathlib import Path

from mugpt.studies.transfer import defaults_table, read_summaries, write_csv

# Read from each run's config: its init and output options, and what a null one falls back to.
READ = ("parametrization.embedding_init_std", "parametrization.hidden_init_scale", "parametrization.output_mult",
        "parametrization.output_alpha", "model.init_std", "parametrization.base_width", "data.tokenizer")
# The table's three keys: the tables' std, c (hidden std c/sqrt(base_width) at the base width) and output_alpha
# (output_mult · base_width: the logits are output_alpha / width · W h), so that one default compares across base
# widths.
KEYS = ("embedding_init_std", "hidden_init_scale", "output_alpha")


def init_settings(run: dict) -> dict:
    """A run's three init settings (KEYS) as numbers, a null option read as what the run used instead: model.init_std
    for the tables; c = model.init_std · sqrt(base_width) for the hidden matrices; output_alpha for the output."""
    emb, c, mult, alpha, std, base = (run[k] for k in READ[:6])
    std, base = float(std), float(base)
    return {**run, "embedding_init_std": float(emb) if emb is not None else std,
            "hidden_init_scale": float(c) if c is not None else round(std * base ** 0.5, 4),
            "output_alpha": float(mult) * base if mult is not None else float(alpha)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("settings", nargs="+", metavar="NAME=SWEEP_DIR[,SWEEP_DIR...]",
                        help="one donor setting's grid (in one or several multirun directories)")
    parser.add_argument("--default", required=True,
                        help="the candidate default: embedding_init_std,hidden_init_scale,output_alpha")
    parser.add_argument("--out", default=None, help="write defaults.csv and defaults.json here")
    args = parser.parse_args(argv)
    try:
        default = tuple(float(x) for x in args.default.split(","))
    except ValueError:
        parser.error(f"--default: expected three numbers 'embedding_init_std,hidden_init_scale,output_alpha', "
                     f"got {args.default!r}")
    if len(default) != len(KEYS):
        parser.error(f"--default: expected three numbers 'embedding_init_std,hidden_init_scale,output_alpha', "
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
        runs = [init_settings(r) for r in read_summaries(folders, READ) if r["parametrization"] == "mup"]
        if not runs:
            parser.error(f"{item}: no parametrization=mup runs there")
        settings[name] = runs
        every += [{**r, "setting": name} for r in runs]
    rows, text = defaults_table(settings, default, KEYS)
    print(text)
    if args.out:
        out = Path(args.out)
        write_csv(every, out / "defaults.csv", ["setting", *KEYS, "data.tokenizer", "parametrization.base_width"])
        (out / "defaults.json").write_text(json.dumps({"default": dict(zip(KEYS, default)), "settings": rows},
                                                      indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
