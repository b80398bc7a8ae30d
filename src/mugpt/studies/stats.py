"""Statistics over seeds, shared by every study: mean, sample sd and Student-t confidence interval of per-seed
numbers, and their one-line text (`-7.12 ± 0.21 (95% CI, 3 seeds)`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

CI_LEVEL = 0.95


def _t_two_sided_mass(t: float, dof: int) -> float:
    """P(|T| < t) for Student's t with an integer number of degrees of freedom: the closed-form series of
    Abramowitz & Stegun 26.7.3-4 (so the report needs no scipy, which the project does not depend on)."""
    theta = math.atan(t / math.sqrt(dof))
    c2 = math.cos(theta) ** 2
    term = total = 1.0
    if dof % 2:
        if dof == 1:
            return 2.0 * theta / math.pi
        for k in range(1, (dof - 3) // 2 + 1):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return 2.0 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
    for k in range(1, (dof - 2) // 2 + 1):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return math.sin(theta) * total


def t_quantile(level: float, dof: int) -> float:
    """The t with P(|T| < t) = level (two-sided), by bisection on the series above: t(0.95, 2) = 4.303."""
    if dof < 1:
        return math.nan
    lo, hi = 0.0, 1.0
    while _t_two_sided_mass(hi, dof) < level:
        lo, hi = hi, 2.0 * hi
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _t_two_sided_mass(mid, dof) < level else (lo, mid)
    return 0.5 * (lo + hi)


def mean_ci(values: Iterable[float], level: float = CI_LEVEL) -> dict[str, float]:
    """Mean, sample sd and confidence-interval half-width (Student t, n-1 dof) of per-seed numbers. A missing
    number (nan) is left out of n; an infinite one (a diverged seed) makes the mean infinite and the spread
    undefined, instead of being quietly dropped. One seed: sd and half-width are nan (no interval)."""
    x = [float(v) for v in values if not math.isnan(v)]
    n = len(x)
    if n == 0:
        return {"mean": math.nan, "sd": math.nan, "half_width": math.nan, "n": 0}
    mean = float(np.mean(x))
    if n == 1 or not all(math.isfinite(v) for v in x):
        return {"mean": mean, "sd": math.nan, "half_width": math.nan, "n": n}
    sd = float(np.std(x, ddof=1))
    return {"mean": mean, "sd": sd, "half_width": t_quantile(level, n - 1) * sd / math.sqrt(n), "n": n}


def format_ci(stats: Mapping[str, float], fmt: str = "+.2f", unit: str = "", count: bool = True) -> str:
    """`-7.12 ± 0.21 (95% CI, 3 seeds)`; with one seed (or a diverged one) no interval: `-7.12 (1 seed)`.
    count=False leaves the parenthesis out (for a line that says it once)."""
    n, unit = stats["n"], f" {unit}" if unit else ""
    if n == 0:
        return "n/a (no seed in common)"
    seeds = f"{n} seed{'s' if n != 1 else ''}"
    if math.isfinite(stats["half_width"]):
        text = f"{stats['mean']:{fmt}} ± {stats['half_width']:.{_decimals(fmt)}f}{unit}"
        return text + (f" ({CI_LEVEL:.0%} CI, {seeds})" if count else "")
    return f"{stats['mean']:{fmt}}{unit}" + (f" ({seeds})" if count else "")


def format_sd(stats: Mapping[str, float], fmt: str = ".4f", count: bool = True) -> str:
    """`2.4581 ± 0.0040 (sd, 3 seeds)`: the seeds' spread, for losses (how far one run may land from another).
    count=False leaves the parenthesis out (for a table that says it once)."""
    n = stats["n"]
    seeds = f"{n} seed{'s' if n != 1 else ''}"
    if math.isfinite(stats["sd"]):
        return f"{stats['mean']:{fmt}} ± {stats['sd']:.{_decimals(fmt)}f}" + (f" (sd, {seeds})" if count else "")
    return f"{stats['mean']:{fmt}}" + (f" ({seeds})" if count else "")


def _decimals(fmt: str) -> int:
    return int(fmt.rsplit(".", 1)[1].rstrip("fge")) if "." in fmt else 2
