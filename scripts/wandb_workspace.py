"""Make the W&B workspace of one sweep (online only):

    python scripts/wandb_workspace.py GROUP [--entity ENTITY] [--project PROJECT]

GROUP is the sweep's W&B group (a multirun's DATE_TIME, the pipeline's mutransfer_DATE_TIME: the runs' group
column in W&B). Needs `pip install -e '.[wandb]'` and WANDB_API_KEY; offline it refuses in one line.
"""

import argparse
import importlib.util
import os
import sys

from mugpt.studies.wandb_workspace import build_workspace, save_workspace
from mugpt.training.loggers import load_env, wandb_offline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("group", help="the sweep's W&B group")
    parser.add_argument("--entity", default=None, help="W&B entity (default: WANDB_ENTITY, or your own)")
    parser.add_argument("--project", default=None, help="W&B project (default: WANDB_PROJECT, or mugpt)")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("wandb_workspaces") is None:
        print("error: needs wandb-workspaces: pip install -e '.[wandb]'", file=sys.stderr)
        return 2
    load_env()
    if wandb_offline() or not os.environ.get("WANDB_API_KEY"):
        print("error: a workspace is saved to W&B's servers: set WANDB_API_KEY (in .env) and WANDB_MODE=online",
              file=sys.stderr)
        return 2
    import wandb

    entity = args.entity or os.environ.get("WANDB_ENTITY") or wandb.Api().default_entity
    project = args.project or os.environ.get("WANDB_PROJECT", "mugpt")
    print(save_workspace(build_workspace(entity, project, args.group)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
