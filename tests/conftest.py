"""Shared fixtures: configs composed with Hydra's compose API, exactly as `src/train.py` would see them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from mugpt.config import compose_training_config, register_configs

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = str(ROOT / "conf")
os.environ.setdefault("WANDB_MODE", "offline")


def run_if(*, cuda: bool = False, adam8bit: bool = False, reason: str = "") -> pytest.MarkDecorator:
    """One mark for hardware and optional-package needs (`@run_if(cuda=True)`, or `marks=run_if(...)` on a
    parameter): the test is skipped, with what is missing, where they are missing, and a CUDA test is also
    marked `gpu`, so `-m gpu` selects exactly what a GPU session should run."""
    return pytest.mark.run_if(cuda=cuda, adam8bit=adam8bit, reason=reason)


def _missing(cuda: bool = False, adam8bit: bool = False, reason: str = "") -> str | None:
    from mugpt.core.optim import _adam8bit_backend

    missing = []
    if cuda and not torch.cuda.is_available():
        missing.append("a CUDA GPU")
    if adam8bit and _adam8bit_backend(torch.cuda.is_available()) is None:
        missing.append("torchao (pip install torchao) or, on CUDA, bitsandbytes")
    return f"needs {' and '.join(missing)}{': ' + reason if reason else ''}" if missing else None


@pytest.hookimpl(tryfirst=True)  # before -m deselects: a run_if(cuda=True) test must carry `gpu` by then
def pytest_collection_modifyitems(config, items):
    for item in items:
        for mark in item.iter_markers("run_if"):
            if mark.kwargs.get("cuda"):
                item.add_marker(pytest.mark.gpu)
            why = _missing(**mark.kwargs)
            if why:
                item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One token cache for the whole session: Shakespeare is tokenized once, not per test."""
    return Path(os.environ.get("MUGPT_TEST_CACHE") or tmp_path_factory.mktemp("token_cache"))


@pytest.fixture(scope="session", autouse=True)
def resolvers():
    """What every entry point registers (the config schemas, ${pow2:...}), for tests that compose on their own."""
    register_configs()


def compose_config(overrides: list[str], output_dir: Path, cache_dir: Path) -> DictConfig:
    return compose_training_config([f"output_dir={output_dir}", f"data.cache_dir={cache_dir}", "logger=none",
                                    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
                                    *overrides])


TINY = ["model=tiny", "data.tokenizer=byte", "data.batch_size=8", "trainer.max_steps=20", "eval_every=20",
        "optim.warmup_steps=2", "data.val_batches=2"]


@pytest.fixture
def make_cfg(tmp_path, cache_dir):
    """make_cfg(*overrides) -> a composed config writing into this test's tmp dir, with a tiny byte-level model."""

    def make(*overrides: str, tiny: bool = True) -> DictConfig:
        return compose_config([*(TINY if tiny else []), *overrides], tmp_path / "run", cache_dir)

    yield make
    GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Two OpenMP threads on a busy 2-core machine spend most of a tiny model's step waiting for each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_script(name: str, *args: str, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python scripts/NAME.py ARGS` as a user runs it (own process, offline W&B), for tests of a command line
    itself; everything else is tested through the package functions the scripts call."""
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / f"{name}.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def compose_script(name: str, *overrides: str) -> DictConfig:
    """conf/NAME.yaml with command-line overrides, read by Hydra exactly as `python scripts/NAME.py ...` reads them."""
    from hydra import compose, initialize_config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def run_train_cli(args: list[str], cwd: Path, cache: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python src/train.py ARGS` as a user runs it (own process, offline W&B, the session's token cache)."""
    env = {**os.environ, "MUGPT_CACHE": str(cache), "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, str(ROOT / "src" / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
