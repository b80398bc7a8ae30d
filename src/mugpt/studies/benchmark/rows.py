"""The cumulative-tricks table: each row trained in its own process (or this one), the rows interleaved in
rounds of timed blocks, and per row its time, throughput, MFU, memory, speedups and clock."""

from __future__ import annotations

import math
import os
import time
import traceback
import warnings
from dataclasses import asdict
from typing import Any

import torch

from mugpt.core.model import GPTConfig
from mugpt.core.recipe import split_batch, train_step
from mugpt.studies.benchmark.clocks import ClockSampler, Reader
from mugpt.studies.benchmark.config import SCHEDULE_STEPS, BenchConfig, Log, Row, make_batches, row_recipe
from mugpt.studies.benchmark.hardware import (
    _median,
    current_rss_mb,
    optimizer_impl,
    peak_flops,
    peak_memory_mb,
    release_memory,
    reset_peak_memory,
    timed_steps,
)
from mugpt.studies.benchmark.tables import _fmt


class RowRunner:
    """One table row: the row's recipe (model, optimizer, schedule) and `train_step` over its batches."""

    def __init__(self, cfg: BenchConfig, row: Row) -> None:
        self.cfg, self.row = cfg, row
        self.device = torch.device(cfg.device)
        self.activate()
        self.recipe = row_recipe(cfg, row)
        torch.manual_seed(cfg.seed)  # right before the build: every row starts from the same weights
        self.model = self.recipe.build_model(self.device)
        self.model.train()
        self.config = self.model.config
        self.optimizer, self.scheduler = self.recipe.build_optimizer(self.model, SCHEDULE_STEPS)
        self.forward = torch.compile(self.model, mode=cfg.compile_mode) if row.has("compile") else self.model
        self.autocast_dtype = torch.bfloat16 if row.has("bf16") else None
        self.batches = make_batches(cfg, self.device)
        self.steps = 0
        self.last_loss: torch.Tensor | None = None

    def activate(self) -> None:
        """Process-wide settings of this row (they matter when rows share a process)."""
        torch.set_float32_matmul_precision("high" if self.row.has("tf32") else "highest")

    def step(self) -> None:
        batch = self.batches[self.steps % len(self.batches)]
        self.steps += 1
        out = train_step(self.forward, self.optimizer, self.scheduler, split_batch(batch, self.row.micro_batches),
                         grad_clip=self.recipe.grad_clip, autocast_dtype=self.autocast_dtype)
        self.last_loss = out.loss

    def run(self, steps: int) -> float:
        self.activate()
        return timed_steps(self.step, steps, self.device)


class LocalRow:
    """Runs a row in this process: the body of a worker process, or the whole row with isolate=False."""

    def __init__(self, cfg: BenchConfig, row: Row) -> None:
        self.cfg, self.row = cfg, row
        self.device = torch.device(cfg.device)
        self.runner: RowRunner | None = None
        self.memory_kind = "n/a"

    def setup(self, warmup: int) -> dict:
        self.cfg.apply_threads()
        rss0 = current_rss_mb()
        t0 = time.perf_counter()
        self.runner = RowRunner(self.cfg, self.row)
        build_s = time.perf_counter() - t0
        first_s = self.runner.run(1)  # includes torch.compile's compilation for compiled rows
        later = [self.runner.run(1) for _ in range(max(0, warmup - 1))]
        step_s = min(later) if later else first_s
        release_memory(self.device)
        self.memory_kind = reset_peak_memory(self.device)
        r = self.runner
        return {"build_s": build_s, "first_step_s": first_s, "warmup_step_s": step_s,
                "compile_s": max(0.0, first_s - step_s) if self.row.has("compile") else None,
                "vocab": r.config.padded_vocab_size, "optimizer": optimizer_impl(r.optimizer),
                "params": r.model.num_params(), "rss_after_import_mb": rss0, "pid": os.getpid(),
                "threads": torch.get_num_threads()}

    def block(self, steps: int, rewarm: bool) -> float:
        assert self.runner is not None
        if rewarm:
            self.runner.run(1)
        seconds = self.runner.run(steps)
        release_memory(self.device)
        return seconds

    def finish(self) -> dict:
        assert self.runner is not None
        loss = float(self.runner.last_loss) if self.runner.last_loss is not None else float("nan")
        return {"peak_memory_mb": peak_memory_mb(self.device), "memory_kind": self.memory_kind,
                "final_loss": loss, "steps": self.runner.steps}

    def close(self) -> None:
        self.runner = None


