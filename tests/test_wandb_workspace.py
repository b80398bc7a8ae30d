"""The sweep's W&B workspace: built offline and checked panel by panel; saving it needs an account."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("wandb_workspaces")

from mugpt.studies.wandb_workspace import build_workspace  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_the_workspace_shows_the_transfer_figure_for_the_sweeps_group_only():
    workspace = build_workspace("someone", "mugpt", "2026-12-03_17-44-23")
    assert workspace.name == "sweep 2026-12-03_17-44-23"
    assert [s.name for s in workspace.sections] == ["µTransfer", "runs"]
    figure = workspace.sections[0].panels[0]
    assert (figure.x.name, figure.y.name, figure.z.name, figure.log_x) == ("optim.lr", "val/loss", "model.width", True)
    curves = workspace.sections[0].panels[2]
    assert curves.y == ["train/loss"] and curves.groupby.name == "model.width"
    assert workspace.runset_settings.filters == "Metric(\"Group\") == '2026-12-03_17-44-23'"  # W&B's filter text
    assert [g.name for g in workspace.runset_settings.groupby] == ["parametrization.name"]


def test_the_command_refuses_offline_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "wandb_workspace.py"), "2026-12-03_17-44-23"],
                          cwd=tmp_path, env={**env, "WANDB_MODE": "offline"}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: a workspace is saved to W&B's servers: set WANDB_API_KEY (in .env) and "
                                   "WANDB_MODE=online")
