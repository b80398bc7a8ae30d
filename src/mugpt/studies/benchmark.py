"""The training-efficiency benchmark (issue 6) behind `python scripts/benchmark.py [overrides]`.

Measures, on one model and one stream of random-token batches, in one invocation:

1. The cumulative-tricks table: baseline fp32 (vocab 50257, foreach AdamW, eager), then + TF32 matmuls,
   + bf16 autocast, + padded vocab (50304), + fused AdamW, + torch.compile, + activation checkpointing,
   + gradient accumulation (same tokens per optimizer step in 2 micro-batches of half size). Each row reports
   ms per optimizer step, tokens/s, MFU (where mugpt.training.callbacks.PEAK_FLOPS knows the GPU; n/a on CPU), peak
   memory, its speedup over the row it extends and over the baseline, and on a GPU the SM clock and board power.
2. Lightning vs a plain PyTorch loop: the same model, batches, optimizer, clipping and schedule, trained through
   lightning.Trainer + GPTLightningModule and through `train_step`, interleaved in one process; their losses
   after the same steps are compared.
3. µP vs SP: the plain loop with parametrization mup (base_width = width / 2) and sp, interleaved.

One recipe, one step: every model and optimizer here is built by `mugpt.core.recipe.Recipe` (the trainer's own
recipe) and every plain step is `mugpt.core.recipe.train_step` (a row's micro-batches from `split_batch`, bf16 rows
through its autocast_dtype). So each row clips the gradient norm at optim.grad_clip as the trainer does. Tables
measured before this module existed (e.g. results/benchmark/cuda-gpt2.md) ran a hand-written step
without the gradient norm and clip; `optim.grad_clip=null` drops the clip, the norm is still computed.

Timing: every comparison is interleaved (blocks of steps alternate between arms, A B B A ...), medians are
taken over blocks, and ratios are formed per round/pair before taking their median, so that load from other
processes on a shared machine hits all arms alike. Warm-up steps (and torch.compile's compilation) are excluded.

Memory: each table row runs in its own spawned process, because peak host memory is a per-process number. On
CUDA: torch.cuda.max_memory_allocated over the timed steps. On CPU: the process's peak resident set (VmHWM),
reset after warm-up by writing 5 to /proc/self/clear_refs (Linux >= 4.0; otherwise the lifetime ru_maxrss), so
compile-time memory is left out; it includes the ~0.3-0.4 GB that Python and torch hold after import. Idle rows
hand their freed heap back (malloc_trim / torch.cuda.empty_cache) so that eight rows fit side by side; each
block then starts with one untimed step that re-faults the buffers (skipped when one step outlasts a block).
"""

from __future__ import annotations

import ctypes
import datetime
import json
import logging
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import threading
import time
import traceback
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from mugpt.config import load_optim_config, script_option
from mugpt.core.model import GPT, GPTConfig
from mugpt.core.recipe import Recipe, split_batch, train_step

SCHEDULE_STEPS = 10_000  # the table's rows run an open-ended number of steps: a long cosine, so lr stays ~flat

PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(width=32, n_layer=1, n_head=2, block_size=16, batch_size=4),  # tests
    "small": dict(width=128, n_layer=4, n_head=4, block_size=128, batch_size=8),  # CPU default
    "gpt2": dict(width=768, n_layer=12, n_head=12, block_size=1024, batch_size=16),  # GPT-2 124M
}

Log = Callable[[str], None]
Batch = tuple[torch.Tensor, torch.Tensor]


# ------------------------------------------------------------------------------------------ config
def adamw_config() -> dict:
    """The project's AdamW settings (conf/optim/adamw.yaml on its schema) as a plain dict."""
    return OmegaConf.to_container(load_optim_config("adamw"), resolve=True)


@dataclass(frozen=True)
class BenchConfig:
    device: str = "cpu"
    preset: str = "small"
    width: int = 128
    n_layer: int = 4
    n_head: int = 4
    block_size: int = 128
    batch_size: int = 8
    vocab_size: int = 50257  # GPT-2 BPE
    seed: int = 1337
    compile_mode: str | None = None  # torch.compile mode; None is inductor's default mode
    n_batches: int = 4  # distinct random token batches, cycled
    loss_chunk: int = 2048  # positions per chunk in the chunked cross-entropy row
    threads: int | None = None  # torch intra-op threads; None keeps torch's default (one per core)
    optim: dict = field(default_factory=adamw_config)  # conf/optim/adamw.yaml's keys; `fused` is set per row

    def apply_threads(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> BenchConfig:
        if preset not in PRESETS:
            raise ValueError(f"preset={preset}: unknown preset (choose one of {', '.join(PRESETS)})")
        return cls(preset=preset, **{**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}})

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.block_size

    def model_dict(self, pad_vocab: bool = True, checkpointing: bool = False, loss_impl: str = "full") -> dict:
        return dict(vocab_size=self.vocab_size, block_size=self.block_size, width=self.width, n_layer=self.n_layer,
                    n_head=self.n_head, pad_vocab_multiple=64 if pad_vocab else 1,
                    activation_checkpointing=checkpointing, loss_impl=loss_impl, loss_chunk=self.loss_chunk)

    def optim_config(self, fused: bool | str = "auto") -> DictConfig:
        """The optimizer config with the fused switch set (False: the project's foreach path)."""
        return OmegaConf.create({**self.optim, "fused": fused})

    def recipe(self, parametrization: dict, pad_vocab: bool = True, checkpointing: bool = False,
               fused: bool | str = "auto", loss_impl: str = "full") -> Recipe:
        return Recipe(GPTConfig(**self.model_dict(pad_vocab, checkpointing, loss_impl)), parametrization,
                      self.optim_config(fused))

    def useful_flops_per_token(self) -> float:
        """Training FLOPs per token of the unpadded model: the work MFU counts for every row (padding's extra
        columns and checkpointing's recomputation are not useful work)."""
        with torch.device("meta"):
            return GPT(GPTConfig(**self.model_dict(pad_vocab=False))).flops_per_token()


