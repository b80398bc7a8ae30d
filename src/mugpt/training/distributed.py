"""Training on several devices: Lightning's DDP and FSDP strategies, configured from `conf/trainer/`.

Lightning does the distributed work. This module holds what the project has to add around it:
  - `build_strategy`: the FSDP strategy with the settings µP needs (original parameters kept, so that each
    parameter keeps its name and its µP learning rate; whole transformer blocks as sharding units);
  - `world_size`: the number of processes a trainer config asks for, known before the Trainer exists, so that
    gradient accumulation can be derived from a global batch in tokens;
  - `check_strategy`: options that cannot work under a strategy are refused before any work starts;
  - `single_job_command`: inside a Hydra multirun, Lightning's DDP relaunches the other ranks from `sys.argv`,
    which holds the whole sweep (Lightning #11300, Hydra #2070); the ranks are relaunched on this job alone.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf, read_write

from mugpt.core.optim import OPTIMIZERS


def build_strategy(strategy: Any) -> Any:
    """A Lightning strategy from trainer.strategy: a name ("auto", "ddp", ...) passes through; a mapping with
    `name: fsdp` builds the FSDP strategy with the options that follow it."""
    if not isinstance(strategy, (dict, DictConfig)):
        return strategy
    options = OmegaConf.to_container(strategy, resolve=True) if isinstance(strategy, DictConfig) else dict(strategy)
    name = options.pop("name", None)
    if name != "fsdp":
        raise ValueError(f"trainer.strategy: unknown strategy mapping name '{name}' "
                         f"(use a strategy name, or name: fsdp)")
    return fsdp_strategy(**options)


def fsdp_strategy(sharding_strategy: str = "FULL_SHARD", state_dict_type: str = "full", cpu_offload: bool = False,
                  limit_all_gathers: bool = True) -> Any:
    """Lightning's FSDP with every transformer block as one sharding unit.

    `use_orig_params=True` keeps the model's own parameters (as views into FSDP's flat shards): they keep their
    names, so `mugpt.core.parametrization` can give each its µP learning rate, and torch.compile can trace them.
    mup's own `infshape` attribute does not survive FSDP (mup #59); the project never reads it after build."""
    from lightning.pytorch.strategies import FSDPStrategy

    return FSDPStrategy(auto_wrap_policy=block_classes(), use_orig_params=True, sharding_strategy=sharding_strategy,
                        state_dict_type=state_dict_type, cpu_offload=cpu_offload, limit_all_gathers=limit_all_gathers)


def block_classes() -> set[type]:
    """The transformer block classes FSDP shards as units: GPT's, and u-µP's when unit-scaling is installed (a
    policy naming only GPT's Block would leave a u-µP model as one unit)."""
    from mugpt.core.model import Block

    blocks: set[type] = {Block}
    if importlib.util.find_spec("unit_scaling") is not None:
        from mugpt.core.unit_scaled import UnitScaledBlock

        blocks.add(UnitScaledBlock)
    return blocks


def uses_cuda(trainer_cfg: DictConfig | dict) -> bool:
    """Will the trainer run on CUDA GPUs: its accelerator allows them and this machine has one."""
    return torch.cuda.is_available() and str(trainer_cfg.get("accelerator", "auto")) in ("auto", "gpu", "cuda")


def is_fsdp(strategy: Any) -> bool:
    name = strategy.get("name") if isinstance(strategy, (dict, DictConfig)) else strategy
    return isinstance(name, str) and name.startswith("fsdp")


def check_strategy(cfg: DictConfig) -> None:
    """Refuse, before any work, the options that a distributed strategy cannot run."""
    strategy = cfg.trainer.get("strategy", "auto")
    if is_fsdp(strategy):
        # an optimizer that needs each parameter's full matrix shape says why in its declaration; FSDP hands the
        # optimizer flat 1-D shards
        spec = OPTIMIZERS.get(cfg.optim.name)
        why = spec.needs_whole_matrices if spec else None
        if why:
            raise ValueError(f"optim={cfg.optim.name} {why}, but trainer.strategy=fsdp gives the optimizer flat "
                             "1-D shards; use trainer=ddp or another optimizer")
        if not uses_cuda(cfg.trainer):
            raise ValueError("trainer.strategy=fsdp needs CUDA GPUs (Lightning's FSDP does not run on the CPU); "
                             "use trainer=ddp with trainer.accelerator=cpu")


def world_size(trainer_cfg: DictConfig | dict) -> int:
    """Processes the trainer will run: devices per node × nodes, resolved as Lightning resolves `devices`."""
    devices = trainer_cfg.get("devices", "auto")
    nodes = int(trainer_cfg.get("num_nodes", 1) or 1)
    if isinstance(devices, (list, tuple, ListConfig)):
        per_node = len(devices)
    elif isinstance(devices, str) and "," in devices:
        per_node = len([d for d in devices.split(",") if d.strip()])
    elif str(devices) in ("auto", "-1"):
        per_node = torch.cuda.device_count() if uses_cuda(trainer_cfg) else 1
    else:
        per_node = int(devices)
    if per_node <= 0:
        raise ValueError(f"trainer.devices={devices!r} asks for no device")
    return per_node * nodes


# Set in this process by Lightning's launcher when it starts the other ranks; a later job of the same sweep
# must not inherit them (with LOCAL_RANK set, Lightning assumes someone else started the ranks, and waits).
LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextlib.contextmanager
def single_job_command(trainer: Any, output_dir: Path) -> Iterator[None]:
    """While a multirun job trains with more than one process, make the command Lightning relaunches the
    other ranks with this job's command: its own overrides, in its own output directory (not the sweep).

    Lightning starts ranks 1..N-1 by re-running `sys.argv` with `hydra.run.dir=<HydraConfig run.dir>` added.
    In a multirun, sys.argv is the whole sweep and run.dir is not the job's directory, so every rank would
    run every job of the sweep. Afterwards the job's ranks are waited for and its process group and launcher
    variables are cleared, so that the next job starts its own. Launchers that start the processes
    themselves (SLURM, torchrun) need none of this."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    launcher = getattr(trainer.strategy, "launcher", None)
    relaunches_argv = type(launcher).__name__ == "_SubprocessScriptLauncher"
    if not (relaunches_argv and trainer.world_size > 1 and HydraConfig.initialized()
            and HydraConfig.get().mode == RunMode.MULTIRUN):
        yield
        return
    hydra_cfg = HydraConfig.get()
    saved_argv, saved_dir = sys.argv, hydra_cfg.run.dir
    saved_env = {key: os.environ.get(key) for key in LAUNCHER_ENV}
    sys.argv = [saved_argv[0], *hydra_cfg.overrides.task]
    with read_write(hydra_cfg):
        hydra_cfg.run.dir = str(output_dir)
    try:
        yield
    finally:
        sys.argv = saved_argv
        with read_write(hydra_cfg):
            hydra_cfg.run.dir = saved_dir
        for proc in getattr(launcher, "procs", []):
            proc.wait()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
