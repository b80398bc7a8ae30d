"""µTransfer analysis: read a sweep's summary.json files, find the best learning rate at each value of an axis
(width by default; any config key: depth, run length, batch), and measure how well the smallest (donor)
value's best learning rate transfers to the largest (target).

Three numbers per series (a parametrization, split further by `group` config keys), as in Tensor Programs V
(figure 1):
- best log2 lr per axis value, from a parabola through the grid minimum and its two neighbours (loss against
  log2 lr is close to a parabola near its minimum; a bare argmin jumps between grid points on flat curves),
- shift: how many octaves the best lr moves along the axis (µP across widths: ~0; SP: drifts down),
- transfer regret: the target's loss at the donor's best grid lr minus the target's best loss.
Each comes from the seed-mean curves (what a practitioner tunes on) and, for error bars, from every seed's
own curve: mean and Student-t 95% confidence interval over seeds, since a shift of a third of an octave means
nothing when the seeds disagree by half an octave.

The package, one concern a module: runs (reading a sweep, its CSV), analysis (curves, best lr, shift, regret,
the text report), figures, sweep_report (all of it in one call), pipeline (the donor → target procedure) and
defaults (µP's defaults against each setting's optimum); the statistics over seeds are mugpt.studies.stats.
"""

from mugpt.studies.stats import CI_LEVEL, format_ci, format_sd, mean_ci, t_quantile
from mugpt.studies.transfer.analysis import (
    AXIS_TITLES,
    AXIS_WORDS,
    Curve,
    analyse,
    axis_title,
    axis_value,
    best_log2_lr,
    format_report,
    loss_curves,
    seed_curves,
    series_of,
)
from mugpt.studies.transfer.defaults import defaults_table, grid_optima
from mugpt.studies.transfer.figures import plot, plot_transfer, series_title
from mugpt.studies.transfer.pipeline import (
    LR_KEYS,
    SHAPE,
    Job,
    chosen_settings,
    format_pipeline,
    grid,
    report_axis,
    run_each,
    run_pipeline,
    transfer_shapes,
    transfer_text,
    verdict,
)
from mugpt.studies.transfer.runs import CSV_COLUMNS, read_summaries, write_csv
from mugpt.studies.transfer.sweep_report import report

__all__ = [
    "AXIS_TITLES", "AXIS_WORDS", "CI_LEVEL", "CSV_COLUMNS", "Curve", "Job", "LR_KEYS", "SHAPE",
    "analyse", "axis_title", "axis_value", "best_log2_lr", "chosen_settings", "defaults_table", "format_ci",
    "format_pipeline", "format_report", "format_sd", "grid", "grid_optima", "loss_curves", "mean_ci", "plot",
    "plot_transfer", "read_summaries", "report", "report_axis", "run_each", "run_pipeline", "seed_curves",
    "series_of", "series_title", "t_quantile", "transfer_shapes", "transfer_text", "verdict", "write_csv",
]