# ------------------------------------------------------------------------------------------ tricks
TRICKS: dict[str, str] = {
    "tf32": "+ TF32 matmuls",
    "bf16": "+ bf16 autocast",
    "pad_vocab": "+ padded vocab",
    "fused_adamw": "+ fused AdamW",
    "compile": "+ torch.compile",
    "chunked_loss": "+ chunked cross-entropy",
    "checkpointing": "+ activation checkpointing",
    "accumulation": "+ grad accumulation (2 x B/2)",
}


@dataclass(frozen=True)
class Row:
    name: str
    tricks: tuple[str, ...] = ()
    key: str | None = None  # the trick this row adds (None for the baseline)
    parent: int | None = None  # index of the row it extends

    def has(self, trick: str) -> bool:
        return trick in self.tricks

    @property
    def micro_batches(self) -> int:
        return 2 if self.has("accumulation") else 1


def build_rows(tricks: Iterable[str] = tuple(TRICKS), carry_bf16: bool = True) -> list[Row]:
    """The baseline, then one row per trick, each adding its trick to all earlier ones. With carry_bf16=False
    the bf16 row is measured but later rows are built without bf16 (for CPUs without native bf16, where
    autocast is several times slower and would bury every later trick)."""
    tricks = list(tricks)
    unknown = [t for t in tricks if t not in TRICKS]
    if unknown:
        raise ValueError(f"rows: unknown trick(s) {unknown} (choose from {', '.join(TRICKS)})")
    rows = [Row("baseline fp32")]
    active: list[str] = []
    parent = 0
    for key in (t for t in TRICKS if t in tricks):  # always in the table's order
        rows.append(Row(TRICKS[key], tuple(active + [key]), key=key, parent=parent))
        if key == "bf16" and not carry_bf16:
            continue
        active.append(key)
        parent = len(rows) - 1
    return rows


def row_recipe(cfg: BenchConfig, row: Row) -> Recipe:
    """The recipe a table row trains: SP, with the row's vocab padding, checkpointing, loss and AdamW kernel."""
    return cfg.recipe({"name": "sp"}, pad_vocab=row.has("pad_vocab"), checkpointing=row.has("checkpointing"),
                      fused=row.has("fused_adamw"), loss_impl="chunked" if row.has("chunked_loss") else "full")


# -------------------------------------------------------------------------------------------- data
def make_batches(cfg: BenchConfig, device: torch.device | str) -> list[Batch]:
    """cfg.n_batches random GPT-2 token batches (ids < 50257, as real text gives), contiguous (x, y) pairs."""
    g = torch.Generator().manual_seed(cfg.seed)
    out = []
    for _ in range(cfg.n_batches):
        tokens = torch.randint(0, cfg.vocab_size, (cfg.batch_size, cfg.block_size + 1), generator=g)
        out.append((tokens[:, :-1].contiguous().to(device), tokens[:, 1:].contiguous().to(device)))
    return out


class TokenBatches(Dataset):
    """`length` batches cycling through a fixed pool: what both arms of an overhead comparison iterate."""

    def __init__(self, pool: list[Batch], length: int) -> None:
        self.pool, self.length = pool, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Batch:
        return self.pool[i % len(self.pool)]


def batch_loader(pool: list, length: int) -> DataLoader:
    return DataLoader(TokenBatches(pool, length), batch_size=None, shuffle=False, num_workers=0)


# ----------------------------------------------------------------------------------- device helpers
def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak from mugpt.training.callbacks.PEAK_FLOPS (None on CPU and unknown GPUs). Imported
    here, not at the top: mugpt.training.callbacks imports Lightning, which the row processes do not need."""
    from mugpt.training.callbacks import device_peak_flops

    return device_peak_flops(device)


def check_device(device: str) -> torch.device:
    """device=cpu|cuda|cuda:N, refused in one line when this machine has no such device."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device}: not a device (use cpu, cuda or cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device}: the benchmark runs on cpu or cuda")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device}: no CUDA GPU on this machine (use device=cpu)")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device={device}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    return dev


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(step: Callable[[], None], steps: int, device: torch.device) -> float:
    """Seconds for `steps` calls of `step`, device-synchronised at both ends."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return time.perf_counter() - t0


def _median(values: list[float]) -> float:
    return statistics.median(values)


def ratio_summary(a_ms: list[float], b_ms: list[float]) -> dict:
    """a/b per pair of adjacent blocks, its median and spread, and the ratio of the two medians."""
    pairs = [a / b for a, b in zip(a_ms, b_ms)]
    q = statistics.quantiles(pairs, n=4) if len(pairs) >= 2 else [pairs[0]] * 3
    return {"ratio": _median(pairs), "ratio_of_medians": _median(a_ms) / _median(b_ms),
            "pair_ratios": pairs, "pair_ratio_q1": q[0], "pair_ratio_q3": q[2],
            "pair_ratio_min": min(pairs), "pair_ratio_max": max(pairs)}


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def current_rss_mb() -> float | None:
    kb = _status_kb("VmRSS")
    return kb / 1024 if kb is not None else None


def reset_peak_memory(device: torch.device) -> str:
    """Start a new peak-memory window; returns what peak_memory_mb() will then measure."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "cuda_max_allocated"
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return "peak_rss_since_warmup"
    except OSError:
        return "peak_rss_lifetime"


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kb = _status_kb("VmHWM")
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    return kb / 1024


