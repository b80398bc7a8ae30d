"""The checked options of one `scripts/benchmark.py` run (conf/benchmark.yaml): every refusal, one line naming
the key, comes before anything is measured."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from mugpt.config import script_option
from mugpt.studies.benchmark.config import PRESETS, BenchConfig, build_rows
from mugpt.studies.benchmark.hardware import check_device


@dataclass
class BenchOptions:
    """What one `scripts/benchmark.py` run measures, checked (see conf/benchmark.yaml for each key)."""

    bench: BenchConfig
    tricks: list[str]
    rounds: int
    block_seconds: float
    warmup: int
    overhead_blocks: int
    overhead_block_steps: int
    isolate: bool = True
    strict_cumulative: bool = False
    skip_table: bool = False
    skip_overheads: bool = False
    machine: str | None = None
    out_dir: Path = Path(".")

    def settings(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("bench", "out_dir")}


def _tricks(value: Any) -> list[str]:
    if isinstance(value, str):  # rows='tf32,compile' as one string
        return [t.strip() for t in value.split(",") if t.strip()]
    if isinstance(value, (list, ListConfig)):
        return [str(t) for t in value]
    raise ValueError(f"rows={value}: expected a list of tricks, e.g. rows=[tf32,bf16]")


def read_options(cfg: DictConfig) -> BenchOptions:
    """The checked options of a run: every refusal (one line naming the key) comes before anything is measured."""
    device = check_device(script_option(cfg, "device", str))
    preset = script_option(cfg, "preset", str)
    if preset not in PRESETS:
        raise ValueError(f"preset={preset}: unknown preset (choose one of {', '.join(PRESETS)})")
    shape = {k: script_option(cfg, k, int, nullable=True, minimum=1)
             for k in ("width", "n_layer", "n_head", "block_size", "batch_size")}
    optim = OmegaConf.to_container(cfg.optim, resolve=True)
    if optim.get("name") != "adamw":
        raise ValueError(f"optim.name={optim.get('name')}: the table compares AdamW implementations; use optim=adamw")
    compile_mode = script_option(cfg, "compile_mode", str)
    modes = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
    if compile_mode not in modes:
        raise ValueError(f"compile_mode={compile_mode}: choose one of {', '.join(modes)}")
    bench = BenchConfig.from_preset(preset, device=str(device), seed=script_option(cfg, "seed", int),
                                    threads=script_option(cfg, "threads", int, nullable=True, minimum=1),
                                    compile_mode=None if compile_mode == "default" else compile_mode,
                                    optim=optim, loss_chunk=script_option(cfg, "loss_chunk", int, minimum=1), **shape)
    if bench.width % bench.n_head:
        raise ValueError(f"width={bench.width} is not divisible by n_head={bench.n_head}")
    tricks = _tricks(cfg.get("rows"))
    build_rows(tricks)  # an unknown trick is refused here
    skip_table, skip_overheads = script_option(cfg, "skip_table", bool), script_option(cfg, "skip_overheads", bool)
    if not skip_table and "accumulation" in tricks and bench.batch_size % 2:
        raise ValueError(f"batch_size={bench.batch_size}: the accumulation row splits the batch in two, so it must "
                         f"be even (or leave accumulation out of rows)")
    if not skip_overheads and (bench.width // 2) % bench.n_head:
        raise ValueError(f"width={bench.width}: µP vs SP uses base_width={bench.width // 2}, which n_head="
                         f"{bench.n_head} must divide (or skip_overheads=true)")
    cuda = device.type == "cuda"

    def timing(key: str, kind: type, on_cuda: Any, on_cpu: Any, minimum: float) -> Any:
        value = script_option(cfg, key, kind, nullable=True, minimum=minimum)
        return value if value is not None else (on_cuda if cuda else on_cpu)

    return BenchOptions(
        bench=bench, tricks=tricks, rounds=timing("rounds", int, 3, 2, 1),
        block_seconds=timing("block_seconds", float, 3.0, 6.0, 0), warmup=timing("warmup", int, 3, 2, 1),
        overhead_blocks=timing("overhead_blocks", int, 10, 6, 1),
        overhead_block_steps=timing("overhead_block_steps", int, 10, 4, 1),
        isolate=script_option(cfg, "isolate", bool), strict_cumulative=script_option(cfg, "strict_cumulative", bool),
        skip_table=skip_table, skip_overheads=skip_overheads, machine=script_option(cfg, "machine", str, nullable=True),
        out_dir=Path(script_option(cfg, "out_dir", str)))