def _worker_main(conn, cfg_dict: dict, row_dict: dict, warmup: int) -> None:
    """A row's own process: set up, then answer ('block', {...}) and ('finish', None) until finished."""
    warnings.filterwarnings("ignore")
    try:
        local = LocalRow(BenchConfig(**cfg_dict), Row(**{**row_dict, "tricks": tuple(row_dict["tricks"])}))
        conn.send(("ok", local.setup(warmup)))
        while True:
            cmd, arg = conn.recv()
            if cmd == "block":
                conn.send(("ok", local.block(**arg)))
            elif cmd == "finish":
                conn.send(("ok", local.finish()))
                return
    except BaseException:  # noqa: BLE001 - reported to the parent, which goes on with the other rows
        try:
            conn.send(("error", traceback.format_exc()))
        except (OSError, BrokenPipeError):
            pass
    finally:
        conn.close()


class WorkerRow:
    """The same interface as LocalRow, backed by a spawned process (not a daemon: inductor may start its own
    compile workers from it)."""

    def __init__(self, cfg: BenchConfig, row: Row) -> None:
        self.cfg, self.row = cfg, row
        self.conn = None
        self.process = None

    def _call(self, message: tuple | None) -> Any:
        if message is not None:
            self.conn.send(message)
        try:
            status, value = self.conn.recv()
        except EOFError:
            code = self.process.exitcode
            raise RuntimeError(f"row '{self.row.name}': worker process died (exit code {code})") from None
        if status != "ok":
            raise RuntimeError(f"row '{self.row.name}' failed in its worker:\n{value}")
        return value

    def setup(self, warmup: int) -> dict:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, asdict(self.cfg), asdict(self.row), warmup))
        self.process.start()
        child.close()  # the worker holds its end; EOF here then means the worker is gone
        return self._call(None)

    def block(self, steps: int, rewarm: bool) -> float:
        return self._call(("block", {"steps": steps, "rewarm": rewarm}))

    def finish(self) -> dict:
        return self._call(("finish", None))

    def close(self) -> None:
        if self.process is None:
            return
        self.conn.close()  # a worker still waiting for a command sees EOF and exits
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=10)