def release_memory(device: torch.device) -> None:
    """Give freed memory back (an idle row should not hold its activations' heap)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def bf16_native(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def tf32_changes_matmuls(device: torch.device) -> bool:
    """Does set_float32_matmul_precision('high') change a matmul's result here? (False: TF32 is a no-op.)"""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(256, 256, generator=g).to(device) for _ in range(2))
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        exact = a @ b
        torch.set_float32_matmul_precision("high")
        fast = a @ b
        return not torch.equal(exact, fast)
    finally:
        torch.set_float32_matmul_precision(previous)


def optimizer_impl(optimizer: torch.optim.Optimizer) -> str:
    d = optimizer.defaults
    return "fused" if d.get("fused") else "foreach" if d.get("foreach") else "for-loop"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


# ------------------------------------------------------------------------------ GPU clock and power
Reading = tuple[float, float]  # (SM clock in MHz, board power in W)
Reader = Callable[[], Reading | None]

NVIDIA_SMI_QUERY = ("nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits")


def _visible_gpu(index: int) -> str:
    """The driver's name for CUDA device `index` of this process: its CUDA_VISIBLE_DEVICES entry (a number or a
    UUID) when that is set, else the index itself. NVML and nvidia-smi number every GPU of the machine."""
    entries = [e.strip() for e in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if e.strip()]
    return entries[index] if index < len(entries) else str(index)


def torch_nvml_reader(index: int = 0) -> Reader | None:
    """torch.cuda.clock_rate / power_draw (NVML through nvidia-ml-py; amdsmi on ROCm), which map the index
    through CUDA_VISIBLE_DEVICES themselves. None where this torch lacks them."""
    if not (hasattr(torch.cuda, "clock_rate") and hasattr(torch.cuda, "power_draw")):
        return None
    return lambda: (float(torch.cuda.clock_rate(index)), torch.cuda.power_draw(index) / 1000)  # mW -> W


def pynvml_reader(index: int = 0) -> Reader | None:
    """pynvml (nvidia-ml-py) directly, for a torch without clock_rate; None without the package or a driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        gpu = _visible_gpu(index)
        handle = (pynvml.nvmlDeviceGetHandleByIndex(int(gpu)) if gpu.isdigit()
                  else pynvml.nvmlDeviceGetHandleByUUID(gpu))
    except Exception:  # noqa: BLE001 - no package, no library, no driver: this source is simply absent
        return None
    return lambda: (float(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)),
                    pynvml.nvmlDeviceGetPowerUsage(handle) / 1000)


def parse_nvidia_smi(text: str) -> Reading | None:
    """'1656, 695.32' -> (1656.0, 695.32); anything else (N/A, an error) -> None."""
    try:
        clock, power = (float(v) for v in text.strip().splitlines()[0].split(","))
    except (ValueError, IndexError):
        return None
    return clock, power


def nvidia_smi_reader(index: int = 0, command: Iterable[str] | None = None) -> Reader | None:
    """The fallback: one nvidia-smi process per reading (`command` replaces it, e.g. in tests)."""
    command = list(command) if command is not None else [*NVIDIA_SMI_QUERY, f"--id={_visible_gpu(index)}"]
    if shutil.which(command[0]) is None:
        return None
    return lambda: parse_nvidia_smi(subprocess.run(command, capture_output=True, text=True, timeout=5).stdout)


GPU_READERS: dict[str, Callable[[int], Reader | None]] = {
    "torch.cuda": torch_nvml_reader, "pynvml": pynvml_reader, "nvidia-smi": nvidia_smi_reader}


def gpu_reader(index: int = 0, readers: dict[str, Callable[[int], Reader | None]] | None = None
               ) -> tuple[str, Reader] | None:
    """(name, reader) of the first source, in `readers`' order, whose first reading succeeds; None if none does."""
    for name, make in (GPU_READERS if readers is None else readers).items():
        read = make(index)
        if read is None:
            continue
        try:
            if read() is not None:
                return name, read
        except Exception:  # noqa: BLE001 - e.g. torch without nvidia-ml-py raises here: try the next source
            continue
    return None


