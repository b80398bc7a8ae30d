"""The device: checking it, synchronised timing, peak memory (CUDA's allocator or the process's resident set),
what it supports (native bf16, TF32) and its name and peak FLOP/s; medians and ratios of timed blocks."""

from __future__ import annotations

import ctypes
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


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
