"""µP coordinate check: `python scripts/coord_check.py [overrides]` (config: conf/coord_check.yaml).

Example: python scripts/coord_check.py widths=[64,128,256] seeds=[0] steps=3 optim.lr=3e-2
Writes coord_check.csv, coord_check_slopes.csv and coord_check.png into Hydra's run dir.

Depth (µP at depth_alpha 0 vs CompleteP, at width model.width):
    python scripts/coord_check.py axis=depth depths=[2,4,8,16,32] seeds=[0,1,2] steps=5
writes coord_check_depth.csv, coord_check_depth_slopes.csv and coord_check_depth.png.
"""

import logging
import sys

import hydra
from omegaconf import DictConfig

from mugpt.config import register_configs
from mugpt.studies.coord_check import check_coord_check, run_coord_check

log = logging.getLogger("mugpt")


@hydra.main(version_base="1.3", config_path="../conf", config_name="coord_check")
def main(cfg: DictConfig) -> None:
    try:
        check_coord_check(cfg)
    except ValueError as exc:  # an axis, width, depth or option that cannot run: one line, before any model trains
        sys.exit(f"error: {exc}")
    result = run_coord_check(cfg)
    if cfg.get("axis", "width") == "depth":
        print(f"\nslope vs log2 depth of log2 mean|x| and of log2 mean|x_t - x_0| (update), mean ± sd over seeds "
              f"(0 = flat in depth; attn/mlp/residual: mean over blocks):\n{result['table']}\n")
    else:
        print(f"\nslope of log2 mean|activation| vs log2 width (0 = flat; hidden = all but the logits):\n"
              f"{result['table']}\n")
    csvs = [f for f in result["files"] if f.suffix == ".csv"]
    pngs = [f for f in result["files"] if f.suffix == ".png"]
    print(f"{len(result['rows'])} rows in {result['seconds']:.0f}s -> {', '.join(map(str, result['files']))}")
    if cfg.get("wandb"):
        from omegaconf import OmegaConf

        from mugpt.training.loggers import launch_name, publish_to_wandb

        # one job_type for both axes; the name keeps the figure's (coord_check_depth-...)
        local = publish_to_wandb("coord_check", result["output_dir"], pngs, csvs,
                                 OmegaConf.to_container(cfg, resolve=False),
                                 name=f"{pngs[0].stem}-{launch_name(result['output_dir'])}")
        print(f"logged to W&B: {local}")


if __name__ == "__main__":
    register_configs()  # conf/coord_check.yaml composes optim/adamw, which starts from its schema
    main()
