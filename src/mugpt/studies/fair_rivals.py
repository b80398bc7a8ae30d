"""Does µP beat the best SP? (scripts/fair_rivals.py is its command line and says what it runs): each rival's donor
and target sweeps (through `mugpt.studies.grid.run_grid`), SP's and µP's read from optimizer_transfer's csv, and
the report.
"""


import csv
import json
import math
from pathlib import Path

import numpy as np

from mugpt.core.parametrization import sweep_offsets
from mugpt.rundir import read_summary
from mugpt.studies.grid import ROOT, run_grid
from mugpt.studies.optimizer_transfer import DONOR_WIDTH, TARGET_WIDTH
from mugpt.studies.stats import format_ci, format_sd
from mugpt.studies.transfer import analyse, plot, read_summaries, write_csv

RUNS = Path("/work/sweeps/fair_rivals")  # runs outside the tree
REUSED = ROOT / "results/optimizer_transfer/optimizer_transfer.csv"
# rival: (parametrization, fixed overrides, constants tuned on the donor: key -> values)
RIVALS = {"sp": ("sp", [], {}), "sp_width": ("sp", ["parametrization.embedding_lr_rule=width"], {}),
          "sp_tuned": ("sp", [], {"parametrization.lr_mult_embedding": "0.25,1.0,4.0",
                                  "parametrization.lr_mult_vector": "0.25,1.0,4.0"}),
          "mup": ("mup", [], {}), "mup_tuned": ("mup", [], {"parametrization.embedding_lr_mult": "0.25,1.0,4.0",
                                                            "parametrization.output_alpha": "32.0,128.0,512.0"})}


def sweep(folder: Path, param: str, width: int, lrs, overrides: list[str]) -> list[dict]:
    """One Hydra multirun of the µTransfer experiment with AdamW; kept once complete, run again whole if not."""
    if not (folder / "complete").is_file():
        job = ["+experiment=mutransfer_lr", f"parametrization={param}", "optim=adamw", f"model.width={width}",
               "lr_log2=" + ",".join(map(str, lrs)), "seed=0,1,2", "logger=none", *overrides]
        # one torch thread per job (the CPU is shared); a failed multirun stops the study
        (summary,) = run_grid([(job, folder)], multirun=True, keep_going=False)
        cmd = summary["command"]  # kept as typed from the repository root
        (folder / "complete").write_text(" ".join(["src/train.py", *cmd[2:]]) + "\n")
    return read_summaries(folder, keys=[k.split("=")[0] for k in overrides])


def run_rival(name: str) -> tuple[list[dict], dict]:
    """The rival's donor and target runs, and what choosing its hyperparameters cost (runs at the donor)."""
    def log2_best(rows: list[dict], width: int) -> int:  # on the seed-mean curve
        return round(math.log2(analyse(rows)[param]["best_lr"][width]))
    (param, fixed, grid), new = RIVALS[name], []
    base = [{**r, "width": int(r["width"]), "seed": int(r["seed"]), **{k: float(r[k]) for k in ("lr", "val_loss")}}
            for r in csv.DictReader(open(REUSED)) if r["optimizer"] == "adamw" and r["parametrization"] == param]
    donor = [r for r in base if r["width"] == DONOR_WIDTH]  # choosing the lr cost these runs
    info, best = {"tuning_runs": len(donor), "constants": {}, "overrides": fixed}, log2_best(donor, DONOR_WIDTH)
    if name in ("sp", "mup"):  # their runs are optimizer_transfer's
        return base, {**info, "new_runs": 0, "new_run_minutes": 0.0}
    if grid:  # the constants at the donor's best lr, then the donor's lr with them
        new = sweep(RUNS / name / "tune", param, DONOR_WIDTH, [best], [f"{k}={v}" for k, v in grid.items()])
        mean = {c: np.mean([r["val_loss"] if r["status"] == "completed" else math.inf for r in new if tuple(
            r[k] for k in grid) == c]) for c in {tuple(r[k] for k in grid) for r in new}}
        info["constants"] = dict(zip(grid, min(mean, key=mean.get)))
        info["tuning_grid"] = {str(c): float(v) for c, v in sorted(mean.items())}
        info["overrides"] = fixed = fixed + [f"{k}={v}" for k, v in info["constants"].items()]
        donor = sweep(RUNS / name / "donor", param, DONOR_WIDTH, range(best - 2, best + 3), fixed)
        info["tuning_runs"], best = info["tuning_runs"] + len(new := new + donor), log2_best(donor, DONOR_WIDTH)
    lrs = [best + k for k in sweep_offsets()[param]]
    target = sweep(RUNS / name / "target", param, TARGET_WIDTH, lrs, fixed)
    if (edge := log2_best(donor + target, TARGET_WIDTH)) in (lrs[0], lrs[-1]):  # its best on the edge: one octave on
        target += sweep(RUNS / name / "beyond", param, TARGET_WIDTH, [edge + (1 if edge == lrs[-1] else -1)], fixed)
    seconds = [read_summary(r["output_dir"])["wall_seconds"] for r in new + target]
    return donor + target, {**info, "new_runs": len(seconds), "new_run_minutes": sum(seconds) / 60}


