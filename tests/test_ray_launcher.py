"""hydra/launcher=ray (conf/hydra/launcher/ray.yaml): a sweep's jobs side by side as Ray tasks, each with its share
of the machine, on a Ray instance started for the sweep or on a running Ray cluster that the sweep joins."""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF_DIR, run_train_cli
from mugpt.runtime import MALLOC_SETTINGS

# conf/hydra/launcher/ray.yaml takes the plugin's config name, which Hydra answers with a deprecation warning
pytestmark = pytest.mark.filterwarnings(r"ignore:\s*'hydra/launcher/ray' is validated against ConfigStore schema")

# A tiny byte-level model for 40 steps: a job of about 2 s on one thread, long enough for two to overlap.
JOB = ["+experiment=smoke", "data.tokenizer=byte", "logger=none", "trainer.max_steps=40", "eval_every=40",
       "data.val_batches=2", "checkpoint.every_n_steps=0", "trainer.enable_progress_bar=false",
       "trainer.enable_model_summary=false"]
LRS = "optim.lr=0.001,0.002,0.004,0.008"
TWO_AT_A_TIME = ["hydra.launcher.ray.init.num_cpus=2", "hydra.launcher.ray.remote.num_cpus=1"]


def needs_ray() -> None:
    for module in ("ray", "hydra_plugins.hydra_ray_launcher"):
        pytest.importorskip(module, reason='hydra/launcher=ray needs the ray extra: pip install -e ".[ray]"')


def summary_of(job_dir: Path) -> dict:
    return json.loads((job_dir / "summary.json").read_text())


def span(job_dir: Path) -> tuple[float, float]:
    """When the job ran: Hydra writes .hydra/config.yaml as the job starts, the run its summary.json as it ends."""
    return (job_dir / ".hydra" / "config.yaml").stat().st_mtime, (job_dir / "summary.json").stat().st_mtime


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of jobs running at the same moment (a job ending as another starts: not overlapping)."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


@pytest.fixture
def launcher_cfg():
    """launcher_cfg(*overrides) -> the `hydra.launcher` node of a `-m hydra/launcher=ray` launch."""

    def make(*overrides: str):
        needs_ray()
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name="config", overrides=["hydra/launcher=ray", *overrides], return_hydra_config=True)
        return cfg.hydra.launcher

    yield make
    GlobalHydra.instance().clear()


# ---- the config

def test_each_job_takes_one_core_of_a_ray_instance_of_the_sweeps_own(launcher_cfg):
    launcher = launcher_cfg()
    assert type(instantiate(launcher)).__name__ == "RayLauncher"
    assert OmegaConf.to_container(launcher.ray.init) == {
        "address": "local", "num_cpus": None, "num_gpus": None, "include_dashboard": False,
        "object_store_memory": None, "runtime_env": {"env_vars": MALLOC_SETTINGS}}
    assert OmegaConf.to_container(launcher.ray.remote) == {"num_cpus": 1, "num_gpus": 0, "max_retries": 0}


def test_joining_a_cluster_gives_ray_init_none_of_the_resources_it_refuses_there(launcher_cfg):
    """ray.init(address=...) refuses num_cpus, num_gpus and object_store_memory; the plugin fills in an object
    store size only where the key is missing, so the config names it, as null."""
    launcher = launcher_cfg("hydra.launcher.ray.init.address=auto", "hydra.launcher.ray.remote.num_gpus=0.25",
                            "hydra.launcher.ray.remote.num_cpus=2")
    init = OmegaConf.to_container(launcher.ray.init)
    assert init["address"] == "auto"
    assert {k: init[k] for k in ("num_cpus", "num_gpus", "object_store_memory")} == dict.fromkeys(
        ("num_cpus", "num_gpus", "object_store_memory"))
    assert OmegaConf.to_container(launcher.ray.remote) == {"num_cpus": 2, "num_gpus": 0.25, "max_retries": 0}


# ---- sweeps run here

@pytest.fixture(scope="module")
def ray_env():
    """A token of these tests' own for the Ray instances they start (none written to ~/.ray), and no address
    inherited from the environment."""
    needs_ray()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "token")
        mp.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        mp.delenv("RAY_ADDRESS", raising=False)
        yield


@pytest.fixture(scope="module")
def side_by_side(tmp_path_factory, cache_dir, ray_env) -> Path:
    """The same 4-job sweep under Ray, two 1-thread jobs at a time, and under the basic launcher, one after
    another with one thread: the folder holding both sweeps (ray/, basic/)."""
    root = tmp_path_factory.mktemp("side_by_side")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("OMP_NUM_THREADS", raising=False)  # Ray sets it for each job from its num_cpus
        ray = run_train_cli(["-m", "hydra/launcher=ray", *TWO_AT_A_TIME, *JOB, LRS, f"hydra.sweep.dir={root / 'ray'}"],
                            root, cache_dir)
        assert ray.returncode == 0, ray.stderr[-3000:]
        mp.setenv("OMP_NUM_THREADS", "1")
        basic = run_train_cli(["-m", *JOB, LRS, f"hydra.sweep.dir={root / 'basic'}"], root, cache_dir)
        assert basic.returncode == 0, basic.stderr[-3000:]
    return root


