"""Training-efficiency benchmark: `python scripts/benchmark.py [overrides]` (config: conf/benchmark.yaml).

    python scripts/benchmark.py                                           # the CPU table and overheads
    python scripts/benchmark.py device=cuda preset=gpt2 out_dir=results/benchmark
    python scripts/benchmark.py skip_table=true overhead_blocks=10 overhead_block_steps=4
    python scripts/benchmark.py preset=tiny rows=[pad_vocab,accumulation] skip_overheads=true

The cumulative-tricks table (one spawned process per row, interleaved rounds), Lightning vs a plain loop and
µP vs SP, all through the project's recipe and training step: see mugpt.studies.benchmark. The report is printed and
written as {device}-{preset}.json and .md into out_dir (default: Hydra's run dir, outputs/benchmark/DATE/TIME).
"""

from __future__ import annotations

import shlex
import sys

from mugpt.runtime import reexec_with_heap_reuse

if __name__ == "__main__":
    reexec_with_heap_reuse()  # the same glibc heap settings as src/train.py, before torch is imported

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from mugpt.config import register_configs  # noqa: E402
from mugpt.studies.benchmark import read_options, run_benchmark  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="benchmark")
def main(cfg: DictConfig) -> None:
    try:
        options = read_options(cfg)
    except ValueError as exc:  # a bad option: one line naming it, before anything is measured
        sys.exit(f"error: {exc}")
    run_benchmark(options, command=shlex.join(["python", "scripts/benchmark.py", *sys.argv[1:]]))


if __name__ == "__main__":
    register_configs()  # the optimizer schemas conf/optim/adamw.yaml starts from
    main()
