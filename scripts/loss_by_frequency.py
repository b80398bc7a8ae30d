"""Training loss by token frequency, SGD against AdamW (Kunstner et al. 2024, "Heavy-Tailed Class Imbalance and
Why Adam Outperforms Gradient Descent on Language Models", figure 1):
`python scripts/loss_by_frequency.py [overrides]` (config: conf/loss_by_frequency.yaml).

Trains the same reduced GPT-2 on Shakespeare with the GPT-2 BPE tokenizer (heavy-tailed: a few tokens make up
most of the text, tens of thousands are rare) twice, `optim=sgd` and `optim=adamw` at their default learning
rates, through `mugpt.training.train.train` with configs composed by Hydra's compose API (as src/train.py composes
them), with `diagnostics=on` and `logger=csv`. The diagnostics log the training loss of the current batch's
targets per token-frequency bucket (deciles of the training split's token occurrences: bucket 0 = the most
frequent tokens making up the first 10% of the corpus, bucket 9 = the rare tail making up the last 10%).

Writes into `out` (default results/loss_by_frequency/):
  loss_by_frequency.csv         optimizer, step, bucket, loss  (step: the updates done before the batch was
                                measured, i.e. the metrics.csv row where Lightning logs that batch's train/loss)
  loss_by_frequency.png         per-bucket training loss over steps (SGD | AdamW) and the final loss by bucket
  loss_by_frequency_final.csv   optimizer, bucket, loss (mean of the last `final_events` events), token types
                                and share of the training tokens per bucket
  module_norms.csv, .png        act/* and update/* of both runs over the run
  runs/<optimizer>/             each run's output directory (metrics.csv under csv/version_0/)

    python scripts/loss_by_frequency.py          # about 4 minutes on an idle 2-core CPU (12 on a shared one)
    python scripts/loss_by_frequency.py steps=400 width=128 n_layer=4
    python scripts/loss_by_frequency.py plot_only=true          # redraw from the runs already in `out`

Per-bucket losses are measured on one batch each (about a tenth of its targets per bucket), so single events are
noisy; the curves are a running mean over `smooth` events.
Options are Hydra overrides (each explained in conf/loss_by_frequency.yaml); a bad one is refused in one line
naming it (`error: steps=0: must be a positive integer`) before any run trains. Hydra's log and the options used
(.hydra/) go to outputs/loss_by_frequency/DATE/TIME, or hydra.run.dir=...
"""

import hydra
from omegaconf import DictConfig

from mugpt.config import register_configs
from mugpt.studies.loss_by_frequency import loss_by_frequency


@hydra.main(version_base="1.3", config_path="../conf", config_name="loss_by_frequency")
def main(cfg: DictConfig) -> None:
    loss_by_frequency(cfg)


if __name__ == "__main__":
    register_configs()  # the optimizer and data schemas that the composed training configs start from
    main()
