"""From measurements to verdicts: exponents fitted over widths (and depths), compared with what was promised.

Each measured quantity becomes one value per (axis value, seed): the geometric mean over the parameters or layers of
its kind (on the depth axis, hidden and vector ones inside the blocks only: the depth rules' scope). Its exponent is
the least-squares slope of log value against log width (or depth), fitted per seed; the check reads the mean over
seeds, and the seeds' standard deviation is its spread.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mugpt.studies.doctor.probes import Entry

# Allowed |measured - expected| per quantity, from the correct configurations of tests/test_doctor.py (µP with
# AdamW, Muon and SGD, CompleteP, u-µP; widths 32-128, depths 2-8; 4 triples of seeds). Read off the optimizer or the
# modules, lr, ε, lr·wd, the forward multipliers and the branch are exact up to rounding (largest deviation 0.000);
# init is sampled (0.011). The steps carry seed noise and finite-width terms: the mean over 3 seeds strayed at most
# 0.19 (update: SGD's tables), 0.05 (activation), 0.13 (stream_change, CompleteP over depth) and 0.31
# (logits_change, Muon): the logits' change holds a width^-1/2 part, the readout's random init against the features'
# change, which output_alpha 128 makes large at these widths. The bugs they catch move exponents by 0.5 to 2.
TOLERANCES = {"lr": 0.02, "eps": 0.02, "lr_wd": 0.02, "init": 0.1, "mult": 0.05, "attn_scale": 0.1, "branch": 0.05,
              "update": 0.3, "activation": 0.3, "logits_change": 0.5, "stream_change": 0.3}
PER_KIND = ("init", "mult", "lr", "eps", "lr_wd", "update", "activation")
# Table order: what is built, then what the steps did, then what is only reported.
ORDER = ("init", "mult", "attn_scale", "branch", "lr", "eps", "lr_wd", "update", "activation", "stream_change",
         "logits_change", "logits", "attn_logits")
KIND_ORDER = ("hidden", "embedding", "vector", "readout")
VERDICTS = ("ok", "BROKEN", "info")

HINTS = {
    "init.hidden": "hidden matrices must be drawn with std ∝ fan_in^-1/2 (mup.init after set_base_shapes; a "
                   "constant std such as 0.02 is SP's): see MaximalUpdateParametrization.init_weights, "
                   "parametrization.hidden_init_scale",
    "init.embedding": "the token and position tables keep one std at every width (parametrization."
                      "embedding_init_std); a tied readout's 1/width put on the shared table instead of on the logits "
                      "shows here (mup #55)",
    "init.readout": "an untied readout's init does not depend on width (parametrization.embedding_init_std)",
    "init.vector": "LayerNorm gains and biases start width-independent",
    "mult.hidden": "a hidden layer's forward multiplier (µP: none; u-µP: 1/sqrt(fan_in), unit_scaling's linear)",
    "mult.readout": "the logits must be output_mult/width_mult · W h: see Readout/SharedReadout.width_mult and "
                    "parametrization.output_mult/output_alpha; with tied embeddings the 1/width goes on the logits, "
                    "never on the shared table (mup #55)",
    "mult.embedding": "the embedding output multiplier (parametrization.input_mult → model.embed_mult) does not "
                      "depend on width",
    "attn_scale": "µP's attention logits are attn_alpha/d_head · q·k, not 1/sqrt(d_head) · q·k: see "
                  "MaximalUpdateParametrization._with_multipliers → model.attn_scale",
    "branch": "each residual branch is × (base_depth/L)^α: see parametrization.depth_alpha/base_depth, "
              "MaximalUpdateParametrization.branch_mult → model.branch_mult",
    "lr.hidden": "µP divides the hidden matrices' lr by width for Adam, not for SGD's square matrices nor for Muon "
                 "(its orthogonalised step is width-independent already: Muon's own rule applies once): see "
                 "MaximalUpdateParametrization.lr_multiplier and the optimizer's mup_family (mugpt.core.optim)",
    "lr.embedding": "the tables' lr is width-independent under Adam and Muon's AdamW part, × width under SGD: see "
                    "parametrization.embedding_lr_mult and lr_multiplier's rule for one width dimension",
    "lr.vector": "gains' and biases' lr is width-independent under Adam, × width under SGD: see lr_multiplier "
                 "and the optimizer's mup_family",
    "lr.readout": "an untied readout's lr is width-independent under Adam, × width under SGD: see lr_multiplier",
    "eps": "Adam's ε must shrink as the gradients do, × base_width/width (× (base_depth/L)^α inside the blocks, "
           "CompleteP Eq. 40): see parametrization.scale_eps, MaximalUpdateParametrization.eps_mult, "
           "mugpt.core.optim.with_eps",
    "lr_wd": "decoupled decay is multiplied by the group's lr: weight_decay must be divided by lr_mult so that lr·wd "
             "is the same at every width and depth: see MaximalUpdateParametrization.param_groups",
    "update": "one step moves these layers' outputs by a width- (or depth-) dependent amount: their learning rate "
              "or forward multiplier is off (see this kind's lr, mult and init rows)",
    "activation": "hidden layers' outputs must stay Θ(1): their init or forward multiplier is off",
    "logits_change": "the logits must move by Θ(1) per step: the readout multiplier or a learning rate is off",
    "stream_change": "the residual stream must move by Θ(1) at every depth: the branch multiplier or the block "
                     "learning rates (CompleteP) are off",
}
DEPTH_HINTS = {
    "lr.hidden": "block learning rates are × (L/base_depth)^(α-1): see MaximalUpdateParametrization.block_lr_factor",
    "lr.vector": "block learning rates are × (L/base_depth)^(α-1): see MaximalUpdateParametrization.block_lr_factor",
    "init.hidden": "CompleteP holds GPT-2's 1/sqrt(2L) residual init at the base depth (model.init_depth)",
}


@dataclass
class Check:
    """One row of the doctor's table: `name` is AXIS:QUANTITY (width:lr.hidden)."""

    name: str
    axis: str
    quantity: str
    kind: str
    expected: float | None
    measured: float | None
    spread: float | None
    tolerance: float
    verdict: str
    hint: str
    per_seed: list[float] = field(default_factory=list)
    values: dict[str, float] = field(default_factory=dict)  # axis value → geometric mean over seeds


