"""The training-efficiency benchmark behind `python scripts/benchmark.py [overrides]`.

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

The package: config (presets, rows, batches), hardware (device, timing, memory), clocks (GPU clock and
power), rows (the table), overheads (Lightning vs plain, µP vs SP), tables (markdown and notes), options
(the checked command line) and command (run_benchmark).
"""

from mugpt.studies.benchmark.clocks import (
    GPU_READERS,
    NVIDIA_SMI_QUERY,
    ClockSampler,
    Reader,
    Reading,
    _visible_gpu,
    gpu_reader,
    nvidia_smi_reader,
    parse_nvidia_smi,
    pynvml_reader,
    torch_nvml_reader,
)
from mugpt.studies.benchmark.command import run_benchmark
from mugpt.studies.benchmark.config import (
    PRESETS,
    SCHEDULE_STEPS,
    TRICKS,
    Batch,
    BenchConfig,
    Log,
    Row,
    TokenBatches,
    adamw_config,
    batch_loader,
    build_rows,
    make_batches,
    row_recipe,
)
from mugpt.studies.benchmark.hardware import (
    bf16_native,
    check_device,
    current_rss_mb,
    device_name,
    optimizer_impl,
    peak_flops,
    peak_memory_mb,
    ratio_summary,
    release_memory,
    reset_peak_memory,
    sync,
    tf32_changes_matmuls,
    timed_steps,
)
from mugpt.studies.benchmark.options import BenchOptions, read_options
from mugpt.studies.benchmark.overheads import (
    PlainLoop,
    compare_lightning_plain,
    compare_mup_sp,
    overhead_precision,
    plain_arm,
)
from mugpt.studies.benchmark.rows import (
    LocalRow,
    RowRunner,
    WorkerRow,
    run_table,
)
from mugpt.studies.benchmark.tables import (
    environment,
    overheads_markdown,
    render_markdown,
    table_markdown,
    table_notes,
)

__all__ = [
    "Batch", "BenchConfig", "BenchOptions", "ClockSampler", "GPU_READERS", "LocalRow", "Log", "NVIDIA_SMI_QUERY",
    "PRESETS", "PlainLoop", "Reader", "Reading", "Row", "RowRunner", "SCHEDULE_STEPS", "TRICKS", "TokenBatches",
    "WorkerRow", "_visible_gpu", "adamw_config", "batch_loader", "bf16_native", "build_rows", "check_device",
    "compare_lightning_plain", "compare_mup_sp", "current_rss_mb", "device_name", "environment", "gpu_reader",
    "make_batches", "nvidia_smi_reader", "optimizer_impl", "overhead_precision", "overheads_markdown",
    "parse_nvidia_smi", "peak_flops", "peak_memory_mb", "plain_arm", "pynvml_reader", "ratio_summary",
    "read_options", "release_memory", "render_markdown", "reset_peak_memory", "row_recipe", "run_benchmark",
    "run_table", "sync", "table_markdown", "table_notes", "tf32_changes_matmuls", "timed_steps", "torch_nvml_reader",
]
