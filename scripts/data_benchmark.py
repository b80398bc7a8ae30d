"""Data-path benchmark: `python scripts/data_benchmark.py [overrides]` (config: conf/data_benchmark.yaml).

    python scripts/data_benchmark.py "machine='2-core shared CPU, 24 GiB'" out_dir=results/data
    python scripts/data_benchmark.py sizes_mb=[5] workers=[1] train_steps=10 train_overrides=[model=tiny]

1. Generates corpora of sizes_mb MB (Shakespeare's plays, paragraph order reshuffled for every copy, 8 MB files).
2. Prepares each with scripts/prepare_data.py for every worker count, in a child process: wall time, tokens/s,
   peak RSS of the main process and of its largest worker (getrusage).
3. Trains train_steps steps at the default config from each corpus's shards (data=shards) and, interleaved, from
   today's in-memory cache (data=shakespeare): ms/step (the Throughput callback's steady-state figure) and the
   training process's peak RSS.
Writes data.json and data.md into out_dir.
"""

import hydra
from omegaconf import DictConfig

from mugpt.studies.data_benchmark import data_benchmark


@hydra.main(version_base="1.3", config_path="../conf", config_name="data_benchmark")
def main(cfg: DictConfig) -> None:
    data_benchmark(cfg)


if __name__ == "__main__":
    main()