class ClockSampler:
    """The GPU's SM clock (MHz) and board power (W), read every `interval` seconds in a thread while a row is
    being timed, and filed under that row's label. MFU divides by a peak specified at one clock (989 TFLOP/s at
    1830 MHz on an H100 SXM); a card at its power limit runs below it, and this shows by how much.

    `read` returns one (clock, power) reading; by default the first source of GPU_READERS that answers (NVML
    in-process, nvidia-smi last). Off (enabled=False, a CPU run) or without any source it records nothing."""

    def __init__(self, read: Reader | None = None, interval: float = 0.5, enabled: bool = True,
                 gpu_index: int = 0) -> None:
        self.read, self.source = read, "given" if read is not None else None
        self.interval, self.enabled, self.gpu_index = interval, enabled, gpu_index
        self.label: Any = None  # what is being timed now; None between blocks
        self.samples: dict[Any, list[Reading]] = defaultdict(list)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample_forever(self) -> None:
        while not self._stop.wait(self.interval):
            label = self.label
            if label is None:
                continue
            try:
                value = self.read()
            except Exception:  # noqa: BLE001 - a source that failed once (driver gone) stays failed: stop quietly
                return
            if value is not None and self.label == label:  # still the same block
                self.samples[label].append(value)

    def __enter__(self) -> ClockSampler:
        if not self.enabled:
            return self
        if self.read is None:
            found = gpu_reader(self.gpu_index)
            if found is not None:
                self.source, self.read = found
        if self.read is not None:
            self._thread = threading.Thread(target=self._sample_forever, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def summary(self, label: Any) -> dict[str, float | None]:
        values = self.samples.get(label) or []
        return {"sm_clock_mhz": _median([c for c, _ in values]) if values else None,
                "power_w": _median([p for _, p in values]) if values else None, "clock_samples": len(values)}


# ------------------------------------------------------------------------------------- a table row
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


# ----------------------------------------------------------------------------------- overheads
class PlainLoop:
    """`train_step` over a stream of batches, one batch per step: the loop Lightning is compared against."""

    def __init__(self, recipe: Recipe, model: GPT, optimizer, scheduler, batches: Iterable, device: torch.device,
                 bf16: bool = False) -> None:
        self.recipe, self.model, self.optimizer, self.scheduler = recipe, model, optimizer, scheduler
        self.batches = iter(batches)
        self.device = device
        self.autocast_dtype = torch.bfloat16 if bf16 else None
        self.losses: list[torch.Tensor] = []

    @property
    def steps(self) -> int:
        return len(self.losses)

    def step(self) -> None:
        out = train_step(self.model, self.optimizer, self.scheduler, [next(self.batches)],
                         grad_clip=self.recipe.grad_clip, autocast_dtype=self.autocast_dtype)
        self.losses.append(out.loss)

    def run(self, steps: int) -> float:
        return timed_steps(self.step, steps, self.device)


def plain_arm(cfg: BenchConfig, parametrization: dict, batches: Iterable, total_steps: int,
              bf16: bool) -> PlainLoop:
    """A plain loop over the preset's padded model with the project's AdamW (fused on CUDA), its schedule
    spanning total_steps, seeded as the Lightning arm is."""
    device = torch.device(cfg.device)
    recipe = cfg.recipe(parametrization)
    torch.manual_seed(cfg.seed)  # right before the build, as GPTLightningModule's arm and the rows
    model = recipe.build_model(device)
    model.train()
    optimizer, scheduler = recipe.build_optimizer(model, total_steps)
    return PlainLoop(recipe, model, optimizer, scheduler, batches, device, bf16=bf16)


def overhead_precision(device: torch.device) -> tuple[str, bool]:
    """(Lightning precision, plain-loop bf16 autocast) for the overhead comparisons: bf16 autocast on CUDA,
    fp32 on CPU (bf16 autocast without native bf16 would only slow both arms down)."""
    return ("bf16-mixed", True) if device.type == "cuda" and bf16_native(device) else ("32-true", False)


def compare_lightning_plain(cfg: BenchConfig, *, warmup: int = 2, blocks: int = 6, block_steps: int = 2,
                            log: Log = print) -> dict:
    """Lightning (Trainer + GPTLightningModule) vs the plain loop on the same recipe and batches. The plain
    loop's blocks run inside the Lightning fit, from on_train_batch_start, so the two alternate: P1 L1 P2 L2 ...;
    a Lightning block is the time between the on_train_batch_start hooks that open two consecutive blocks, i.e.
    block_steps complete Lightning iterations (data fetch, hooks, training_step, backward, clipping, optimizer
    and scheduler steps, logging), the plain blocks excluded."""
    import lightning as L

    from mugpt.training.module import GPTLightningModule

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", ".*have no `val_dataloader`.*")  # the arms train only
    device = torch.device(cfg.device)
    precision, bf16 = overhead_precision(device)
    torch.set_float32_matmul_precision("high" if device.type == "cuda" else "highest")
    total = warmup + blocks * block_steps + 1  # the last step closes the last Lightning block
    pool = make_batches(cfg, device)
    plain = plain_arm(cfg, {"name": "sp"}, batch_loader(pool, total), total, bf16)
    torch.manual_seed(cfg.seed)
    module = GPTLightningModule(cfg.model_dict(), {"name": "sp"}, OmegaConf.to_container(cfg.optim_config("auto")),
                                compile_mode=None)
    same_init = all(torch.equal(a, b.to(a.device)) for a, b in zip(plain.model.state_dict().values(),
                                                                   module.model.state_dict().values()))

    class InterleavedTimer(L.Callback):
        def __init__(self) -> None:
            self.lightning_s: list[float] = []
            self.plain_s: list[float] = []
            self.hook_window_s: list[float] = []
            self.losses: list[torch.Tensor] = []
            self._block_t0: float | None = None
            self._t_start = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            i = trainer.global_step
            if i >= warmup and (i - warmup) % block_steps == 0:
                sync(device)
                now = time.perf_counter()
                if self._block_t0 is not None:
                    self.lightning_s.append(now - self._block_t0)
                if len(self.plain_s) < blocks:
                    self.plain_s.append(plain.run(block_steps))
                self._block_t0 = time.perf_counter()
            self._t_start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.hook_window_s.append(time.perf_counter() - self._t_start)
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.losses.append(loss.detach())

    timer = InterleavedTimer()
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index] if device.index is not None else 1, max_steps=total, max_epochs=-1,
        precision=precision, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer],
        use_distributed_sampler=False, log_every_n_steps=max(1, total),
    )
    log(f"  Lightning vs plain: {warmup} warm-up steps, then {blocks} x ({block_steps} plain + {block_steps} "
        f"Lightning) steps, precision {precision}")
    plain.run(warmup)  # untimed warm-up of the plain arm, before the Lightning arm's own warm-up steps
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=batch_loader(pool, total))
    fit_s = time.perf_counter() - t0
    while plain.steps < total:  # the step that closed the last Lightning block
        plain.run(1)
    plain_losses = [float(v) for v in plain.losses]
    lightning_losses = [float(v) for v in timer.losses]
    lightning_ms = [1000 * s / block_steps for s in timer.lightning_s]
    plain_ms = [1000 * s / block_steps for s in timer.plain_s]
    windows = timer.hook_window_s[warmup:warmup + blocks * block_steps]
    diffs = [abs(a - b) for a, b in zip(lightning_losses, plain_losses)]
    summary = ratio_summary(lightning_ms, plain_ms)
    return {
        "precision": precision, "steps": total, "lightning_steps": trainer.global_step, "plain_steps": plain.steps,
        "warmup_steps": warmup, "blocks": blocks, "block_steps": block_steps, "same_initial_weights": same_init,
        "plain_ms_per_step": _median(plain_ms), "lightning_ms_per_step": _median(lightning_ms),
        "lightning_hook_window_ms_per_step": 1000 * _median(windows) if windows else None,
        "plain_block_ms": plain_ms, "lightning_block_ms": lightning_ms, **summary,
        "overhead_pct": 100 * (summary["ratio"] - 1), "goal_ratio": 1.02, "goal_met": summary["ratio"] <= 1.02,
        "loss_plain": plain_losses[-1], "loss_lightning": lightning_losses[-1],
        "max_abs_loss_diff": max(diffs) if diffs else None, "losses_equal_1e-5": bool(diffs) and max(diffs) <= 1e-5,
        "fit_seconds": fit_s,
    }


