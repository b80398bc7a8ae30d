"""µTransfer in one command: `python scripts/mutransfer.py [overrides]` (config: conf/mutransfer.yaml).

Sweeps the donor over `search` under each parametrization, trains the target (wider, deeper, longer or with
another batch: target_width, target_depth, target_steps, target_batch_size) with the donor's best
hyperparameters, optionally tunes the target itself over `target_search` for the regret, prints the comparison
and writes transfer.json plus the µTransfer report (mutransfer.csv, mutransfer.png, mutransfer_transfer.png) of
all runs into the output directory. When the runs log to W&B (the default logger), they share one group per launch
(mutransfer_DATE_TIME), are named and typed by role (donor-..., target-...; job_type donor or target), and the
report joins them as a run of job_type report with the loss-vs-lr curves as a table and a chart per series.
With launcher=ray each stage's runs train side by side as Ray tasks (conf/hydra/launcher/ray.yaml's shares).
Examples: python scripts/mutransfer.py donor_width=64 target_width=256 "search.lr_log2=[-10,-8,-6]"
          python scripts/mutransfer.py target_width=null target_depth=8 "seeds=[0,1,2]" \
              "overrides=['++parametrization.depth_alpha=1']" "+target_search.lr_log2=[-9,-8,-7,-6,-5]"
(overrides: each one quoted, since `=` cannot stand bare in a Hydra list; `++` as SP's config has no depth_alpha)
"""

import sys

from mugpt.runtime import reexec_with_heap_reuse

if __name__ == "__main__":
    reexec_with_heap_reuse()

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from mugpt.config import register_configs  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="mutransfer")
def main(cfg: DictConfig) -> None:
    from mugpt.studies.transfer_command import mutransfer

    mutransfer(cfg)


if __name__ == "__main__":
    register_configs()  # the typed schemas conf/optim/ and conf/data/ start from
    sys.exit(main())
