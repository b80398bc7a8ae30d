"""Shared fixtures: configs composed with Hydra's compose API, exactly as `src/train.py` would see them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = str(ROOT / "conf")
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One token cache for the whole session: Shakespeare is tokenized once, not per test."""
    return Path(os.environ.get("MUGPT_TEST_CACHE") or tmp_path_factory.mktemp("token_cache"))


def compose_config(overrides: list[str], output_dir: Path, cache_dir: Path) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(
            config_name="config",
            overrides=[f"output_dir={output_dir}", f"data.cache_dir={cache_dir}", "logger=none",
                       "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", *overrides],
        )


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


def run_train_cli(args: list[str], cwd: Path, cache: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python src/train.py ARGS` as a user runs it (own process, offline W&B, the session's token cache)."""
    env = {**os.environ, "MUGPT_CACHE": str(cache), "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, str(ROOT / "src" / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