def fair_rivals(names: list[str]) -> None:
    """Each rival's runs (those not done before), the table, the csv/json, the commands and the plot, into
    results/fair_rivals."""
    if unknown := [n for n in names if n not in RIVALS]:
        raise SystemExit(f"error: rivals {','.join(names)}: unknown {unknown[0]!r} (choose from {', '.join(RIVALS)})")
    out, table, rows = ROOT / "results/fair_rivals", [], []
    lines = ["| rival | constants | donor best log2 lr | target best log2 lr | shift (octaves) | regret (nats) "
             "| target best loss | donor best loss | tuning runs | new runs (CPU min) |", "|---" * 10 + "|"]
    for name in names:
        rival_rows, info = run_rival(name)
        rows += [{**r, "parametrization": name} for r in rival_rows]  # one series per rival
        a = analyse(rows[-len(rival_rows):])[name]
        table.append(t := {"rival": name, **info, "donor_log2_lr": math.log2(a["donor_lr"]), "edge": a["edge"],
                            "target_log2_lr": math.log2(a["best_lr"][TARGET_WIDTH]), "regret": a["regret_seeds"],
                            "shift": a["shift_from_donor"][TARGET_WIDTH], **{f"{k}_best_loss": a["best_loss_seeds"][
                                w] for k, w in (("target", TARGET_WIDTH), ("donor", DONOR_WIDTH))}})
        cells = [name, ", ".join(f"{k.split('.')[-1]}={v:g}" for k, v in t["constants"].items()) or "-",
                 f"{t['donor_log2_lr']:.0f}", f"{t['target_log2_lr']:.0f}", *(format_ci(t[k], f, count=False) for k, f
                 in (("shift", "+.2f"), ("regret", ".3f"))), *(format_sd(t[f"{k}_best_loss"], ".3f", count=False) for k
                 in ("target", "donor")), str(t["tuning_runs"]), f"{t['new_runs']} ({t['new_run_minutes']:.1f})"]
        lines.append("| " + " | ".join(cells) + " |")
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "fair_rivals.csv")
    (out / "fair_rivals.json").write_text(json.dumps(table, indent=2, default=float))
    (out / "fair_rivals.md").write_text("\n".join(lines) + "\n")
    stages = [RUNS / n / s for n in names for s in ("tune", "donor", "target", "beyond") if (RUNS / n / s).is_dir()]
    (out / "commands.txt").write_text("".join("python " + (f / "complete").read_text() for f in stages))
    plot(rows, out / "fair_rivals.png", title=f"AdamW, width {DONOR_WIDTH} → {TARGET_WIDTH}: SP's rivals and µP")