def quantity_of(entry: Entry) -> str:
    return f"{entry.quantity}.{entry.kind}" if entry.quantity in PER_KIND else entry.quantity


def in_scope(entry: Entry, axis: str) -> bool:
    """On the depth axis the hidden and vector kinds are the blocks' own (the depth rules' scope)."""
    return axis != "depth" or entry.kind not in ("hidden", "vector") or entry.in_block


def slope(xs: list[float], ys: list[float]) -> float:
    if len(xs) < 2 or any(not (y > 0 and math.isfinite(y)) for y in ys):
        return math.nan
    return float(np.polyfit(np.log2(xs), np.log2(ys), 1)[0])


def fit(records: Iterable[tuple[str, int, int, Entry]]) -> dict[tuple[str, str], dict]:
    """(axis, quantity) → {"values": {x: {seed: value}}, "slopes": [per seed]} from (axis, x, seed, entry)."""
    logs: dict[tuple, list[float]] = defaultdict(list)
    for axis, x, seed, entry in records:
        if in_scope(entry, axis):
            value = entry.value
            logs[(axis, quantity_of(entry), x, seed)].append(math.log(value) if value > 0 else math.nan)
    table: dict[tuple[str, str], dict] = defaultdict(lambda: {"values": defaultdict(dict)})
    for (axis, quantity, x, seed), vals in logs.items():
        table[(axis, quantity)]["values"][x][seed] = math.exp(sum(vals) / len(vals))
    for series in table.values():
        xs = sorted(series["values"])
        seeds = sorted(set.intersection(*(set(series["values"][x]) for x in xs)))
        series["slopes"] = [slope(xs, [series["values"][x][s] for x in xs]) for s in seeds]
    return dict(table)


def hint_for(axis: str, quantity: str, measured: float, expected: float) -> str:
    family = quantity.split(".")[0]
    rule = (DEPTH_HINTS.get(quantity) if axis == "depth" else None) or HINTS.get(quantity) or HINTS.get(family, "")
    if not math.isfinite(measured):
        return f"{quantity} is not finite or not positive at some {axis}: {rule}"
    return f"{quantity} scales as {axis}^{measured:+.2f}, expected {axis}^{expected:+.2f}: {rule}"