@pytest.mark.slow
def test_ray_runs_two_jobs_at_a_time(side_by_side):
    ray = [span(side_by_side / "ray" / j) for j in "0123"]
    basic = [span(side_by_side / "basic" / j) for j in "0123"]
    assert most_at_once(ray) == 2  # side by side, and never more than the 2 cores given
    assert most_at_once(basic) == 1


@pytest.mark.slow
def test_each_job_under_ray_trains_as_under_the_basic_launcher(side_by_side):
    ray = [summary_of(side_by_side / "ray" / j) for j in "0123"]
    basic = [summary_of(side_by_side / "basic" / j) for j in "0123"]
    assert [s["status"] for s in ray] == ["completed"] * 4
    assert [s["lr"] for s in ray] == [0.001, 0.002, 0.004, 0.008]
    assert [s["output_dir"] for s in ray] == [str(side_by_side / "ray" / j) for j in "0123"]
    assert [s["val_loss"] for s in ray] == [s["val_loss"] for s in basic]  # to the last digit
    assert [s["train_loss"] for s in ray] == [s["train_loss"] for s in basic]


@pytest.mark.slow
def test_progress_lines_and_the_answer_under_ray(side_by_side):
    """Each job's progress line is written by the job itself (inside its Ray worker, into its own log), counting
    the sweep's jobs from their folders; the sweep's own process writes the answer."""
    lines = [line for j in "0123" for line in (side_by_side / "ray" / j / "train.log").read_text().splitlines()
             if "sweep " in line and "/4" in line]
    assert len(lines) == 4 and all("job " in line and "(optim.lr=" in line for line in lines)
    assert sorted(int(line.split("sweep ", 1)[1].split("/", 1)[0]) for line in lines) == [1, 2, 3, 4]
    answer = json.loads((side_by_side / "ray" / "sweep_result.json").read_text())
    assert answer["jobs"] == 4 and answer["counts"] == {"completed": 4}
    basic = json.loads((side_by_side / "basic" / "sweep_result.json").read_text())
    assert answer["settings"] == basic["settings"]  # the same answer under both launchers


PIPELINE = ["parametrizations=[mup]", "donor_width=32", "target_width=64", "search.lr_log2=[-8,-6]",
            "~search_by_parametrization", "seeds=[0,1]",
            "overrides=['logger=none','trainer.max_steps=20','eval_every=20','optim.warmup_steps=2',"
            "'data.val_batches=2']"]


@pytest.mark.slow
def test_the_pipeline_trains_each_stage_side_by_side_on_ray_to_the_same_result(tmp_path, cache_dir, ray_env):
    """scripts/mutransfer.py launcher=ray: the donor grid × seeds as one batch of Ray tasks (two at a time), the
    same losses, choice and verdict as one run after another."""
    needs_ray()
    env = {**os.environ, "MUGPT_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    outputs = {}
    shares = "launcher_overrides=[" + ",".join(f"'{o}'" for o in TWO_AT_A_TIME) + "]"
    for name, extra in (("each", []), ("ray", ["launcher=ray", shares])):
        out = tmp_path / name
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "scripts" / "mutransfer.py"),
                               *PIPELINE, *extra, f"output_dir={out}", f"hydra.run.dir={out}"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outputs[name] = (json.loads((out / "transfer.json").read_text()), proc.stdout)
    each, ray = (outputs[n][0]["parametrizations"]["mup"] for n in ("each", "ray"))
    assert [t["seed_losses"] for t in ray["donor_trials"]] == [t["seed_losses"] for t in each["donor_trials"]]
    assert ray["target_losses"] == each["target_losses"] and ray["donor_best"] == each["donor_best"]
    verdicts = [next(line for line in outputs[n][1].splitlines() if line.startswith("verdict: ")) for n in outputs]
    assert verdicts[0] == verdicts[1]
    donors = [(tmp_path / "ray" / "mup" / "donor" / f"{i}_seed{s}") for i in (0, 1) for s in (0, 1)]
    assert most_at_once([span_of_run(d) for d in donors]) == 2


