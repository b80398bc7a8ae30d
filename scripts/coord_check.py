"""µP coordinate check: `python scripts/coord_check.py [overrides]` (config: conf/coord_check.yaml).

Example: python scripts/coord_check.py widths=[64,128,256] seeds=[0] steps=3 optim.lr=3e-2
Writes coord_check.csv, coord_check_slopes.csv and coord_check.png into Hydra's run dir.
"""

import logging
import sys

import hydra
from omegaconf import DictConfig

from mugpt.config import register_configs
from mugpt.coord_check import check_coord_check, run_coord_check

log = logging.getLogger("mugpt")


@hydra.main(version_base="1.3", config_path="../conf", config_name="coord_check")
def main(cfg: DictConfig) -> None:
    try:
        check_coord_check(cfg)
    except ValueError as exc:  # a width or option that cannot run: one line, before any model trains
        sys.exit(f"error: {exc}")
    result = run_coord_check(cfg)
    out = result["output_dir"]
    print(f"\nslope of log2 mean|activation| vs log2 width (0 = flat; hidden = all but the logits):\n"
          f"{result['table']}\n")
    print(f"{len(result['rows'])} rows in {result['seconds']:.0f}s -> {out / 'coord_check.csv'}, "
          f"{out / 'coord_check_slopes.csv'}, {out / 'coord_check.png'}")
    if cfg.get("wandb"):
        from omegaconf import OmegaConf

        from mugpt.run import publish_to_wandb

        local = publish_to_wandb("coord_check", out, [out / "coord_check.png"],
                                 [out / "coord_check.csv", out / "coord_check_slopes.csv"],
                                 OmegaConf.to_container(cfg, resolve=False))
        print(f"logged to W&B: {local}")


if __name__ == "__main__":
    register_configs()  # conf/coord_check.yaml composes optim/adamw, which starts from its schema
    main()
