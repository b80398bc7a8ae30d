"""A misspelt key, group option or group name on the command line is refused in one line that offers the nearest
existing names (mugpt.config.check_overrides, as src/train.py calls it before Hydra runs)."""

import pytest

from conftest import CONF_DIR, run_train_cli
from mugpt.config import check_overrides
from mugpt.errors import ConfigError

HINT = "; did you mean "


def refusal(*overrides: str) -> str:
    with pytest.raises(ConfigError) as exc:
        check_overrides(list(overrides))
    return str(exc.value)


def hint(*overrides: str) -> str | None:
    """What the one-line refusal suggests (`model.width`), or None when it suggests nothing."""
    message = refusal(*overrides)
    assert "\n" not in message
    if HINT not in message:
        return None
    assert message.endswith("?")
    return message.split(HINT, 1)[1][:-1]


def test_a_misspelt_key_gets_the_nearest_key_with_its_full_path():
    assert refusal("model.widht=128") == ("Could not override 'model.widht' (Key 'widht' is not in struct); "
                                          "did you mean model.width?")
    assert hint("trainer.max_step=3") == "trainer.max_steps"
    assert hint("seedd=1") == "seed"


def test_a_key_two_levels_deep_and_in_a_structured_schema():
    assert hint("optim.weight_decy=0.1") == "optim.weight_decay"  # not weight_decay_timescale as well
    assert hint("hydra.run.dirr=x") == "hydra.run.dir"
    assert hint("checkpoint.every_n_step=5") == "checkpoint.every_n_steps"


def test_the_keys_offered_are_those_of_the_groups_the_run_chose():
    assert hint("optim=muon", "optim.adamw_lrr=1e-3") == "optim.adamw_lr"  # a key adamw's schema lacks
    assert hint("data=shards", "data.tokenizr=gpt2") == "data.tokenizer"


def test_delete_form_gets_the_hint_too():
    assert refusal("~model.widht") == ("Could not delete from config. 'model.widht' does not exist; "
                                       "did you mean model.width?")
    assert hint("~optim.weight_decy") == "optim.weight_decay"


def test_an_unknown_group_option_gets_the_nearest_option():
    message = refusal("optim=adamww")
    assert message == ("In 'config': Could not find 'optim/adamww' (choose one of adafactor, adagrad, adam, adam8bit, "
                       "adam_atan2, adamw, muon, rmsprop, sgd); did you mean adamw?")
    assert hint("+optim=adamww") == "adamw"
    assert hint("precision=bf16-mixd") == "bf16-mixed"
    assert hint("model=tinyy") == "tiny"


def test_a_misspelt_group_name():
    assert hint("optm=adamw") == "optim"
    assert hint("optm.lrr=1") == "optim.lr"  # each misspelt level corrected
    assert hint("hydra/launchr=basic") == "hydra/launcher"


def test_nothing_close_means_no_suggestion():
    assert refusal("model.zzzzzz=1") == "Could not override 'model.zzzzzz' (Key 'zzzzzz' is not in struct)"
    assert hint("optim=zzzzzz") is None
    assert hint("model.width.x=1") is None  # below a value: there are no keys to offer
    assert hint("optim.lr=abc") is None  # a type error, not a misspelling


@pytest.mark.slow  # a train.py process; the same refusal in-process: the tests above, test_sweep.py
def test_train_cli_refuses_a_misspelt_key_in_one_line(tmp_path, cache_dir):
    proc = run_train_cli(["model.widht=128", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path,
                         cache_dir, timeout=300)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == ("error: Could not override 'model.widht' (Key 'widht' is not in struct); "
                           "did you mean model.width?\n")
    assert not (tmp_path / "run").exists()


def test_the_groups_offer_the_options_not_the_typed_schemas():
    """What --help lists under each group, read from Hydra's config loader in this process: the optimizers' and
    parametrizations' typed schemas compose (as top-level configs) but are no option of their groups."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from mugpt.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        optims, params = loader.get_group_options("optim"), loader.get_group_options("parametrization")
        data = loader.get_group_options("data")
        assert {"adamw", "muon", "sgd"} <= set(optims) and {"abc", "mup", "sp", "umup"} <= set(params)
        assert set(data) == {"hf", "shakespeare", "shards", "text"}
        assert not [name for name in optims + params + data if "schema" in name]
        assert {"schema_optim_muon", "schema_parametrization_mup"} <= set(loader.get_group_options(""))
    with pytest.raises(ConfigError, match="optim.lr"):  # the schemas still type what composes
        check_overrides(["optim=muon", "optim.lr=abc"])


@pytest.mark.slow  # a train.py process; the groups it lists are read in-process above
def test_help_lists_the_options_not_the_typed_schemas(tmp_path, cache_dir):
    """`--help` lists what a user can choose: the optimizers' and parametrizations' typed schemas compose (as
    top-level configs) but are no option of their groups."""
    proc = run_train_cli(["--help"], tmp_path, cache_dir, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split(":")[0]: line for line in proc.stdout.splitlines() if ": " in line}
    assert lines["optim"] == ("optim: adafactor, adagrad, adam, adam8bit, adam_atan2, adamw, muon, rmsprop, sgd")
    assert lines["parametrization"] == "parametrization: abc, mup, sp, umup"
    assert lines["data"] == "data: hf, shakespeare, shards, text"
    assert "schema" not in proc.stdout
    with pytest.raises(ConfigError, match="optim.lr"):  # the schemas still type what composes
        check_overrides(["optim=muon", "optim.lr=abc"])
