"""Several processes: DDP and FSDP keep µP (names, per-group learning rates, forward multipliers) and the data
stream of one process; sweeps of multi-process jobs run each job once; bad combinations are refused early."""

import json
import math
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from conftest import run_if, run_train_cli
from mugpt.core.model import Block
from mugpt.data.text import FixedWindows, RandomWindows
from mugpt.studies.inspection import evaluate_loss, load_run, validation_batches
from mugpt.training.callbacks import DivergenceGuard
from mugpt.training.distributed import block_classes, build_strategy, check_strategy, world_size
from mugpt.training.train import accumulation_steps, train
from test_parametrization import BASE, config, mup


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(1))
    return x, torch.roll(x, -1, dims=1)


def _spawn(worker, out_dir: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(2, port, str(out_dir)), nprocs=2, join=True)


def _one_process_step() -> tuple[torch.nn.Module, list[dict], list[float]]:
    """The reference: one process, the full batch, one AdamW step with µP's groups; losses per half batch."""
    torch.manual_seed(0)
    p = mup()
    model = p.build_model(config(4 * BASE))
    groups = p.param_groups(model, lr=1e-2, weight_decay=0.1)
    x, y = _batch()
    with torch.no_grad():
        halves = [float(model(x[s], y[s])[1]) for s in (slice(0, 2), slice(2, 4))]
    opt = torch.optim.AdamW(groups, eps=1e-3)
    model(x, y)[1].backward()
    opt.step()
    return model, groups, halves


def _lrs_by_name(groups: list[dict]) -> dict[str, tuple[float, float]]:
    return {name: (g["lr"], g["weight_decay"]) for g in groups for name in g["param_names"]}


