"""Coordinate check (Tensor Programs V, figure 5): does an activation's size stay put as the model widens?

For each parametrization (SP, µP), width and seed, a GPT is built with the project's own parametrization,
trained for a few optimizer steps (AdamW unless `optim=` says otherwise) at a fixed learning rate on random
windows of Shakespeare, and after each
update the mean |x| of a few activations is measured on one fixed batch. Under µP every hidden activation
stays Θ(1) in width (a flat line against log width) at every step; under SP the updates make them grow
with width from the first step on, the faster the higher the learning rate.

`axis: depth` asks the same of depth (CompleteP, Dey et al. 2025): at the fixed width model.width, for each
depth in `depths` and each of `depth_parametrizations` (µP at depth_alpha 0 and 1 by default), it records the
mean |x| and the update size mean |x_t - x_0| (x_0: the same model's activation before any update). Module
names differ across depths, so each kind (embedding, attention, MLP, residual stream, logits) is the mean over
blocks, plus the last block's residual output. Under α = 1 the branch outputs and the stream the last block
hands on, and their updates, are flat in depth; under α = 0 the branch outputs start at L^-1/2 (GPT-2's
1/sqrt(2L) init) and the stream's update grows nearly as L (a slope of ~0.75 at width 64, depths 2-16).

Forward hooks are our own (mugpt.training.probe): mup.coord_check's hooks break on modules returning tuples
with None, and average in the activation's own precision; here every mean is a float64 mean of |x|.

Entry points: `run_coord_check(cfg)` (a mapping shaped like conf/coord_check.yaml) runs everything and
writes coord_check.csv, coord_check_slopes.csv and coord_check.png (axis=depth: coord_check_depth.csv,
coord_check_depth_slopes.csv and coord_check_depth.png); the pieces are importable one by one.

The package: shared (training a model step by step, the sweep's batches, CSV and panel helpers), width and
depth (each axis's plan, sweep, slopes, table and figure) and run (config check and entry points). The corpus
is mugpt.data.windows's, the hooks mugpt.training.probe's; both stay importable from here.
"""

from mugpt.data.windows import load_tokens, sample_batches
from mugpt.studies.coord_check.depth import (
    DEPTH_CSV_COLUMNS,
    DEPTH_KIND_TITLES,
    DEPTH_KINDS,
    DEPTH_PARAM_TITLES,
    DEPTH_SLOPE_COLUMNS,
    QUANTITIES,
    aggregate_by_kind,
    compute_depth_slopes,
    depth_list,
    depth_table_steps,
    format_depth_slope_table,
    plan_depth_traces,
    plot_depth_check,
    run_depth_traces,
)
from mugpt.studies.coord_check.run import (
    AXES,
    check_axis,
    check_coord_check,
    run_coord_check,
    run_depth_check,
)
from mugpt.studies.coord_check.shared import read_csv, shared_batches, trace_one, trace_updates, train_steps, write_csv
from mugpt.studies.coord_check.width import (
    CSV_COLUMNS,
    KIND_TITLES,
    MODULE_KINDS,
    SLOPE_COLUMNS,
    compute_slopes,
    format_slope_table,
    plan_traces,
    plot_coord_check,
    run_traces,
    summarize_slopes,
)
from mugpt.training.probe import mean_abs, measure, module_kind, probe_outputs, probed_modules, record_l1

__all__ = [
    "AXES", "CSV_COLUMNS", "DEPTH_CSV_COLUMNS", "DEPTH_KINDS", "DEPTH_KIND_TITLES", "DEPTH_PARAM_TITLES",
    "DEPTH_SLOPE_COLUMNS", "KIND_TITLES", "MODULE_KINDS", "QUANTITIES",
    "SLOPE_COLUMNS", "aggregate_by_kind", "check_axis", "check_coord_check", "compute_depth_slopes",
    "compute_slopes", "depth_list", "depth_table_steps", "format_depth_slope_table", "format_slope_table",
    "load_tokens", "mean_abs", "measure", "module_kind", "plan_depth_traces", "plan_traces", "plot_coord_check",
    "plot_depth_check", "probe_outputs", "probed_modules", "read_csv", "record_l1", "run_coord_check",
    "run_depth_check", "run_depth_traces", "run_traces", "sample_batches", "shared_batches", "summarize_slopes",
    "trace_one", "trace_updates", "train_steps", "write_csv",
]
