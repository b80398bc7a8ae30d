"""µTransfer for every optimizer of the zoo, SP against µP, with error bars over seeds:
`python scripts/optimizer_transfer.py [--out DIR] [--stage all|sweep|report] [--optimizers a,b] [--seeds 0,1,2]
[--jobs 2] [--launcher ray]`.

For each optimizer and parametrization (SP and µP; with `--parametrizations sp,mup,umup` also u-µP, for AdamW, the
one optimizer its rules are written for), two Hydra multiruns of src/train.py at the CPU µTransfer experiment's
scale (`+experiment=mutransfer_lr`: byte-level Shakespeare, 2 layers, 200 steps, clip 1, no weight decay):
  1. the donor, width 64, over the optimizer's log2 learning-rate grid (GRIDS below, 8 octaves around the zoo's
     defaults), every seed;
  2. the target, width 256 (4x), over five octaves around the donor's best lr on its seed-mean curve: one up and
     three down for SP (whose best lr is expected to fall with width), two each way for µP.
Each pair's target starts as soon as its donor is done; `--jobs` pairs run at once, each job with one torch
thread. `--launcher ray` runs each sweep's jobs side by side instead (conf/hydra/launcher/ray.yaml; its keys through
--set, e.g. --set hydra.launcher.ray.remote.num_gpus=0.25): one pair at a time, or --jobs pairs on a Ray cluster
joined with --set hydra.launcher.ray.init.address=auto.
A sweep folder holding all its runs is kept and skipped, so an interrupted call picks up where it stopped.
`--stage coord` runs the coordinate check (scripts/coord_check.py) with each optimizer, widths 64-256, 3 seeds, 4
updates, SP and µP at µP's donor best lr (before the sweeps: 0.01; SGD 0.25, Muon 0.02), into --out/coord/NAME;
the report adds its slopes.
The report (`--stage report`) reads every folder and writes into --out:
  optimizer_transfer.md   the table: per optimizer and parametrization, the donor's and target's best log2 lr,
                          the shift (octaves) and the transfer regret (nats) with 95% CIs over seeds, the target's
                          best loss (mean ± sd over seeds), a mark where a best lr sits on its grid's edge, and
                          where the coordinate check ran, the largest |log-log slope| of a hidden activation
                          against width after the last update (0 = width-independent, µP's promise);
  optimizer_transfer.csv  every run; optimizer_transfer.json  the analysis;
  optimizer_transfer.png  loss against log2 lr, one panel per optimizer (SP dashed, µP solid, u-µP dotted; donor
                          and target);
  optimizer_transfer_summary.png  shift and regret per optimizer with their CIs, the parametrizations side by side.
Adam is not swept: with the experiment's weight decay 0 it is AdamW step for step (same val loss to the last
digit, checked), so its row would repeat AdamW's.
"""

import argparse
import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from mugpt.studies.transfer import analyse, format_ci, format_sd, read_summaries, write_csv

ROOT = Path(__file__).resolve().parents[1]
DONOR_WIDTH, TARGET_WIDTH = 64, 256
# The target's grid: offsets (octaves) from the donor's best lr.
TARGET_OFFSETS = {"sp": range(-3, 2), "mup": range(-2, 3), "umup": range(-2, 3)}
# Muon's AdamW part (embeddings, readout, vectors) follows the swept lr at 1/8 (its config's default ratio is ~1/7)
MUON_ADAMW = "optim.adamw_lr='${pow2:${lr_log2},-3}'"
# name: (training overrides, the donor's log2 lr grid). Centred on each optimizer's best lr in the time-to-target
# comparison (results/optimizers/), wide enough for µP's defaults, which prefer larger lrs than SP's init.
GRIDS = {
    "adamw": (["optim=adamw"], range(-11, -3)),
    "adam_atan2": (["optim=adam_atan2"], range(-11, -3)),
    "adam8bit": (["optim=adam8bit"], range(-11, -3)),
    "adafactor": (["optim=adafactor"], range(-11, -3)),
    "rmsprop": (["optim=rmsprop"], range(-13, -5)),
    "adagrad": (["optim=adagrad"], range(-10, -2)),
    "sgd": (["optim=sgd"], range(-6, 2)),
    "muon": (["optim=muon", MUON_ADAMW], range(-9, -1)),
    "muon_rms": (["optim=muon", "optim.adjust_lr_fn=match_rms_adamw", MUON_ADAMW], range(-10, -2)),
}
PARAMETRIZATIONS = ("sp", "mup", "umup")
# u-µP (parametrization=umup) runs with Adam's rule only, untied and unclipped (conf/parametrization/umup.yaml says
# why), at its own O(1) lr: (optimizer, parametrization) -> overrides and donor grid replacing GRIDS'.
SPECIAL = {("adamw", "umup"): (["optim=adamw", "~parametrization.base_width", "model.tie_embeddings=false",
                                "optim.grad_clip=null"], range(-5, 3))}
