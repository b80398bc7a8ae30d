"""A W&B workspace for one sweep: the µTransfer figure (final validation loss against the learning rate, one colour
per width), the training curves grouped by width, and the runs' deciding fields, filtered to the sweep's group.

Built with W&B's `wandb-workspaces` library (`pip install -e '.[wandb]'`); saving it needs an account and the
network (`WANDB_API_KEY`): offline the workspace is only built, never saved.
"""

from __future__ import annotations

from typing import Any


def build_workspace(entity: str, project: str, group: str, name: str | None = None) -> Any:
    """The workspace of the sweep logged as W&B group `group` (mugpt.training.loggers names a launch's group
    DATE_TIME, or the pipeline's mutransfer_DATE_TIME)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    transfer = [
        # Tensor Programs V's Figure 1: under SP the optimum drifts with width, under µP it stays
        wr.ScatterPlot(title="µTransfer: final val loss against lr, by width", x=wr.Config("optim.lr"),
                       y=wr.SummaryMetric("val/loss"), z=wr.Config("model.width"), log_x=True),
        wr.ScatterPlot(title="best val loss against lr", x=wr.Config("optim.lr"), y=wr.SummaryMetric("val_loss"),
                       log_x=True),
        wr.LinePlot(title="train loss by width", x="trainer/global_step", y=["train/loss"],
                    groupby=wr.Config("model.width"), groupby_aggfunc="mean", groupby_rangefunc="minmax"),
        wr.LinePlot(title="val loss by width", x="trainer/global_step", y=["val/loss"],
                    groupby=wr.Config("model.width"), groupby_aggfunc="mean", groupby_rangefunc="minmax"),
    ]
    efficiency = [
        wr.ScatterPlot(title="tokens/s against width", x=wr.Config("model.width"),
                       y=wr.SummaryMetric("tokens_per_sec"), log_x=True),
        wr.ScatterPlot(title="divergence step against lr", x=wr.Config("optim.lr"),
                       y=wr.SummaryMetric("diverged_step"), log_x=True),
    ]
    return ws.Workspace(
        entity=entity, project=project, name=name or f"sweep {group}",
        sections=[ws.Section(name="µTransfer", panels=transfer, is_open=True),
                  ws.Section(name="runs", panels=efficiency, is_open=False)],
        runset_settings=ws.RunsetSettings(filters=[ws.Metric("Group") == group],
                                          groupby=[ws.Config("parametrization.name")],
                                          pinned_columns=["summary:status", "summary:val_loss", "config:model.width",
                                                          "config:optim.lr"]),
    )


def save_workspace(workspace: Any) -> str:
    """Save it to W&B (online only) and return its address."""
    workspace.save()
    return str(workspace.url)