def span_of_run(run_dir: Path) -> tuple[float, float]:
    """When a run outside Hydra's job folders ran: its config.yaml at the start, its summary.json at the end."""
    return (run_dir / "config.yaml").stat().st_mtime, (run_dir / "summary.json").stat().st_mtime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory, cache_dir, ray_env):
    """A one-node Ray cluster as `ray start --head` starts one (2 CPUs, no dashboard): its address. Its temp
    folder is its own, so that no other `ray.init()` on this machine finds it."""
    port = free_port()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    log_path = tmp_path_factory.mktemp("ray_head") / "head.log"
    env = {**os.environ, "MUGPT_CACHE": str(cache_dir), "WANDB_MODE": "offline"}  # the jobs' environment
    with open(log_path, "w") as log:
        head = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={port}",
                                 "--num-cpus=2", "--include-dashboard=false", f"--temp-dir={temp}", "--block"],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in log_path.read_text():
            assert head.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(1)
        yield f"127.0.0.1:{port}"
    finally:
        head.terminate()  # --block: the head stops the processes it started
        head.wait(timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_a_sweep_on_a_running_cluster_survives_a_failed_and_a_diverged_job(ray_cluster, side_by_side, tmp_path,
                                                                            cache_dir):
    """Joined with hydra.launcher.ray.init.address: Adam refuses eps=-1 when the job builds its optimizer (after
    every check made before the launch) and lr 8 diverges; the sweep exits 0 and the good job completes, with the
    loss of the same job under the basic launcher (max_loss only decides when a run counts as diverged)."""
    sweep = tmp_path / "sweep"
    proc = run_train_cli(["-m", "hydra/launcher=ray", f"hydra.launcher.ray.init.address={ray_cluster}", *JOB,
                          "max_loss=6.0", "optim.lr=0.004,8.0", "optim.eps=1e-8,-1.0",
                          f"hydra.sweep.dir={sweep}"], tmp_path, cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = {(s["lr"], s["status"]): s for s in (summary_of(sweep / j) for j in "0123")}
    assert sorted(summaries) == [(0.004, "completed"), (0.004, "failed"), (8.0, "diverged"), (8.0, "failed")]
    assert summaries[0.004, "failed"]["error"] == "ValueError: Invalid epsilon value: -1.0"
    basic = summary_of(side_by_side / "basic" / "2")
    assert basic["lr"] == 0.004 and summaries[0.004, "completed"]["val_loss"] == basic["val_loss"]


# ---- scripts/optimizer_transfer.py --launcher

@pytest.fixture
def optimizer_transfer(monkeypatch):
    """The study with its sweeps recorded instead of run: (module, [(command, environment)], [pool sizes])."""
    import mugpt.studies.grid as grid
    import mugpt.studies.optimizer_transfer as script

    commands, pools = [], []

    def record(cmd, **kwargs):
        commands.append((cmd, kwargs["env"]))
        return subprocess.CompletedProcess(cmd, 0)

    class Pool:
        def __init__(self, workers):
            pools.append(workers)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, fn, *args):
            value = fn(*args)
            return type("Done", (), {"result": lambda self: value})()

    monkeypatch.setattr(grid.subprocess, "run", record)
    monkeypatch.setattr(grid, "ThreadPoolExecutor", Pool)
    monkeypatch.setattr(script, "donor_best_log2", lambda folder: -8)
    return script, commands, pools


def test_optimizer_transfer_runs_every_sweep_under_the_launcher_given(optimizer_transfer, tmp_path, monkeypatch):
    script, commands, pools = optimizer_transfer
    monkeypatch.setitem(script.LAUNCHER_PLUGINS, "ray", ("json", "ray"))  # as if the ray extra were installed
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    script.optimizer_transfer(tmp_path, "sweep", "adamw", "sp", "0", launcher="ray",
                              extra=["hydra.launcher.ray.remote.num_gpus=0.25"])
    assert pools == [1]  # one sweep at a time: each one's jobs fill the machine
    assert [c[-4:] for c, _ in commands] == [
        ["logger=none", "hydra.launcher.ray.remote.num_gpus=0.25", "hydra/launcher=ray",
         f"hydra.sweep.dir={tmp_path / width / 'adamw_sp'}"] for width in ("donor", "target")]
    assert [env["OMP_NUM_THREADS"] for _, env in commands] == ["3", "3"]  # the launcher's to set, not forced to 1


def test_optimizer_transfer_without_a_launcher_keeps_one_thread_per_job(optimizer_transfer, tmp_path, monkeypatch):
    script, commands, pools = optimizer_transfer
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    script.optimizer_transfer(tmp_path, "sweep", "adamw", "sp", "0")
    assert pools == [2]
    assert not any(a.startswith("hydra/launcher") for c, _ in commands for a in c)
    assert [env["OMP_NUM_THREADS"] for _, env in commands] == ["1", "1"]


def test_optimizer_transfer_refuses_ray_sweeps_that_would_share_one_machine(optimizer_transfer, tmp_path,
                                                                             monkeypatch):
    script, commands, pools = optimizer_transfer
    args = dict(out=tmp_path, stage="sweep", optimizers="adamw", parametrizations="sp", seeds="0", launcher="ray")
    monkeypatch.setitem(script.LAUNCHER_PLUGINS, "ray", ("hydra_plugins.no_such_launcher", "ray"))
    with pytest.raises(SystemExit, match=r'^error: --launcher=ray needs the ray extra: pip install -e "\.\[ray\]"$'):
        script.optimizer_transfer(**args)
    monkeypatch.setitem(script.LAUNCHER_PLUGINS, "ray", ("json", "ray"))
    with pytest.raises(SystemExit, match="^error: --jobs=2 with --launcher=ray: each sweep would start a Ray of its "
                                         "own on this machine"):
        script.optimizer_transfer(**args, jobs=2)
    assert commands == [] and pools == []  # refused before any sweep
    script.optimizer_transfer(**args, jobs=2, extra=["hydra.launcher.ray.init.address=auto"])  # one cluster: shared
    assert pools == [2] and len(commands) == 2
