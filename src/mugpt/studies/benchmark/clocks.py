"""The GPU's SM clock and board power while a row is timed: in-process NVML first, nvidia-smi last."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch

from mugpt.studies.benchmark.hardware import _median

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