def compare_mup_sp(cfg: BenchConfig, *, warmup: int = 2, blocks: int = 6, block_steps: int = 2,
                   log: Log = print) -> dict:
    """µP (base_width = width / 2) vs SP through the plain loop, blocks alternating S M M S S M ..."""
    device = torch.device(cfg.device)
    _, bf16 = overhead_precision(device)
    torch.set_float32_matmul_precision("high" if device.type == "cuda" else "highest")
    total = warmup + blocks * block_steps
    pool = make_batches(cfg, device)
    base_width = cfg.width // 2
    arms = {name: plain_arm(cfg, pcfg, batch_loader(pool, total), total, bf16)
            for name, pcfg in (("sp", {"name": "sp"}), ("mup", {"name": "mup", "base_width": base_width}))}
    log(f"  µP (base_width {base_width}) vs SP: {warmup} warm-up steps each, then {blocks} x {block_steps} steps "
        f"per arm, alternating")
    for arm in arms.values():
        arm.run(warmup)
    times: dict[str, list[float]] = {"sp": [], "mup": []}
    for b in range(blocks):
        for name in (("sp", "mup") if b % 2 == 0 else ("mup", "sp")):
            times[name].append(1000 * arms[name].run(block_steps) / block_steps)
    summary = ratio_summary(times["mup"], times["sp"])
    return {
        "base_width": base_width, "width": cfg.width, "steps": total, "warmup_steps": warmup, "blocks": blocks,
        "block_steps": block_steps, "param_groups": {k: len(a.optimizer.param_groups) for k, a in arms.items()},
        "group_lrs": {k: sorted({g.get("initial_lr", g["lr"]) for g in a.optimizer.param_groups})
                      for k, a in arms.items()},  # before the schedule: µP's hidden lr is lr / (width / base)
        "sp_ms_per_step": _median(times["sp"]), "mup_ms_per_step": _median(times["mup"]),
        "sp_block_ms": times["sp"], "mup_block_ms": times["mup"],
        **summary, "overhead_pct": 100 * (summary["ratio"] - 1), "goal_ratio": 1.02,
        "goal_met": summary["ratio"] <= 1.02, "loss_sp": float(arms["sp"].losses[-1]),
        "loss_mup": float(arms["mup"].losses[-1]),
    }


