"""The µP doctor: `python scripts/mup_doctor.py [overrides]` (config: conf/mup_doctor.yaml).

Holds the training config's model, parametrization and optimizer to the parametrization's promises, measured at
several widths (and depths, when claimed) over a few optimizer steps. Examples:
    python scripts/mup_doctor.py parametrization=mup optim=adamw parametrization.depth_alpha=1 out=DIR
    python scripts/mup_doctor.py parametrization=umup model.tie_embeddings=false optim.lr=0.25
    python scripts/mup_doctor.py parametrization=sp expect=mup            # fails: SP keeps none of µP's promises
Prints the table of checks and writes report.json into `out`. Exit status: 0 every promise kept, 1 a promise
broken, 2 an option refused.
"""

import sys

import hydra
from omegaconf import DictConfig

from mugpt.config import register_configs


@hydra.main(version_base="1.3", config_path="../conf", config_name="mup_doctor")
def main(cfg: DictConfig) -> None:
    from mugpt.studies.doctor import run_doctor

    try:
        report, path = run_doctor(cfg)
    except (ValueError, ImportError) as exc:  # an option that cannot run: one line, before any model is built
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(report.table())
    print(f"wrote {path}")
    sys.exit(report.exit_code)


if __name__ == "__main__":
    register_configs()  # conf/mup_doctor.yaml composes optim/adamw, which starts from its schema
    from mugpt.studies.doctor.project import refused_overrides

    refusal = refused_overrides(sys.argv[1:])
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        sys.exit(2)
    main()