# ---------------------------------------------------------------------------------------- the table
def run_table(cfg: BenchConfig, rows: list[Row], *, rounds: int = 2, block_seconds: float = 6.0, warmup: int = 2,
              isolate: bool = True, max_block_steps: int = 50, log: Log = print,
              clock_reader: Reader | None = None) -> list[dict]:
    """Measure every row, interleaved: each round runs one block of steps of every row (forward order in even
    rounds, backward in odd ones); ms/step is the median over rounds, speedups the median of per-round ratios.
    A block is about block_seconds long (its step count is set from the row's warm-up step time)."""
    device = torch.device(cfg.device)
    peak = peak_flops(device)
    flops_per_token = cfg.useful_flops_per_token()
    handles: list[Any] = []
    infos: list[dict | None] = []
    plans: list[tuple[int, bool]] = []
    errors: list[str | None] = [None] * len(rows)
    finals: list[dict | None] = [None] * len(rows)
    per_step: list[list[float]] = [[math.nan] * len(rows) for _ in range(rounds)]
    # on a GPU, the clock and power while each row is timed (the GPU's index as this process numbers it)
    clocks = ClockSampler(clock_reader, enabled=device.type == "cuda", gpu_index=device.index or 0)
    try:
        for i, row in enumerate(rows):
            handle = WorkerRow(cfg, row) if isolate else LocalRow(cfg, row)
            handles.append(handle)
            try:
                info = handle.setup(warmup)
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory: report the row, measure the others
                errors[i] = f"{type(exc).__name__}: {exc}".strip()
                infos.append(None)
                plans.append((0, False))
                handle.close()
                log(f"  FAILED: {row.name}: {errors[i].splitlines()[-1]}")
                continue
            step_s = info["warmup_step_s"]
            steps = max(1, min(max_block_steps, round(block_seconds / step_s))) if step_s > 0 else 1
            rewarm = step_s <= block_seconds  # a re-warm step is cheap next to the block only then
            infos.append(info)
            plans.append((steps, rewarm))
            extra = f", compile {info['compile_s']:.1f}s" if info["compile_s"] is not None else ""
            log(f"  ready: {row.name:<34} vocab {info['vocab']}, AdamW {info['optimizer']}, "
                f"warm-up step {1000 * step_s:.0f} ms{extra} -> {steps} step(s)/block")
        with clocks:
            for r in range(rounds):
                order = range(len(rows)) if r % 2 == 0 else reversed(range(len(rows)))
                for i in order:
                    if errors[i] is not None:
                        continue
                    steps, rewarm = plans[i]
                    clocks.label = i
                    try:
                        per_step[r][i] = handles[i].block(steps, rewarm) / steps
                    except Exception as exc:  # noqa: BLE001
                        errors[i] = f"{type(exc).__name__}: {exc}".strip()
                        log(f"  FAILED: {rows[i].name}: {errors[i].splitlines()[-1]}")
                    finally:
                        clocks.label = None
                log(f"  round {r + 1}/{rounds}: " + ", ".join(_fmt(1000 * s, ".0f") for s in per_step[r])
                    + " ms/step")
        for i, h in enumerate(handles):
            if errors[i] is None:
                finals[i] = h.finish()
    finally:
        for h in handles:
            h.close()

    def ratio(a: int, b: int) -> float | None:
        if errors[a] is not None or errors[b] is not None:
            return None
        return _median([per_step[r][a] / per_step[r][b] for r in range(rounds)])

    results = []
    for i, row in enumerate(rows):
        info, final = infos[i] or {}, finals[i] or {}
        ok = errors[i] is None
        seconds = [per_step[r][i] for r in range(rounds)]
        ms = 1000 * _median(seconds) if ok else None
        tokens_per_s = cfg.tokens_per_step / (ms / 1000) if ok else None
        results.append({
            "name": row.name, "key": row.key, "tricks": list(row.tricks), "parent": row.parent, "error": errors[i],
            "vocab": GPTConfig(**cfg.model_dict(pad_vocab=row.has("pad_vocab"))).padded_vocab_size,
            "optimizer": info.get("optimizer"), "micro_batches": row.micro_batches,
            "micro_batch_size": cfg.batch_size // row.micro_batches, "tokens_per_step": cfg.tokens_per_step,
            "ms_per_step": ms, "ms_per_step_rounds": [1000 * s for s in seconds] if ok else None,
            "tokens_per_s": tokens_per_s,
            "mfu": tokens_per_s * flops_per_token / peak if peak and ok else None,
            "speedup_vs_parent": ratio(row.parent, i) if row.parent is not None else None,
            "speedup_vs_baseline": ratio(0, i),
            "peak_memory_mb": final.get("peak_memory_mb") if isolate else None,
            "memory_kind": final.get("memory_kind", "n/a") if isolate else "n/a (rows share one process)",
            "rss_after_import_mb": info.get("rss_after_import_mb") if isolate else None,
            "compile_s": info.get("compile_s"), "first_step_s": info.get("first_step_s"),
            "steps_per_block": plans[i][0], "rewarm_step": plans[i][1], "steps": final.get("steps"),
            "final_loss": final.get("final_loss"), "params": info.get("params"), **clocks.summary(i),
            "clock_source": clocks.source,
        })
    return results
