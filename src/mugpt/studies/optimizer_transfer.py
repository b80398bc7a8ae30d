"""µTransfer for every optimizer of the zoo, SP against µP, with error bars over seeds (scripts/optimizer_transfer.py
is its command line, and says what it runs and writes): the optimizers' grids, the paired donor and target sweeps
(through `mugpt.studies.grid.run_grid`), the coordinate check per optimizer, and the report.
"""


import csv
import importlib.util
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mugpt.core.optim import lr_log2_grids
from mugpt.core.parametrization import PARAMETRIZATIONS, labels, sweep_offsets
from mugpt.studies.grid import ROOT, finished_runs, run_grid
from mugpt.studies.stats import format_ci, format_sd
from mugpt.studies.transfer import analyse, read_summaries, write_csv

DONOR_WIDTH, TARGET_WIDTH = 64, 256
# Muon's AdamW part (embeddings, readout, vectors) follows the swept lr at 1/8 (its config's default ratio is ~1/7)
MUON_ADAMW = "optim.adamw_lr='${pow2:${lr_log2},-3}'"
# Options of a registered optimizer swept as rows of their own: name -> (training overrides, donor's log2 lr grid).
OPTIONS = {"muon_rms": (["optim=muon", "optim.adjust_lr_fn=match_rms_adamw", MUON_ADAMW], range(-10, -2))}
# Registered optimizers the default run leaves out, and why.
NOT_SWEPT = {"adam": "with the experiment's weight decay 0 it is AdamW step for step"}
# u-µP (parametrization=umup) runs with Adam's rule only, untied and unclipped (conf/parametrization/umup.yaml says
# why), at its own O(1) lr: (optimizer, parametrization) -> overrides and donor grid replacing grids()'.
SPECIAL = {("adamw", "umup"): (["optim=adamw", "~parametrization.base_width", "model.tie_embeddings=false",
                                "optim.grad_clip=null"], range(-5, 3))}
COORD_WIDTHS = "[64,128,256]"
COORD_LR = {"sgd": 0.25, "muon": 0.02}  # without a µP donor sweep; others: the coordinate check's own 0.01
# how the figures draw each parametrization (one not named here: dash-dot, matplotlib's next colour)
STYLES = {"sp": "--", "mup": "-", "umup": ":"}
COLOURS = {"sp": "tab:orange", "mup": "tab:green", "umup": "tab:purple"}


# --launcher: the plugin each launcher config needs (conf/hydra/launcher/ and the plugins' own configs)
LAUNCHER_PLUGINS = {"ray": ("hydra_plugins.hydra_ray_launcher", "ray"),
                    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
                    "slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm")}


def grids() -> dict[str, tuple[list[str], range]]:
    """name: (training overrides, the donor's log2 lr grid), for every registered optimizer (its declaration's grid
    in mugpt.core.optim: centred on its best lr in the time-to-target comparison, results/optimizers/, wide enough
    for µP's defaults, which prefer larger lrs than SP's init) and then the swept options (OPTIONS)."""
    return {**lr_log2_grids(), **OPTIONS}


def default_optimizers() -> str:
    """--optimizers' default: every entry of grids() but those NOT_SWEPT, comma-separated."""
    return ",".join(name for name in grids() if name not in NOT_SWEPT)


def target_offsets() -> dict[str, range]:
    """The target's grid per parametrization: offsets (octaves) from the donor's best lr (its declaration's)."""
    return sweep_offsets()


def setting(name: str, param: str) -> tuple[list[str], range]:
    """The training overrides and the donor's log2 lr grid of one optimizer under one parametrization."""
    return SPECIAL.get((name, param), grids()[name])


def sweep_overrides(name: str, param: str, width: int, log2_lrs, seeds, extra=()) -> list[str]:
    """One sweep's overrides of `src/train.py -m` (the µTransfer experiment, this optimizer and width)."""
    overrides, _ = setting(name, param)
    return ["+experiment=mutransfer_lr", f"parametrization={param}", *overrides, f"model.width={width}",
            "lr_log2=" + ",".join(str(x) for x in log2_lrs), "seed=" + ",".join(str(s) for s in seeds),
            "logger=none", *extra]


def _folder_label(folder: Path) -> tuple[str, str, int]:
    """(optimizer, parametrization, width) of a sweep folder out/{donor,target}/NAME_PARAM."""
    name, param = folder.name.rsplit("_", 1)
    return name, param, DONOR_WIDTH if folder.parent.name == "donor" else TARGET_WIDTH


def _say(folder: Path, summary: dict, label: tuple | None = None) -> None:
    name, param, width = label or _folder_label(folder)
    if summary.get("skipped"):
        print(f"[{name} {param} {width}] done before: {folder}", flush=True)
    else:
        print(f"[{name} {param} {width}] rc {summary['returncode']}, {summary['finished']}/{summary['expected']} "
              f"runs, {summary['seconds']:.0f} s", flush=True)


def run_sweep(name: str, param: str, width: int, log2_lrs, seeds, folder: Path, launcher: str | None = None,
              extra=()) -> dict:
    """One multirun into `folder`; skipped when the folder already holds every run, restarted when partial."""
    (summary,) = run_grid([(sweep_overrides(name, param, width, log2_lrs, seeds, extra), folder)], launcher,
                          multirun=True, resume=True)
    _say(folder, summary, (name, param, width))
    return summary


