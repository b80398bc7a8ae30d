"""The report command lines (scripts/mutransfer_report.py, scripts/mup_defaults.py) called in this process on
made-up sweep folders, for the fast tier: the options reach the package and the refusals are one line.
tests/test_mutransfer.py runs the same scripts as a user does (own processes, slow)."""

import importlib.util
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mugpt.studies.transfer import defaults_table, report  # noqa: F401 - what the scripts call

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_command", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run(folder: Path, summary: dict, config: dict) -> None:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    OmegaConf.save(OmegaConf.create(config), folder / "config.yaml")


def test_the_transfer_report_takes_an_axis_and_refuses_in_one_line(tmp_path, capsys):
    """Two depths of µP and SP: µP's best lr stays at 2^-7, SP's moves to 2^-8 at depth 8."""
    n = 0
    for depth in (2, 8):
        for param in ("mup", "sp"):
            vertex = -8.0 if param == "sp" and depth == 8 else -7.0
            for e in (-9, -8, -7, -6):
                write_run(tmp_path / f"depth{depth}" / str(n),
                          {"parametrization": param, "width": 64, "lr": 2.0 ** e, "seed": 0, "status": "completed",
                           "val_loss": (e - vertex) ** 2 / 10 + 2.0},
                          {"model": {"n_layer": depth, "width": 64}, "parametrization": {"name": param}})
                n += 1
    main = script("mutransfer_report").main
    out = tmp_path / "report"
    assert main([str(tmp_path / "depth2"), str(tmp_path / "depth8"), "--out", str(out),
                 "--axis", "model.n_layer"]) == 0
    printed = capsys.readouterr().out
    assert f"{n} runs: {n} completed" in printed
    analysis = json.loads((out / "mutransfer.json").read_text())
    assert analysis["mup"]["regret"] == pytest.approx(0.0) and analysis["sp"]["regret"] == pytest.approx(0.1)
    assert main([str(tmp_path / "depth2"), str(tmp_path / "depth8")]) == 2
    assert "2 sweep directories: say where the report goes (--out DIR)" in capsys.readouterr().err
    assert main([str(tmp_path / "depth2"), "--out", str(out), "--axis", "data.batch_size"]) == 2
    assert "axis data.batch_size: the run in" in capsys.readouterr().err


def test_the_defaults_report_finds_the_grids_optimum_and_the_defaults_gap(tmp_path, capsys):
    """One donor grid of two settings at two rates: the optimum is (0.08, 0.5, output_alpha 128) at 2^-6; the
    default (0.02, 1.0, 128) is 0.56 worse at its own best rate."""
    n = 0
    for emb, c in ((0.08, 0.5), (0.02, 1.0)):
        for e in (-7, -6):
            loss = 2.0 + abs(emb - 0.08) + abs(c - 0.5) + 0.1 * (e + 6) ** 2
            write_run(tmp_path / "a" / str(n),
                      {"parametrization": "mup", "width": 64, "lr": 2.0 ** e, "seed": 1, "status": "completed",
                       "val_loss": loss},
                      {"model": {"init_std": 0.02, "width": 64}, "seed": 1,
                       "parametrization": {"name": "mup", "base_width": 64, "embedding_init_std": emb,
                                           "output_alpha": 64.0, "hidden_init_scale": c, "output_mult": 2}})
            n += 1
    main = script("mup_defaults").main
    out = tmp_path / "out"
    out.mkdir()
    assert main([f"a={tmp_path / 'a'}", "--default", "0.02,1.0,128", "--out", str(out)]) == 0
    (a,) = json.loads((out / "defaults.json").read_text())["settings"]
    assert a["best"] == {"embedding_init_std": 0.08, "hidden_init_scale": 0.5, "output_alpha": 128.0}
    assert a["best_log2_lr"] == -6 and a["best_loss"] == pytest.approx(2.0)
    assert a["gap"] == pytest.approx(0.56)
    with pytest.raises(SystemExit):  # argparse's one-line refusal
        main([f"a={tmp_path / 'missing'}", "--default", "0.08,0.5,2"])
    assert "a: no such sweep directory" in capsys.readouterr().err
