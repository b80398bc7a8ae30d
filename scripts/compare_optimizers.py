"""Time to target for every optimizer of the zoo, each at its best learning rate from a small sweep:
`python scripts/compare_optimizers.py [overrides]` (config: conf/compare_optimizers.yaml).

For each optimizer: train the same tiny byte-level GPT on Shakespeare (through `mugpt.training.train.train`, configs
composed with Hydra's compose API exactly as src/train.py composes them) at a few log2-spaced learning rates
around its default, keep the lr with the lowest final validation loss, and report for it the final val loss and
the steps, tokens and seconds it took to reach a target val loss, plus the optimizer state in bytes per parameter.
Writes optimizers.md (table), optimizers.csv (every run), optimizers_best.csv and optimizers.png into `out`
(default results/optimizers), each run into out/runs/.

    python scripts/compare_optimizers.py                    # about 5 minutes on a busy 2-core CPU
    python scripts/compare_optimizers.py "optimizers=[adamw,muon]" "lr_factors=[0.5,1,2]" steps=300
    python scripts/compare_optimizers.py mup=false out=/tmp/optimizers_sp

The parametrization is µP at its own base width (parametrization.base_width = model width), where µP computes
exactly SP's function with SP's learning rates; mup=false runs the same comparison under SP.
Options are Hydra overrides (each explained in conf/compare_optimizers.yaml); a bad one is refused in one line
naming it (`error: steps=0: must be a positive integer`) before any run trains. Hydra's log and the options used
(.hydra/) go to outputs/compare_optimizers/DATE/TIME, or hydra.run.dir=...
"""

import hydra
from omegaconf import DictConfig

from mugpt.config import register_configs
from mugpt.studies.compare_optimizers import compare_optimizers


@hydra.main(version_base="1.3", config_path="../conf", config_name="compare_optimizers")
def main(cfg: DictConfig) -> None:
    compare_optimizers(cfg)


if __name__ == "__main__":
    register_configs()  # the optimizer and data schemas that the composed training configs start from
    main()