def run_sweeps(out: Path, pairs, seeds, jobs: int, launcher: str | None = None, extra=()) -> list[dict]:
    """Every (optimizer, parametrization) pair's donor sweep, and as soon as it ends its target's: five octaves
    around the donor's seed-mean best lr (target_offsets()); `jobs` pairs at once."""
    def target_after(job, summary):
        folder = Path(job[1])
        _say(folder, summary)
        if folder.parent.name != "donor":
            return None
        name, param, _ = _folder_label(folder)
        best = donor_best_log2(folder)
        target = [best + k for k in target_offsets()[param]]
        return sweep_overrides(name, param, TARGET_WIDTH, target, seeds, extra), out / "target" / folder.name

    donors = [(sweep_overrides(name, param, DONOR_WIDTH, setting(name, param)[1], seeds, extra),
               out / "donor" / f"{name}_{param}") for name, param in pairs]
    return run_grid(donors, launcher, multirun=True, workers=jobs, resume=True, then=target_after)


def donor_best_log2(folder: Path) -> int:
    """The donor's best lr on its seed-mean curve, as the integer log2 of the grid point."""
    analysis = analyse(read_summaries(folder))
    (series,) = analysis.values()
    if not math.isfinite(series["donor_lr"]):
        raise RuntimeError(f"every donor run in {folder} diverged or failed: widen its grid before the target")
    return round(math.log2(series["donor_lr"]))


def run_coord(out: Path, name: str, threads: int) -> None:
    """The coordinate check with this optimizer (SP and µP), into out/coord/NAME; skipped when already there."""
    folder = out / "coord" / name
    if (folder / "coord_check_slopes.csv").is_file():
        print(f"[{name} coord] done before: {folder}", flush=True)
        return
    overrides = [o for o in grids()[name][0] if "lr_log2" not in o]
    donor = out / "donor" / f"{name}_mup"
    if finished_runs(donor):  # the lr µP trains this optimizer at; Muon's AdamW part at 1/8 of it, as in the sweeps
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
        folders = [f for f in folders if f.is_dir() and finished_runs(f)]
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
            f"| {t['optimizer']} | {labels().get(t['parametrization'], t['parametrization'])} "
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
        for param in PARAMETRIZATIONS:
            style = STYLES.get(param, "-.")
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
                        label=f"{labels()[param]} width {width}")
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
        for k, param in enumerate(PARAMETRIZATIONS):
            if not any(t["parametrization"] == param for t in table) and param not in COLOURS:
                continue  # a parametrization this report has no rows of, and no place in the legend
            x, y, err = [], [], []
            for i, name in enumerate(names):
                row = next((t for t in table if t["optimizer"] == name and t["parametrization"] == param), None)
                if row is None:
                    continue
                x.append(i + (k - 1) * 0.27)
                y.append(row[key]["mean"])
                half = row[key].get("half_width", math.nan)
                err.append(half if math.isfinite(half) else 0.0)
            ax.bar(x, y, width=0.27, yerr=err, capsize=3, color=COLOURS.get(param), label=labels()[param])
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


def optimizer_transfer(out: str | Path, stage: str = "all", optimizers: str | None = None,
                       parametrizations: str = "sp,mup", seeds: str = "0,1,2", jobs: int | None = None,
                       launcher: str | None = None, extra=()) -> str | None:
    """The command line's options checked (SystemExit with one line naming the option), then the stages: the
    sweeps, the coordinate check, the report (returned, as printed)."""
    names = _list(default_optimizers() if optimizers is None else optimizers, grids(), "--optimizers")
    params = _list(parametrizations, PARAMETRIZATIONS, "--parametrizations")
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"error: --seeds={seeds}: comma-separated integers") from None
    jobs = jobs if jobs is not None else (1 if launcher else 2)
    if not seed_list or jobs < 1:
        raise SystemExit("error: --seeds needs at least one seed and --jobs at least 1")
    if launcher:
        plugin, needs = LAUNCHER_PLUGINS[launcher]
        if importlib.util.find_spec(plugin) is None:
            raise SystemExit(f'error: --launcher={launcher} needs the {needs} extra: pip install -e ".[{needs}]"')
        joins = any(s.startswith("hydra.launcher.ray.init.address=") for s in extra)
        if launcher == "ray" and jobs > 1 and not joins:
            raise SystemExit(f"error: --jobs={jobs} with --launcher=ray: each sweep would start a Ray of its own on "
                             "this machine, each taking every core; give --jobs 1 (each sweep's jobs run side by "
                             "side), or join one cluster: --set hydra.launcher.ray.init.address=auto")
    out = Path(out).resolve()
    if stage in ("all", "sweep"):
        pairs = [(name, param) for name in names for param in params if param != "umup" or (name, param) in SPECIAL]
        run_sweeps(out, pairs, seed_list, jobs, launcher, list(extra))
    if stage in ("all", "coord"):
        for name in names:
            run_coord(out, name, threads=2)
    if stage in ("all", "report"):
        text = report(out, names)
        print(text)
        print(f"report in {out}")
        return text
    return None
