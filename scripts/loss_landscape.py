r"""Loss landscape of one or two trained runs: `python scripts/loss_landscape.py ckpt=PATH [overrides]`
(config: conf/loss_landscape.yaml).

    python scripts/loss_landscape.py ckpt=/tmp/ls_sp ckpt2=/tmp/ls_mup resolution=21 span=1.0 batches=4 \
        seed=0 out=results/landscape

The loss along one random direction (1-D) and on the plane of two (2-D) around the trained weights, with
filter-normalised directions (Li et al. 2018), on `batches` fixed validation batches of each run's own data
(batches = the run's data.val_batches reproduces its logged validation loss at the centre).
ckpt, ckpt2: run directories or .ckpt files; with ckpt2 the runs are drawn side by side.
resolution: odd, points per axis (the 2-D grid has resolution^2); span: the axes run over [-span, span].
out: where landscape_1d.csv, landscape_2d.csv, landscape_1d.png and landscape_2d.png go
(default: a landscape/ folder in the first run's directory). device: cpu, cuda or auto.
threads: torch CPU threads (default: torch's choice); threads=1 is often fastest for tiny models on a busy CPU.
Options are Hydra overrides: a path with a comma or '=' is quoted for Hydra, 'ckpt="runs/a,b"'. Hydra's log
and the options used (.hydra/) go to outputs/loss_landscape/DATE/TIME, or hydra.run.dir=...
"""

import hydra
from omegaconf import DictConfig

from mugpt.studies.inspection import landscape_command


@hydra.main(version_base="1.3", config_path="../conf", config_name="loss_landscape")
def main(cfg: DictConfig) -> None:
    landscape_command(cfg)


if __name__ == "__main__":
    main()
