"""Small pieces of two study commands, in this process: the µTransfer command's checks of a run before anything
trains (mugpt.studies.transfer_command) and the data benchmark's corpus (mugpt.studies.data_benchmark); their
whole runs are in the slow tier."""

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import CONF_DIR
from mugpt.studies.data_benchmark import generate
from mugpt.studies.transfer_command import _search_keys, check_one, compose_one


def test_a_transfer_run_that_cannot_start_is_refused_naming_it():
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            assert compose_one(["model=tiny", "model.width=64"]).model.width == 64
            check_one(["model=tiny", "model.width=64", "logger=none"])
            with pytest.raises(ValueError, match=r"^run `model=tiny model.width=65 logger=none` cannot start: "
                                                 r"model.width=65 is not divisible by model.n_head=2"):
                check_one(["model=tiny", "model.width=65", "logger=none"])
            with pytest.raises(ValueError, match=r"^`model.widht=64` cannot be composed"):
                compose_one(["model.widht=64"])
    finally:
        GlobalHydra.instance().clear()


def test_a_search_space_names_each_searched_key_and_its_number_of_values():
    space = {"parametrization": {"output_alpha": [64, 128], "hidden_init_scale": 0.5}, "optim": {"lr": [1, 2, 3]}}
    assert _search_keys(space) == {"parametrization.output_alpha": 2, "parametrization.hidden_init_scale": 1,
                                   "optim.lr": 3}
    assert _search_keys(None) == {}


def test_the_benchmark_corpus_is_the_size_asked_and_the_same_each_time(tmp_path):
    first = generate(tmp_path / "a", 1)
    again = generate(tmp_path / "b", 1)
    sizes = [p.stat().st_size for p in sorted(first.glob("part*.txt"))]
    assert sum(sizes) >= 10**6 and sum(sizes) < 10**6 + 8 * 10**6
    assert [p.read_bytes() for p in sorted(first.iterdir())] == [p.read_bytes() for p in sorted(again.iterdir())]