# ------------------------------------------------------------------------------------- reporting
def environment(cfg: BenchConfig, machine: str | None) -> dict:
    device = torch.device(cfg.device)
    import lightning

    return {
        "date": datetime.date.today().isoformat(), "machine": machine, "device": cfg.device,
        "device_name": device_name(device), "torch": torch.__version__, "lightning": lightning.__version__,
        "python": platform.python_version(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "bf16_native": bf16_native(device),
        "tf32_changes_matmuls": tf32_changes_matmuls(device), "peak_flops": peak_flops(device),
        "malloc_heap_reuse": all(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _fmt(value: float | None, spec: str, none: str = "n/a") -> str:
    return none if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def table_markdown(rows: list[dict], env: dict) -> str:
    clocks = any(r.get("sm_clock_mhz") is not None for r in rows)  # measured on GPUs only
    lines = ["| # | row | vocab | AdamW | ms/step | speedup vs prev. | vs baseline | tokens/s | MFU | peak mem (MB) |"
             + (" SM clock (MHz) | power (W) |" if clocks else ""),
             "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if clocks else "")]
    for i, r in enumerate(rows):
        name = r["name"]
        if r.get("error"):
            lines.append(f"| {i} | {name} | {r['vocab']} | {r['optimizer'] or '-'} | failed: "
                         f"{r['error'].splitlines()[-1][:80]} | - | - | - | - | - |" + (" - | - |" if clocks else ""))
            continue
        if r["key"] == "tf32" and not env.get("tf32_changes_matmuls", True):
            name += " (no-op here: results bit-identical)"
        if r["key"] == "bf16" and not env.get("bf16_native", True) and r.get("carried") is False:
            name += " (no native bf16: not carried into later rows)"
        prev = (f"{r['speedup_vs_parent']:.2f}x vs #{r['parent']}" if r["speedup_vs_parent"] is not None else "-")
        base = f"{r['speedup_vs_baseline']:.2f}x" if r["speedup_vs_baseline"] is not None else "-"
        mfu = _fmt(100 * r["mfu"] if r["mfu"] is not None else None, ".1f") + ("%" if r["mfu"] is not None else "")
        lines.append(f"| {i} | {name} | {r['vocab']} | {r['optimizer']} | {r['ms_per_step']:.0f} | {prev} | "
                     f"{base} | {r['tokens_per_s']:,.0f} | {mfu} | "
                     f"{_fmt(r['peak_memory_mb'], ',.0f')} |"
                     + (f" {_fmt(r.get('sm_clock_mhz'), '.0f')} | {_fmt(r.get('power_w'), '.0f')} |" if clocks else ""))
    return "\n".join(lines)


def overheads_markdown(result: dict) -> str:
    out = []
    lp = result.get("lightning_vs_plain")
    if lp:
        out.append(
            f"- **Lightning vs plain loop** ({lp['precision']}, {lp['blocks']} interleaved block pairs of "
            f"{lp['block_steps']} steps): plain {lp['plain_ms_per_step']:.1f} ms/step, Lightning "
            f"{lp['lightning_ms_per_step']:.1f} ms/step; ratio Lightning/plain **{lp['ratio']:.3f}** (median of "
            f"pairs; pairs range {lp['pair_ratio_min']:.3f}-{lp['pair_ratio_max']:.3f}, ratio of medians "
            f"{lp['ratio_of_medians']:.3f}); goal <= 1.02: **{'met' if lp['goal_met'] else 'not met'}**. "
            f"Loss after {lp['steps']} steps: Lightning {lp['loss_lightning']:.6f}, plain {lp['loss_plain']:.6f} "
            f"(max |diff| over all steps {lp['max_abs_loss_diff']:.2e}).")
    ms = result.get("mup_vs_sp")
    if ms:
        out.append(
            f"- **µP vs SP** (plain loop, base_width {ms['base_width']}, width {ms['width']}, {ms['blocks']} "
            f"alternating blocks of {ms['block_steps']} steps per arm): SP {ms['sp_ms_per_step']:.1f} ms/step, µP "
            f"{ms['mup_ms_per_step']:.1f} ms/step; ratio µP/SP **{ms['ratio']:.3f}** (pairs range "
            f"{ms['pair_ratio_min']:.3f}-{ms['pair_ratio_max']:.3f}, ratio of medians {ms['ratio_of_medians']:.3f}); "
            f"goal <= 1.02: **{'met' if ms['goal_met'] else 'not met'}**. Loss after {ms['steps']} steps: "
            f"SP {ms['loss_sp']:.4f}, µP {ms['loss_mup']:.4f}.")
    return "\n".join(out)


def render_markdown(result: dict) -> str:
    env, cfg = result["environment"], result["config"]
    machine = env.get("machine") or (f"{env['cpu_count']}-core CPU" if cfg["device"] == "cpu" else env["device_name"])
    load = ""
    if env.get("loadavg_start") and env.get("loadavg_end"):
        load = (f"; 1-min load average {env['loadavg_start'][0]:.1f} at the start, {env['loadavg_end'][0]:.1f} at "
                f"the end (other processes share the machine when it exceeds {env['cpu_count']})")
    clip = (cfg.get("optim") or {}).get("grad_clip")
    parts = [f"# Training-efficiency benchmark ({cfg['device']}, preset {cfg['preset']})", "",
             f"Measured {env['date']} on {machine} ({env['device_name']}, torch {env['torch']}, "
             f"torch threads: {env['torch_threads']}{load}) with `{result['command']}`, "
             f"{result['run_seconds'] / 60:.1f} min in all. Model: GPT-2 BPE vocab ({cfg['vocab_size']}), width "
             f"{cfg['width']}, {cfg['n_layer']} layers, {cfg['n_head']} heads, block {cfg['block_size']}, batch "
             f"{cfg['batch_size']} ({cfg['batch_size'] * cfg['block_size']} tokens per optimizer step), random "
             f"tokens, AdamW (conf/optim/adamw.yaml, gradient norm clipped at {clip})."]
    if result.get("table"):
        parts += ["", table_markdown(result["table"], env)]
    if result.get("notes"):
        parts += [""] + [f"- {n}" for n in result["notes"]]
    over = overheads_markdown(result)
    if over:
        parts += ["", "Overheads (interleaved, ratios from the same run):", "", over]
    return "\n".join(parts) + "\n"


def table_notes(result: dict) -> list[str]:
    env, rows = result["environment"], result.get("table") or []
    notes = ["Rows are cumulative: each adds its trick to the row named in 'speedup vs prev.'; ms/step is the "
             "median over interleaved rounds, speedups the median of per-round ratios. Every step is the "
             "trainer's (mugpt.core.recipe.train_step), gradient-norm clipping included."]
    if not env["tf32_changes_matmuls"] and any(r["key"] == "tf32" for r in rows):
        notes.append("TF32: torch.set_float32_matmul_precision('high') changes nothing on this device (a test "
                     "matmul is bit-identical), so rows 0 and 1 run the same computation: their ratio is the noise "
                     "floor.")
    if any(r["key"] == "bf16" and r.get("carried") is False for r in rows):
        notes.append("bf16: this CPU has no native bf16 (oneDNN reports none), so autocast runs emulated bf16 "
                     "matmuls; the row is measured but later rows are built without it (strict_cumulative=true keeps "
                     "it).")
    compiled = [r for r in rows if r.get("compile_s") is not None]
    if compiled:
        notes.append("torch.compile (inductor): compile time excluded from ms/step; first step took "
                     + ", ".join(f"{r['first_step_s']:.0f} s (#{rows.index(r)})" for r in compiled) + ".")
    kinds = {r["memory_kind"] for r in rows}
    if "peak_rss_since_warmup" in kinds or "peak_rss_lifetime" in kinds:
        base = [r["rss_after_import_mb"] for r in rows if r.get("rss_after_import_mb")]
        notes.append("Peak memory on CPU: the row's own process's peak resident set during its timed steps "
                     "(VmHWM reset after warm-up), including about "
                     f"{_median(base) if base else float('nan'):.0f} MB that Python + torch hold after import; "
                     "glibc keeps freed buffers in the heap (the same settings as src/train.py), so this is the heap's "
                     "high-water mark rather than the live tensors.")
    elif "cuda_max_allocated" in kinds:
        notes.append("Peak memory: torch.cuda.max_memory_allocated over the timed steps of the row's own process.")
    sources = {r.get("clock_source") for r in rows if r.get("clock_samples")}
    if sources:
        notes.append(f"SM clock and power: medians of readings every 0.5 s while the row was timed "
                     f"(from {', '.join(sorted(sources))}).")
    if env["peak_flops"] is None:
        notes.append("MFU: n/a, no known peak FLOP/s for this device (callbacks.PEAK_FLOPS lists GPUs only).")
    else:
        notes.append(f"MFU = tokens/s x {result['flops_per_token']:.3g} FLOPs/token (unpadded model, no recompute) "
                     f"/ {env['peak_flops']:.3g} FLOP/s (dense bf16 peak, also for the fp32/TF32 rows).")
    return notes


# ------------------------------------------------------------------------------------ the command
@dataclass
class BenchOptions:
    """What one `scripts/benchmark.py` run measures, checked (see conf/benchmark.yaml for each key)."""

    bench: BenchConfig
    tricks: list[str]
    rounds: int
    block_seconds: float
    warmup: int
    overhead_blocks: int
    overhead_block_steps: int
    isolate: bool = True
    strict_cumulative: bool = False
    skip_table: bool = False
    skip_overheads: bool = False
    machine: str | None = None
    out_dir: Path = Path(".")

    def settings(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("bench", "out_dir")}


def _tricks(value: Any) -> list[str]:
    if isinstance(value, str):  # rows='tf32,compile' as one string
        return [t.strip() for t in value.split(",") if t.strip()]
    if isinstance(value, (list, ListConfig)):
        return [str(t) for t in value]
    raise ValueError(f"rows={value}: expected a list of tricks, e.g. rows=[tf32,bf16]")


def read_options(cfg: DictConfig) -> BenchOptions:
    """The checked options of a run: every refusal (one line naming the key) comes before anything is measured."""
    device = check_device(script_option(cfg, "device", str))
    preset = script_option(cfg, "preset", str)
    if preset not in PRESETS:
        raise ValueError(f"preset={preset}: unknown preset (choose one of {', '.join(PRESETS)})")
    shape = {k: script_option(cfg, k, int, nullable=True, minimum=1)
             for k in ("width", "n_layer", "n_head", "block_size", "batch_size")}
    optim = OmegaConf.to_container(cfg.optim, resolve=True)
    if optim.get("name") != "adamw":
        raise ValueError(f"optim.name={optim.get('name')}: the table compares AdamW implementations; use optim=adamw")
    compile_mode = script_option(cfg, "compile_mode", str)
    modes = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
    if compile_mode not in modes:
        raise ValueError(f"compile_mode={compile_mode}: choose one of {', '.join(modes)}")
    bench = BenchConfig.from_preset(preset, device=str(device), seed=script_option(cfg, "seed", int),
                                    threads=script_option(cfg, "threads", int, nullable=True, minimum=1),
                                    compile_mode=None if compile_mode == "default" else compile_mode,
                                    optim=optim, loss_chunk=script_option(cfg, "loss_chunk", int, minimum=1), **shape)
    if bench.width % bench.n_head:
        raise ValueError(f"width={bench.width} is not divisible by n_head={bench.n_head}")
    tricks = _tricks(cfg.get("rows"))
    build_rows(tricks)  # an unknown trick is refused here
    skip_table, skip_overheads = script_option(cfg, "skip_table", bool), script_option(cfg, "skip_overheads", bool)
    if not skip_table and "accumulation" in tricks and bench.batch_size % 2:
        raise ValueError(f"batch_size={bench.batch_size}: the accumulation row splits the batch in two, so it must "
                         f"be even (or leave accumulation out of rows)")
    if not skip_overheads and (bench.width // 2) % bench.n_head:
        raise ValueError(f"width={bench.width}: µP vs SP uses base_width={bench.width // 2}, which n_head="
                         f"{bench.n_head} must divide (or skip_overheads=true)")
    cuda = device.type == "cuda"

    def timing(key: str, kind: type, on_cuda: Any, on_cpu: Any, minimum: float) -> Any:
        value = script_option(cfg, key, kind, nullable=True, minimum=minimum)
        return value if value is not None else (on_cuda if cuda else on_cpu)

    return BenchOptions(
        bench=bench, tricks=tricks, rounds=timing("rounds", int, 3, 2, 1),
        block_seconds=timing("block_seconds", float, 3.0, 6.0, 0), warmup=timing("warmup", int, 3, 2, 1),
        overhead_blocks=timing("overhead_blocks", int, 10, 6, 1),
        overhead_block_steps=timing("overhead_block_steps", int, 10, 4, 1),
        isolate=script_option(cfg, "isolate", bool), strict_cumulative=script_option(cfg, "strict_cumulative", bool),
        skip_table=skip_table, skip_overheads=skip_overheads, machine=script_option(cfg, "machine", str, nullable=True),
        out_dir=Path(script_option(cfg, "out_dir", str)))


def run_benchmark(opts: BenchOptions, command: str = "python scripts/benchmark.py", log: Log = print) -> dict:
    """Measure what `opts` asks for, print the markdown report and write OUT_DIR/{device}-{preset}.json and .md."""
    started = time.perf_counter()
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    cfg = opts.bench
    cfg.apply_threads()
    env = environment(cfg, opts.machine)
    log(f"{env['date']}  {env['device_name']}  torch {env['torch']}  threads {env['torch_threads']}  "
        f"load {env['loadavg_start']}")
    log(f"model: width {cfg.width}, {cfg.n_layer} layers, block {cfg.block_size}, batch {cfg.batch_size} "
        f"({cfg.tokens_per_step} tokens/step)")
    result: dict[str, Any] = {"command": command, "environment": env, "config": asdict(cfg),
                              "flops_per_token": cfg.useful_flops_per_token(), "settings": opts.settings()}
    if not opts.skip_table:
        carry = opts.strict_cumulative or env["bf16_native"]
        rows = build_rows(opts.tricks, carry_bf16=carry)
        log(f"\ncumulative tricks table: {len(rows)} rows, {opts.rounds} interleaved rounds"
            + (", one process per row" if opts.isolate else ""))
        table = run_table(cfg, rows, rounds=opts.rounds, block_seconds=opts.block_seconds, warmup=opts.warmup,
                          isolate=opts.isolate, log=log)
        for r in table:
            r["carried"] = not (r["key"] == "bf16" and not carry)
        result["table"] = table
    if not opts.skip_overheads:
        log("\noverheads:")
        kw = dict(warmup=opts.warmup, blocks=opts.overhead_blocks, block_steps=opts.overhead_block_steps, log=log)
        result["lightning_vs_plain"] = compare_lightning_plain(cfg, **kw)
        result["mup_vs_sp"] = compare_mup_sp(cfg, **kw)
    result["run_seconds"] = time.perf_counter() - started
    env["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["notes"] = table_notes(result) if result.get("table") else []
    markdown = render_markdown(result)
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    stem = opts.out_dir / (f"{torch.device(cfg.device).type}-{cfg.preset}"
                           + (f"-threads{cfg.threads}" if cfg.threads else ""))
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    stem.with_suffix(".md").write_text(markdown)
    log("\n" + markdown)
    log(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.md')} ({result['run_seconds']:.0f} s)")
    return result