def _assert_same_step(saved: dict, model: torch.nn.Module) -> None:
    for name, value in model.state_dict().items():
        # Adam's first step is ~lr·sign(g), which turns float noise in near-zero gradients into lr-sized
        # differences; eps=1e-3 keeps the step proportional to g there. A wrong per-group lr would move
        # whole groups by ~lr/m = 2.5e-3.
        torch.testing.assert_close(saved[name], value, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------ DDP (torch)
def _ddp_worker(rank: int, processes: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=processes)
    try:
        torch.manual_seed(0)
        p = mup()
        ddp = DistributedDataParallel(p.build_model(config(4 * BASE)))
        opt = torch.optim.AdamW(p.param_groups(ddp.module, lr=1e-2, weight_decay=0.1), eps=1e-3)
        x, y = _batch()
        shard = slice(2 * rank, 2 * rank + 2)  # each rank sees half the batch; DDP averages the gradients
        ddp(x[shard], y[shard])[1].backward()
        opt.step()
        assert all(hasattr(q, "infshape") for q in ddp.module.parameters())
        torch.save(ddp.module.state_dict(), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
def test_mup_under_ddp_matches_one_process_on_the_full_batch(tmp_path):
    """Two gloo ranks, half a batch each, one AdamW step with µP's per-group lrs = one process, full batch."""
    _spawn(_ddp_worker, tmp_path)
    model, _, _ = _one_process_step()
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for name in rank0:
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0)
    _assert_same_step(rank0, model)


# ----------------------------------------------------------------------------------- FSDP (torch)
def _fsdp_worker(rank: int, processes: int, port: int, out_dir: str) -> None:
    """The sharding Lightning's trainer=fsdp sets up (blocks as units, original parameters kept), on gloo."""
    import torch.distributed as dist
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=processes)
    try:
        torch.manual_seed(0)
        p = mup()
        fsdp = FSDP(p.build_model(config(4 * BASE)), use_orig_params=True, auto_wrap_policy=ModuleWrapPolicy({Block}),
                    device_id=torch.device("cpu"))
        shapes = {n: tuple(q.shape) for n, q in fsdp.named_parameters()}
        groups = p.param_groups(fsdp, lr=1e-2, weight_decay=0.1)
        opt = torch.optim.AdamW(groups, eps=1e-3)
        x, y = _batch()
        shard = slice(2 * rank, 2 * rank + 2)
        loss = fsdp(x[shard], y[shard])[1]
        loss.backward()
        opt.step()
        with FSDP.state_dict_type(fsdp, StateDictType.FULL_STATE_DICT, FullStateDictConfig(rank0_only=False)):
            state = fsdp.state_dict()
        torch.save({"state": state, "lrs": _lrs_by_name(groups), "loss": float(loss), "shapes": shapes},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
def test_mup_under_fsdp_keeps_group_lrs_multipliers_and_the_step(tmp_path):
    """FSDP hands the optimizer flat 1-D shards with wrapper-prefixed names (mup's infshape is gone): every
    parameter still gets the single-device µP learning rate and decay, the forward multipliers still apply
    (same loss on the same half batch), and one sharded step equals one full-batch step on one process."""
    _spawn(_fsdp_worker, tmp_path)
    model, groups, halves = _one_process_step()
    expected = _lrs_by_name(groups)
    assert {lr for lr, _ in expected.values()} == {1e-2, 1e-2 / 4}  # hidden matrices at width 4·base get lr/4
    for rank in (0, 1):
        saved = torch.load(tmp_path / f"rank{rank}.pt")
        assert any(len(shape) == 1 and "_fsdp_wrapped_module" in name for name, shape in saved["shapes"].items()
                   if name.endswith("attn.qkv.weight") or name.endswith("mlp.fc.weight")), "FSDP did not flatten"
        assert saved["lrs"] == expected
        assert saved["loss"] == pytest.approx(halves[rank], rel=1e-5)
        _assert_same_step(saved["state"], model)


# -------------------------------------------------------------------------------- data sharding
def test_data_shards_of_two_processes_are_one_process_batches():
    """Process r of P reads stream positions r, r+P, ...: a global batch is one process's batch, whatever P."""
    tokens = np.arange(5000, dtype=np.uint16)
    one = RandomWindows(tokens, 16, 64, seed=3, start=10)
    two = [RandomWindows(tokens, 16, 64, seed=3, start=10, rank=r, processes=2) for r in (0, 1)]
    assert len(two[0]) == len(two[1]) == 32
    for j in range(32):
        for r in (0, 1):
            torch.testing.assert_close(two[r][j][0], one[2 * j + r][0], rtol=0, atol=0)
    val_one = FixedWindows(tokens, 16, 8)
    val_two = [FixedWindows(tokens, 16, 8, rank=r, processes=2) for r in (0, 1)]
    assert sorted([*val_two[0].starts, *val_two[1].starts]) == sorted(val_one.starts)


# ------------------------------------------------------------------------- Lightning, end to end
DDP_RUN = ["+experiment=smoke", "parametrization=mup", "parametrization.base_width=32", "data.tokenizer=byte",
           "trainer.max_steps=8", "eval_every=8", "logger=csv", "trainer.enable_progress_bar=false",
           "trainer.enable_model_summary=false", "checkpoint.every_n_steps=0"]
# the same run on two CPU processes (gloo), 4 sequences each: the global batch of 8 of the one-process run
TWO_CPU_PROCESSES = ["data.batch_size=4", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]


@pytest.mark.slow
@pytest.mark.distributed
def test_lightning_ddp_two_cpu_processes_match_one_process(tmp_path, cache_dir):
    """`trainer=ddp trainer.accelerator=cpu trainer.devices=2` with 4 sequences per process trains exactly the
    run of one process with 8: same data, same µP steps, same validation loss (float tolerance)."""
    one, two = tmp_path / "one", tmp_path / "two"
    proc = run_train_cli([*DDP_RUN, "data.batch_size=8", f"hydra.run.dir={one}"], tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_train_cli([*DDP_RUN, *TWO_CPU_PROCESSES, f"hydra.run.dir={two}"], tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single, ddp = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert single["status"] == ddp["status"] == "completed"
    assert (single["processes"], ddp["processes"]) == (1, 2)
    assert single["tokens"] == ddp["tokens"] == 8 * 8 * 32
    assert ddp["val_loss"] == pytest.approx(single["val_loss"], abs=1e-5)
    assert single["val_loss"] < 5.2  # it learned: uniform guessing over bytes costs ln 256 = 5.55


@pytest.mark.slow
@pytest.mark.distributed
def test_multirun_of_ddp_jobs_runs_each_job_once(tmp_path, cache_dir):
    """Lightning relaunches DDP ranks from sys.argv; in a multirun that is the whole sweep (Lightning #11300).
    Each job's second rank must run that job only, in that job's directory, and the next job must start
    its own processes."""
    sweep = tmp_path / "sweep"
    proc = run_train_cli(["-m", *DDP_RUN, *TWO_CPU_PROCESSES, "trainer.max_steps=4", "eval_every=4",
                          "optim.lr=0.01,0.02", f"hydra.sweep.dir={sweep}"], tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    summaries = [json.loads((sweep / j / "summary.json").read_text()) for j in jobs]
    assert [(s["status"], s["lr"], s["processes"]) for s in summaries] == [
        ("completed", 0.01, 2), ("completed", 0.02, 2)]
    assert summaries[0]["val_loss"] != summaries[1]["val_loss"]
    for job in jobs:  # the second rank ran inside its job's directory
        assert (sweep / job / "train_ddp_process_1.log").is_file()
    assert proc.stderr.count("Launching") + proc.stdout.count("Launching") == 1


class _TwoProcesses:
    """A trainer of rank 0 of 2 whose other process reports (step, loss) as its first bad loss, or none."""

    def __init__(self, other: tuple[float, float]) -> None:
        self.world_size, self.should_stop = 2, False
        self.strategy = SimpleNamespace(root_device=torch.device("cpu"),
                                        all_gather=lambda t: torch.stack([t, torch.tensor(other, dtype=t.dtype)]))


def test_divergence_guard_stops_every_process_at_the_first_bad_step_any_saw():
    """Lightning does not reduce `should_stop`; a loss past the bound on one process must stop all of them,
    and all must report the same, earliest, step."""
    none = (math.inf, math.nan)
    for local, other, expected in [([2.0, 2.0, 2.0], (2.0, 50.0), (2, "50")),   # only the other process
                                   ([2.0, 2.0, 99.0], (2.0, 50.0), (2, "50")),  # both: the earlier step
                                   ([99.0, 2.0, 2.0], (2.0, 50.0), (1, "99")),  # both: this one is earlier
                                   ([2.0, 2.0, 2.0], none, None)]:               # neither: train on
        guard, trainer = DivergenceGuard(max_loss=10.0, every=3), _TwoProcesses(other)
        guard._pending = [(step, torch.tensor(loss)) for step, loss in zip((1, 2, 3), local)]
        guard.check(trainer)
        if expected is None:
            assert guard.diverged_at is None and not trainer.should_stop
        else:
            assert (guard.diverged_at, trainer.should_stop) == (expected[0], True)
            assert f"train loss {expected[1]} at step {expected[0]} " in guard.reason


@pytest.mark.slow
@pytest.mark.distributed
def test_lightning_ddp_run_that_diverges_stops_both_processes(tmp_path, cache_dir):
    run = tmp_path / "run"
    proc = run_train_cli([*DDP_RUN, *TWO_CPU_PROCESSES, "max_loss=1.0", "trainer.log_every_n_steps=2",
                          f"hydra.run.dir={run}"], tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["status"], summary["processes"]) == ("diverged", 2)
    # both processes left the loop at the first 2-step window (a process left behind would hang the other)
    assert "at step 1 " in summary["diverged_reason"] and summary["steps"] == 2


# ---------------------------------------------------------------------------- configs and checks
def test_trainer_configs_compose_to_strategies(make_cfg):
    from lightning.pytorch.strategies import FSDPStrategy

    ddp = make_cfg("trainer=ddp")
    assert ddp.trainer.strategy == "ddp" and ddp.trainer.devices == "auto"
    assert ddp.trainer.use_distributed_sampler is False and ddp.trainer.max_steps == 20
    fsdp = make_cfg("trainer=fsdp", "trainer.strategy.sharding_strategy=SHARD_GRAD_OP")
    strategy = build_strategy(fsdp.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.kwargs["use_orig_params"] is True
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == block_classes()  # u-µP's block too, if installed
    assert Block in block_classes()
    assert strategy.sharding_strategy.name == "SHARD_GRAD_OP"
    assert build_strategy("ddp") == "ddp"


def test_fsdp_refuses_what_it_cannot_run(make_cfg):
    with pytest.raises(ValueError, match="optim=muon orthogonalises whole weight matrices.*trainer=ddp"):
        check_strategy(make_cfg("trainer=fsdp", "optim=muon"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="trainer.strategy=fsdp needs CUDA GPUs"):
            check_strategy(make_cfg("trainer=fsdp"))
        with pytest.raises(ValueError, match="trainer.strategy=fsdp needs CUDA GPUs"):
            train(make_cfg("trainer=fsdp"))


def test_world_size_and_global_batch_accumulation(make_cfg):
    assert world_size({"devices": 2, "num_nodes": 3}) == 6
    assert world_size({"devices": [0, 1, 2]}) == 3
    assert world_size({"devices": "0,1"}) == 2
    assert world_size({"devices": "auto", "accelerator": "cpu"}) == 1
    with pytest.raises(ValueError, match="trainer.devices=0"):
        world_size({"devices": 0})
    # 8 sequences × 32 tokens per process: a global batch of 2048 tokens is 8 micro-batches on one process,
    # 4 on two, and 2 on four
    cfg = make_cfg("grad_accum=tokens", "grad_accum.batch_tokens=2048")
    assert [accumulation_steps(cfg, n) for n in (1, 2, 4)] == [8, 4, 2]
    with pytest.raises(ValueError, match="grad_accum.batch_tokens=2048 .* 8\\*32\\*16 = 4096"):
        accumulation_steps(cfg, 16)


@run_if(cuda=True, reason="Lightning's FSDP runs on CUDA GPUs only")
def test_lightning_fsdp_on_one_gpu_trains_like_single_device(make_cfg):
    """trainer=fsdp on one GPU: the µP groups Lightning's optimizer gets are the single-device ones, and the
    run's losses match a run without FSDP (float tolerance: FSDP reduces in another order)."""
    common = ["parametrization=mup", "parametrization.base_width=32", "trainer.max_steps=10", "eval_every=10",
              "trainer.accelerator=gpu", "trainer.devices=1", "checkpoint.every_n_steps=0"]
    single = train(make_cfg(*common))
    sharded = train(make_cfg(*common, "trainer=fsdp"))
    assert single["status"] == sharded["status"] == "completed"
    assert sharded["val_loss"] == pytest.approx(single["val_loss"], abs=2e-3)


@pytest.mark.slow
@pytest.mark.distributed
def test_a_ddp_runs_logged_validation_loss_is_reproduced_from_its_checkpoint(tmp_path, cache_dir):
    """Two processes each validated half of every global batch; re-evaluating the checkpoint in one process
    must read the same windows (data.val_batches global batches) and give the logged loss."""
    run = tmp_path / "run"
    proc = run_train_cli([*DDP_RUN, *TWO_CPU_PROCESSES, "checkpoint.every_n_steps=8", f"hydra.run.dir={run}"],
                         tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    loaded = load_run(run, "cpu")
    assert loaded.processes == 2 and loaded.step == 8
    val_batches = loaded.config.data.val_batches
    batches = validation_batches(loaded, val_batches)
    assert len(batches) == 2 * val_batches and all(x.shape == (4, 32) for x, _ in batches)
    assert evaluate_loss(loaded.model, batches) == pytest.approx(summary["val_loss"], rel=1e-5)