COORD_WIDTHS = "[64,128,256]"
COORD_LR = {"sgd": 0.25, "muon": 0.02}  # without a µP donor sweep; others: the coordinate check's own 0.01
LABEL = {"sp": "SP", "mup": "µP", "umup": "u-µP"}


EXTRA: list[str] = []  # --set: overrides appended to every sweep (e.g. trainer.max_steps=20 for a quick look)
LAUNCHER: list[str] = []  # --launcher: hydra/launcher=NAME for every sweep
# --launcher: the plugin each launcher config needs (conf/hydra/launcher/ and the plugins' own configs)
LAUNCHER_PLUGINS = {"ray": ("hydra_plugins.hydra_ray_launcher", "ray"),
                    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
                    "slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm")}


def setting(name: str, param: str) -> tuple[list[str], range]:
    """The training overrides and the donor's log2 lr grid of one optimizer under one parametrization."""
    return SPECIAL.get((name, param), GRIDS[name])


def sweep_command(name: str, param: str, width: int, log2_lrs, seeds, folder: Path) -> list[str]:
    overrides, _ = setting(name, param)
    return [sys.executable, str(ROOT / "src" / "train.py"), "-m", "+experiment=mutransfer_lr",
            f"parametrization={param}", *overrides, f"model.width={width}",
            "lr_log2=" + ",".join(str(x) for x in log2_lrs), "seed=" + ",".join(str(s) for s in seeds),
            "logger=none", *LAUNCHER, *EXTRA, f"hydra.sweep.dir={folder}"]


def _finished(folder: Path) -> int:
    return sum(1 for _ in folder.rglob("summary.json")) if folder.is_dir() else 0


