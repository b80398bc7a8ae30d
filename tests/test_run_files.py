"""A run folder's files, read and written in this process: summary.json and config.yaml (mugpt.rundir), the
checks and clean-up around a launch (mugpt.training.run), and the coordinate checks' CSV round trip."""

from __future__ import annotations

import json

import pytest

from mugpt.errors import ConfigError
from mugpt.rundir import read_config, read_summary, summaries_under, write_summary
from mugpt.studies.coord_check.shared import read_csv, write_csv
from mugpt.training.run import check_writable_dir, remove_refused_launch


def test_a_summary_is_written_whole_and_read_back(tmp_path):
    run = tmp_path / "sweep" / "0"
    run.mkdir(parents=True)
    assert read_summary(run, missing="none yet") == "none yet"
    (run / "summary.json").write_text('{"status": ')  # a writer killed halfway: unreadable, not an error
    assert read_summary(run) is None
    write_summary(run, {"status": "completed", "val_loss": 2.5})
    assert read_summary(run) == {"status": "completed", "val_loss": 2.5}
    assert [p.name for p in run.iterdir()] == ["summary.json"]  # no temporary file left beside it
    assert list(summaries_under(tmp_path / "sweep")) == [run / "summary.json"]
    assert read_config(run) is None
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("model:\n  width: 64\n")
    assert read_config(run).model.width == 64  # Hydra's copy when training wrote none


def test_a_folder_the_run_cannot_write_is_refused_naming_the_option(tmp_path):
    check_writable_dir(tmp_path / "new" / "run", "output_dir")  # folders still to be made are fine
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"^output_dir=.*: cannot create it, .*file is a file$"):
        check_writable_dir(tmp_path / "file" / "run", "output_dir")


def test_a_refused_launchs_folder_goes_and_an_earlier_runs_stays(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused = tmp_path / "outputs" / "day" / "time"
    (refused / ".hydra").mkdir(parents=True)
    (refused / "summary.json").write_text(json.dumps({"refused": True}))
    earlier = tmp_path / "outputs" / "earlier"
    (earlier / ".hydra").mkdir(parents=True)
    (earlier / "checkpoints").mkdir()
    remove_refused_launch(refused)
    remove_refused_launch(earlier)  # holds more than the launch wrote
    assert not (tmp_path / "outputs" / "day").exists() and (earlier / "checkpoints").is_dir()


def test_the_coordinate_check_csv_reads_back_numbers_as_numbers(tmp_path):
    rows = [{"parametrization": "mup", "width": 64, "step": 1, "seed": 0, "l1": 0.25, "module": "block0.mlp"}]
    write_csv(rows, tmp_path / "out" / "coord_check.csv", list(rows[0]))
    assert read_csv(tmp_path / "out" / "coord_check.csv") == rows
