"""Process-level settings that must be in place before the work starts."""

from __future__ import annotations

import os
import sys

# glibc hands every freed buffer above its mmap threshold back to the OS and page-faults it in again on the
# next step. A GPT-2 vocabulary makes the logits and their gradient hundreds of MB per step, so on CPU this
# costs a large share of step time (measured: sys time 45 s → 6 s over 30 default steps). These variables
# keep such buffers in the heap; glibc reads them only at process start, hence the re-exec.
MALLOC_SETTINGS = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "68719476736"}


def reexec_with_heap_reuse() -> None:
    """Restart this Python process once with MALLOC_SETTINGS in its environment (Linux/glibc only).

    No-op when they are already set, off Linux, or when MUGPT_NO_REEXEC=1 (e.g. under a debugger)."""
    if not sys.platform.startswith("linux") or os.environ.get("MUGPT_NO_REEXEC") == "1":
        return
    if all(k in os.environ for k in MALLOC_SETTINGS):
        return
    env = {**os.environ, **MALLOC_SETTINGS}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], env)