def make_checks(records: Iterable[tuple[str, int, int, Entry]], promises: Mapping[str, Mapping[str, float]],
                axes: Iterable[str]) -> list[Check]:
    """One Check per measured (axis, quantity), in the order the axes and quantities were measured, plus one info
    row per promise that had nothing to measure."""
    fitted = fit(records)
    checks = []
    for axis in axes:
        promised = dict(promises.get(axis, {}))
        for (ax, quantity), series in fitted.items():
            if ax != axis:
                continue
            slopes = [s for s in series["slopes"]]
            measured = float(np.mean(slopes)) if slopes else math.nan
            spread = float(np.std(slopes, ddof=1)) if len(slopes) > 1 and math.isfinite(measured) else 0.0
            family, _, kind = quantity.partition(".")
            tol = TOLERANCES.get(family, 0.3)
            expected = promised.pop(quantity, None)
            if expected is None:
                verdict, hint = "info", ""
            elif math.isfinite(measured) and abs(measured - expected) <= tol:
                verdict, hint = "ok", ""
            else:
                verdict, hint = "BROKEN", hint_for(axis, quantity, measured, expected)
            values = {str(x): math.exp(np.mean([math.log(v) if v > 0 else math.nan for v in by_seed.values()]))
                      for x, by_seed in sorted(series["values"].items())}
            checks.append(Check(f"{axis}:{quantity}", axis, quantity, kind or _kind_of_quantity(quantity), expected,
                                measured, spread, tol, verdict, hint, slopes, values))
        for quantity, expected in promised.items():
            family, _, kind = quantity.partition(".")
            checks.append(Check(f"{axis}:{quantity}", axis, quantity, kind or _kind_of_quantity(quantity), expected,
                                None, None, TOLERANCES.get(family, 0.3), "info",
                                "not measured: nothing here has it (a tied readout, undecayed gains, no blocks)"))
    return sorted(checks, key=_row_order)


def _row_order(check: Check) -> tuple:
    family = check.quantity.split(".")[0]
    return (check.axis != "width", check.measured is None, check.expected is None,
            ORDER.index(family) if family in ORDER else len(ORDER),
            KIND_ORDER.index(check.kind) if check.kind in KIND_ORDER else 0)


def _kind_of_quantity(quantity: str) -> str:
    return {"attn_scale": "attention", "branch": "block", "logits_change": "logits", "logits": "logits",
            "stream_change": "stream", "attn_logits": "attention"}.get(quantity, "")


@dataclass
class Report:
    """The doctor's answer: its checks, what was expected, and how long it took."""

    expect: str
    family: str
    checks: list[Check]
    widths: list[int]
    depths: list[int]
    seeds: list[int]
    steps: int
    seconds: float
    losses: dict[str, list[float]] = field(default_factory=dict)
    wall_seconds: float | None = None  # with the corpus loaded and the options checked (the script's run)

    @property
    def broken(self) -> list[str]:
        return [c.name for c in self.checks if c.verdict == "BROKEN"]

    @property
    def ok(self) -> bool:
        return not self.broken

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def to_dict(self) -> dict:
        return {"expect": self.expect, "family": self.family, "ok": self.ok, "broken": self.broken,
                "widths": self.widths, "depths": self.depths, "seeds": self.seeds, "steps": self.steps,
                "seconds": round(self.seconds, 2),
                "wall_seconds": None if self.wall_seconds is None else round(self.wall_seconds, 2),
                "checks": [_json_safe(asdict(c)) for c in self.checks], "losses": self.losses}

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    def table(self) -> str:
        """The checks as a text table: one line each, the hint on broken ones."""
        head = ("check", "kind", "expected", "measured ± spread", "tol", "verdict", "hint")
        lines = [head]
        for c in self.checks:
            expected = "-" if c.expected is None else f"{c.expected:+.2f}"
            measured = ("-" if c.measured is None else "nan" if not math.isfinite(c.measured)
                        else f"{c.measured:+.2f} ± {c.spread:.2f}")
            tolerance = "-" if c.expected is None else f"{c.tolerance:.2f}"
            lines.append((c.name, c.kind, expected, measured, tolerance, c.verdict, c.hint))
        widths = [max(len(line[i]) for line in lines) for i in range(len(head) - 1)]
        fmt = lambda line: "  ".join(cell.ljust(w) for cell, w in zip(line, widths)) + "  " + line[-1]  # noqa: E731
        summary = (f"{len(self.broken)} broken: {', '.join(self.broken)}" if self.broken else "no promise broken")
        return "\n".join([fmt(lines[0]).rstrip(), "  ".join("-" * w for w in widths),
                          *(fmt(line).rstrip() for line in lines[1:]), "",
                          f"expect={self.expect} ({self.family}): {summary}; {self.seconds:.1f} s measuring"
                          + (f", {self.wall_seconds:.1f} s in all" if self.wall_seconds is not None else "")])


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