def run_sweep(name: str, param: str, width: int, log2_lrs, seeds, folder: Path) -> None:
    """One multirun into `folder`; skipped when the folder already holds every run, restarted when partial."""
    expected = len(list(log2_lrs)) * len(seeds)
    if _finished(folder) >= expected:
        print(f"[{name} {param} {width}] done before: {folder}", flush=True)
        return
    if folder.exists():  # a partial sweep is set aside whole, not mixed with a new one
        folder.rename(folder.with_name(f"{folder.name}.partial.{int(time.time())}"))
    folder.parent.mkdir(parents=True, exist_ok=True)
    cmd = sweep_command(name, param, width, log2_lrs, seeds, folder)
    start = time.time()
    # one thread per job; a launcher gives each job its threads itself (Ray: OMP_NUM_THREADS = the job's num_cpus)
    env = os.environ if LAUNCHER else {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(folder.parent / f"{folder.name}.log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env).returncode
    print(f"[{name} {param} {width}] rc {rc}, {_finished(folder)}/{expected} runs, {time.time() - start:.0f} s",
          flush=True)


def donor_best_log2(folder: Path) -> int:
    """The donor's best lr on its seed-mean curve, as the integer log2 of the grid point."""
    analysis = analyse(read_summaries(folder))
    (series,) = analysis.values()
    if not math.isfinite(series["donor_lr"]):
        raise RuntimeError(f"every donor run in {folder} diverged or failed: widen the grid (GRIDS) before the target")
    return round(math.log2(series["donor_lr"]))


def sweep_pair(out: Path, name: str, param: str, seeds) -> None:
    donor = out / "donor" / f"{name}_{param}"
    run_sweep(name, param, DONOR_WIDTH, setting(name, param)[1], seeds, donor)
    best = donor_best_log2(donor)
    target = [best + k for k in TARGET_OFFSETS[param]]
    run_sweep(name, param, TARGET_WIDTH, target, seeds, out / "target" / f"{name}_{param}")


def run_coord(out: Path, name: str, threads: int) -> None:
    """The coordinate check with this optimizer (SP and µP), into out/coord/NAME; skipped when already there."""
    folder = out / "coord" / name
    if (folder / "coord_check_slopes.csv").is_file():
        print(f"[{name} coord] done before: {folder}", flush=True)
        return
    overrides = [o for o in GRIDS[name][0] if "lr_log2" not in o]
    donor = out / "donor" / f"{name}_mup"
    if _finished(donor):  # the lr µP trains this optimizer at; Muon's AdamW part at 1/8 of it, as in the sweeps
        lr = 2.0 ** donor_best_log2(donor)
        overrides += [f"optim.lr={lr}"] + ([f"optim.adamw_lr={lr / 8}"] if name.startswith("muon") else [])
    elif name in COORD_LR:
        overrides += [f"optim.lr={COORD_LR[name]}"]
    cmd = [sys.executable, str(ROOT / "scripts" / "coord_check.py"), *overrides, f"widths={COORD_WIDTHS}",
           "seeds=[0,1,2]", f"num_threads={threads}", f"hydra.run.dir={folder}"]
    folder.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(folder / "coord_check.log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    print(f"[{name} coord] rc {rc}, {time.time() - start:.0f} s", flush=True)


def coord_slopes(folder: Path) -> dict[str, dict[str, float]]:
    """parametrization -> the largest |slope| of a block's activation (attention, MLP, residual) against width
    at the last recorded step, with that module's seed sd, and the logits' slope there."""
    path = folder / "coord_check_slopes.csv"
    if not path.is_file():
        return {}
    with open(path) as f:
        rows = list(csv.DictReader(f))
    last = max(int(r["step"]) for r in rows)
    out = {}
    for param in dict.fromkeys(r["parametrization"] for r in rows):
        at = [r for r in rows if r["parametrization"] == param and int(r["step"]) == last]
        hidden = max((r for r in at if r["module"].startswith("block")), key=lambda r: abs(float(r["slope"])))
        logits = next((float(r["slope"]) for r in at if r["module"] == "logits"), math.nan)
        out[param] = {"hidden": abs(float(hidden["slope"])), "hidden_sd": float(hidden["seed_sd"] or "nan"),
                      "module": hidden["module"], "logits": logits, "step": last}
    return out


# ------------------------------------------------------------------------------------------------ report
def _rows(out: Path, names) -> dict[str, list[dict]]:
    by_name = {}
    for name in names:
        folders = [out / stage / f"{name}_{p}" for stage in ("donor", "target") for p in PARAMETRIZATIONS]
        folders = [f for f in folders if f.is_dir() and _finished(f)]
        if folders:
            by_name[name] = [{**r, "optimizer": name} for r in read_summaries(folders)]
    return by_name


def _edge(rows: list[dict], param: str, width: int, best_lr: float) -> bool:
    """The seed-mean best lr is the smallest or largest lr tried at that width: the optimum may lie beyond."""
    lrs = sorted({r["lr"] for r in rows if r["parametrization"] == param and r["width"] == width})
    return bool(lrs) and best_lr in (lrs[0], lrs[-1])


def summarise(by_name: dict[str, list[dict]], out: Path) -> list[dict]:
    table = []
    for name, rows in by_name.items():
        for param, a in analyse(rows).items():
            if len(a["widths"]) < 2:
                continue
            target = a["target_width"]
            shift = a["shift_from_donor"][target]
            table.append({
                "optimizer": name, "parametrization": param,
                "donor_log2_lr": math.log2(a["donor_lr"]), "target_log2_lr": math.log2(a["best_lr"][target]),
                "donor_edge": _edge(rows, param, a["donor_width"], a["donor_lr"]),
                "target_edge": _edge(rows, param, target, a["best_lr"][target]),
                "shift": shift, "regret": a["regret_seeds"], "regret_mean_curve": a["regret"],
                "target_best_loss": a["best_loss_seeds"][target],
                "donor_best_loss": a["best_loss_seeds"][a["donor_width"]],
                "coord": coord_slopes(out / "coord" / name).get(param),
                "runs": sum(1 for r in rows if r["parametrization"] == param),
                "diverged": sum(1 for r in rows if r["parametrization"] == param and r["status"] != "completed"),
            })
    return table


def _coord_text(coord: dict | None) -> str:
    return "not run" if not coord else f"{coord['hidden']:.2f} ({coord['hidden_sd']:.2f})"


def format_table(table: list[dict]) -> str:
    seeds = sorted({t["shift"]["n"] for t in table})
    lines = [f"Donor width {DONOR_WIDTH} → target width {TARGET_WIDTH}; shift and regret: mean ± 95% CI over "
             f"{'/'.join(map(str, seeds))} seeds; losses: mean ± sd over seeds at the seed-mean best lr; `*` = best lr "
             "at its grid's edge.",
             "",
             "| optimizer | param. | donor best log2 lr | target best log2 lr | shift (octaves) | regret (nats) "
             "| target best loss | donor best loss | coord. check max \\|slope\\| (sd) | runs (not completed) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for t in table:
        lines.append(
            f"| {t['optimizer']} | {LABEL.get(t['parametrization'], t['parametrization'])} "
            f"| {t['donor_log2_lr']:.0f}{'*' if t['donor_edge'] else ''} "
            f"| {t['target_log2_lr']:.0f}{'*' if t['target_edge'] else ''} "
            f"| {format_ci(t['shift'], '+.2f', count=False)} | {format_ci(t['regret'], '.3f', count=False)} "
            f"| {format_sd(t['target_best_loss'], '.3f', count=False)} "
            f"| {format_sd(t['donor_best_loss'], '.3f', count=False)} "
            f"| {_coord_text(t['coord'])} | {t['runs']} ({t['diverged']}) |")
    return "\n".join(lines)


def plot_curves(by_name: dict[str, list[dict]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(by_name)
    cols = 3
    nrows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    colours = {DONOR_WIDTH: "tab:blue", TARGET_WIDTH: "tab:red"}
    for ax, name in zip(axes.flat, names):
        rows = [r for r in by_name[name] if r["status"] == "completed" and math.isfinite(r["val_loss"])]
        for param, style in (("sp", "--"), ("mup", "-"), ("umup", ":")):
            for width, colour in colours.items():
                losses: dict[float, list[float]] = {}
                for r in rows:
                    if r["parametrization"] == param and r["width"] == width:
                        losses.setdefault(math.log2(r["lr"]), []).append(r["val_loss"])
                if not losses:
                    continue
                x = sorted(losses)
                mean = np.array([np.mean(losses[k]) for k in x])
                sd = np.array([np.std(losses[k], ddof=1) if len(losses[k]) > 1 else 0.0 for k in x])
                ax.plot(x, mean, style, color=colour, marker="o", ms=3,
                        label=f"{LABEL[param]} width {width}")
                ax.fill_between(x, mean - sd, mean + sd, color=colour, alpha=0.15)
        finite = [r["val_loss"] for r in rows]
        if finite:
            low = min(finite)
            ax.set_ylim(low - 0.05, low + 0.8)
        ax.set_title(name)
        ax.set_xlabel("log2 lr")
        ax.set_ylabel("val loss (nats/byte)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"Learning-rate transfer per optimizer, width {DONOR_WIDTH} → {TARGET_WIDTH} "
                 "(mean ± sd over seeds; SP dashed, µP solid, u-µP dotted)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_summary(table: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(t["optimizer"] for t in table))
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    for ax, key, label in ((axes[0], "shift", "best-lr shift, octaves"), (axes[1], "regret", "transfer regret, nats")):
        for k, (param, colour) in enumerate((("sp", "tab:orange"), ("mup", "tab:green"), ("umup", "tab:purple"))):
            x, y, err = [], [], []
            for i, name in enumerate(names):
                row = next((t for t in table if t["optimizer"] == name and t["parametrization"] == param), None)
                if row is None:
                    continue
                x.append(i + (k - 1) * 0.27)
                y.append(row[key]["mean"])
                half = row[key].get("half_width", math.nan)
                err.append(half if math.isfinite(half) else 0.0)
            ax.bar(x, y, width=0.27, yerr=err, capsize=3, color=colour, label=LABEL[param])
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right")
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"Width {DONOR_WIDTH} → {TARGET_WIDTH}: mean over seeds with 95% CI")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(out: Path, names) -> str:
    by_name = _rows(out, names)
    if not by_name:
        raise FileNotFoundError(f"no finished sweeps under {out}/donor or {out}/target")
    table = summarise(by_name, out)
    rows = [r for rs in by_name.values() for r in rs]
    write_csv(rows, out / "optimizer_transfer.csv", ["optimizer"])
    text = format_table(table)
    (out / "optimizer_transfer.md").write_text(text + "\n")
    (out / "optimizer_transfer.json").write_text(json.dumps(table, indent=2, default=float))
    plot_curves(by_name, out / "optimizer_transfer.png")
    plot_summary(table, out / "optimizer_transfer_summary.png")
    return text


def _list(text: str, known, option: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in items if x not in known]
    if unknown or not items:
        raise SystemExit(f"error: {option}={text}: choose from {', '.join(known)}")
    return items


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="optimizer_transfer", help="folder of the sweeps and the report")
    parser.add_argument("--stage", choices=("all", "sweep", "coord", "report"), default="all",
                        help="all = sweep, coord and report")
    parser.add_argument("--optimizers", default=",".join(GRIDS), help=f"comma-separated, from {', '.join(GRIDS)}")
    parser.add_argument("--parametrizations", default="sp,mup",
                        help="sp, mup, umup (u-µP: AdamW only; the others are skipped under it)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=None,
                        help="sweeps at once (default 2, one torch thread each; 1 with --launcher)")
    parser.add_argument("--launcher", choices=sorted(LAUNCHER_PLUGINS),
                        help="hydra/launcher for every sweep: its jobs side by side (ray) or as SLURM jobs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a training override for every sweep (repeatable), e.g. --set trainer.max_steps=20")
    args = parser.parse_args(argv)
    names = _list(args.optimizers, GRIDS, "--optimizers")
    params = _list(args.parametrizations, PARAMETRIZATIONS, "--parametrizations")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"error: --seeds={args.seeds}: comma-separated integers") from None
    jobs = args.jobs if args.jobs is not None else (1 if args.launcher else 2)
    if not seeds or jobs < 1:
        raise SystemExit("error: --seeds needs at least one seed and --jobs at least 1")
    if args.launcher:
        plugin, extra = LAUNCHER_PLUGINS[args.launcher]
        if importlib.util.find_spec(plugin) is None:
            raise SystemExit(f'error: --launcher={args.launcher} needs the {extra} extra: pip install -e ".[{extra}]"')
        joins = any(s.startswith("hydra.launcher.ray.init.address=") for s in args.set)
        if args.launcher == "ray" and jobs > 1 and not joins:
            raise SystemExit(f"error: --jobs={jobs} with --launcher=ray: each sweep would start a Ray of its own on "
                             "this machine, each taking every core; give --jobs 1 (each sweep's jobs run side by "
                             "side), or join one cluster: --set hydra.launcher.ray.init.address=auto")
    out = Path(args.out).resolve()
    EXTRA[:] = args.set
    LAUNCHER[:] = [f"hydra/launcher={args.launcher}"] if args.launcher else []
    if args.stage in ("all", "sweep"):
        pairs = [(name, param) for name in names for param in params if param != "umup" or (name, param) in SPECIAL]
        with ThreadPoolExecutor(jobs) as pool:
            for future in [pool.submit(sweep_pair, out, name, param, seeds) for name, param in pairs]:
                future.result()
    if args.stage in ("all", "coord"):
        for name in names:
            run_coord(out, name, threads=2)
    if args.stage in ("all", "report"):
        print(report(out, names))
        print(f"report in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
