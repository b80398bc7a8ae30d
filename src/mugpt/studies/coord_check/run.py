"""The coordinate check's entry points: check a config without loading the corpus, and run either axis's
sweep, writing its CSV of sizes, its CSV of slopes and its figure."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from mugpt.core.optim import titles as optim_titles
from mugpt.data.windows import load_tokens
from mugpt.studies.coord_check.depth import (
    DEPTH_CSV_COLUMNS,
    DEPTH_SLOPE_COLUMNS,
    compute_depth_slopes,
    depth_list,
    format_depth_slope_table,
    plan_depth_traces,
    plot_depth_check,
    run_depth_traces,
)
from mugpt.studies.coord_check.shared import write_csv
from mugpt.studies.coord_check.width import (
    CSV_COLUMNS,
    SLOPE_COLUMNS,
    compute_slopes,
    format_slope_table,
    plan_traces,
    plot_coord_check,
    run_traces,
    summarize_slopes,
)

AXES = ("width", "depth")


def _as_config(cfg: Any) -> DictConfig:
    return cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))


def check_axis(cfg: DictConfig) -> str:
    axis = cfg.get("axis", "width")
    if axis not in AXES:
        raise ValueError(f"axis must be one of {', '.join(AXES)}, got {axis!r}")
    return axis


def check_coord_check(cfg: Any) -> None:
    """Refuse a coordinate-check config that cannot run (bad axis, width, depth, step count or parametrization
    option), without loading the corpus."""
    cfg = _as_config(cfg)
    if check_axis(cfg) == "depth":
        plan_depth_traces(OmegaConf.to_container(cfg.depth_parametrizations, resolve=True),
                          OmegaConf.to_container(cfg.model, resolve=True), depth_list(cfg), int(cfg.steps),
                          vocab_size=1, optim=cfg.optim)
        return
    plan_traces(OmegaConf.to_container(cfg.parametrizations, resolve=True),
                OmegaConf.to_container(cfg.model, resolve=True), list(cfg.widths), int(cfg.steps), vocab_size=1)


def _prepare(cfg: DictConfig, output_dir: str | Path | None,
             tokens: np.ndarray | None) -> tuple[Path, int, np.ndarray]:
    """The output folder (created), torch's thread count, the tokenizer's vocabulary size and the token stream."""
    out = Path(output_dir or cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = cfg.get("num_threads") or os.cpu_count() or 1
    torch.set_num_threads(int(threads))
    from mugpt.data.text import get_tokenizer  # noqa: PLC0415 (Lightning import, only when run)

    vocab_size = get_tokenizer(cfg.data.tokenizer).vocab_size
    return out, vocab_size, load_tokens(cfg.data.tokenizer) if tokens is None else tokens


def _training_text(cfg: DictConfig) -> str:
    """`AdamW lr=0.01, batch 8x64, 3 seed(s)`: how the traced models train, for a figure's title."""
    title = optim_titles().get(cfg.optim.name, cfg.optim.name)  # the optimizer's declared title
    return (f"{title} lr={cfg.optim.lr:g}, "
            f"batch {cfg.data.batch_size}x{cfg.model.block_size}, {len(cfg.seeds)} seed(s)")


def run_coord_check(cfg: Any, output_dir: str | Path | None = None, tokens: np.ndarray | None = None) -> dict:
    """Run the sweep described by cfg (shaped like conf/coord_check.yaml) and write its three files.

    Returns {"rows", "slopes", "summary", "table", "output_dir", "files", "seconds"}. `tokens` skips loading the
    corpus (tests pass a cached stream). axis=depth: see run_depth_check (its summary is None)."""
    cfg = _as_config(cfg)
    if check_axis(cfg) == "depth":
        return run_depth_check(cfg, output_dir, tokens)
    start = time.perf_counter()
    out, vocab_size, tokens = _prepare(cfg, output_dir, tokens)
    params = OmegaConf.to_container(cfg.parametrizations, resolve=True)
    title = f"Coordinate check: {cfg.model.n_layer}-layer GPT, {cfg.model.n_head} heads, {_training_text(cfg)}"
    rows = run_traces(params, OmegaConf.to_container(cfg.model, resolve=True), cfg.optim, list(cfg.widths),
                      list(cfg.seeds), int(cfg.steps), tokens, vocab_size, int(cfg.data.batch_size),
                      int(cfg.data.seed), device=str(cfg.get("device", "cpu")))
    slopes = compute_slopes(rows)
    summary = summarize_slopes(slopes)
    write_csv(rows, out / "coord_check.csv", CSV_COLUMNS)
    write_csv(slopes, out / "coord_check_slopes.csv", SLOPE_COLUMNS)
    plot_coord_check(rows, out / "coord_check.png", title=title)
    seconds = time.perf_counter() - start
    return {"rows": rows, "slopes": slopes, "summary": summary, "table": format_slope_table(summary),
            "output_dir": out, "files": [out / "coord_check.csv", out / "coord_check_slopes.csv",
                                         out / "coord_check.png"], "seconds": seconds}


def run_depth_check(cfg: Any, output_dir: str | Path | None = None, tokens: np.ndarray | None = None) -> dict:
    """axis=depth: the sweep over `depths` at width model.width, comparing `depth_parametrizations`; writes
    coord_check_depth.csv, coord_check_depth_slopes.csv and coord_check_depth.png. Returns what
    run_coord_check returns, the table being format_depth_slope_table's."""
    cfg = _as_config(cfg)
    start = time.perf_counter()
    out, vocab_size, tokens = _prepare(cfg, output_dir, tokens)
    title = f"Depth coordinate check: GPT of width {cfg.model.width}, {cfg.model.n_head} heads, {_training_text(cfg)}"
    rows = run_depth_traces(OmegaConf.to_container(cfg.depth_parametrizations, resolve=True),
                            OmegaConf.to_container(cfg.model, resolve=True), cfg.optim, depth_list(cfg),
                            list(cfg.seeds), int(cfg.steps), tokens, vocab_size, int(cfg.data.batch_size),
                            int(cfg.data.seed), device=str(cfg.get("device", "cpu")))
    slopes = compute_depth_slopes(rows)
    files = [out / "coord_check_depth.csv", out / "coord_check_depth_slopes.csv", out / "coord_check_depth.png"]
    write_csv(rows, files[0], DEPTH_CSV_COLUMNS)
    write_csv(slopes, files[1], DEPTH_SLOPE_COLUMNS)
    plot_depth_check(rows, files[2], title=title)
    seconds = time.perf_counter() - start
    return {"rows": rows, "slopes": slopes, "summary": None, "table": format_depth_slope_table(slopes),
            "output_dir": out, "files": files, "seconds": seconds}
