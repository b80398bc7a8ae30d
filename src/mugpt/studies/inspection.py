"""A trained run, back as a plain GPT: load its checkpoint, encode and decode text, sample, and evaluate it.

`load_run(ckpt)` accepts a run directory (it reads checkpoints/last.ckpt and config.yaml there) or a .ckpt file
(config.yaml is looked for in its run directory). The model is rebuilt exactly as training built it, through
`get_parametrization(...).build_model(GPTConfig(...))` — µP's base shapes and multipliers included — and the
Lightning module's `model.`-prefixed weights are loaded into it. No Lightning module, optimizer or trainer.

The scripts built on this (scripts/sample.py, scripts/loss_landscape.py) are Hydra apps like src/train.py
(conf/sample.yaml, conf/loss_landscape.yaml): a prompt with a comma or '=' reaches the model verbatim when it is
quoted as a Hydra value, 'prompt="To be, or not"'. They read their options, check them with `check_device`,
`check_sampling` and `landscape.check_options`, and only then load a checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from mugpt.config import script_option
from mugpt.core.model import GPT, GPTConfig
from mugpt.core.parametrization import get_parametrization
from mugpt.data.text import Tokenizer, get_tokenizer
from mugpt.rundir import CHECKPOINT_DIR, CONFIG_FILE, last_checkpoint, read_summary
from mugpt.rundir import LAST_CHECKPOINT as LAST

STATE_PREFIX = "model."  # GPTLightningModule keeps the GPT as `self.model`


@dataclass
class LoadedRun:
    """A run's trained GPT (in eval mode, on `device`) and what is needed to feed it text."""

    model: GPT
    tokenizer: Tokenizer
    ckpt: Path
    run_dir: Path
    hparams: dict  # the checkpoint's hyperparameters: model, parametrization, optim, compile_mode
    config: DictConfig | None  # the run's resolved config.yaml (data settings included); None when absent
    step: int  # optimizer steps the weights were trained for

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def data_config(self) -> DictConfig:
        if self.config is None:
            raise ValueError(f"ckpt={self.ckpt}: no {CONFIG_FILE} in {self.run_dir}, so the run's data settings "
                             f"(needed for validation batches) are unknown")
        return self.config.data

    @property
    def label(self) -> str:
        """A short name for tables and plots: the run directory's name."""
        return self.run_dir.name

    @property
    def description(self) -> str:
        p, m = self.hparams["parametrization"], self.hparams["model"]
        base = f", base {p['base_width']}" if p.get("base_width") else ""
        return f"{p['name']}{base}, width {m['width']}, step {self.step}"

    def _summary(self) -> dict:
        return read_summary(self.run_dir, missing={})

    def logged_val_loss(self) -> float | None:
        """The run's final validation loss from summary.json, when the run wrote one."""
        value = self._summary().get("val_loss")
        return float(value) if value is not None and math.isfinite(float(value)) else None

    @property
    def processes(self) -> int:
        """How many processes trained the run (DDP/FSDP); each validated its share of every global batch."""
        return int(self._summary().get("processes") or 1)


# ----------------------------------------------------------------------------------------- loading
def resolve_checkpoint(ckpt: str | Path) -> tuple[Path, Path]:
    """(checkpoint file, run directory) for `ckpt=` given as a run directory or a .ckpt file."""
    path = Path(ckpt).expanduser()
    if not path.exists():
        raise ValueError(f"ckpt={ckpt}: no such file or directory")
    file = last_checkpoint(path) if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"ckpt={ckpt}: a run directory without a checkpoint (no {CHECKPOINT_DIR}/{LAST} inside)")
    # training writes OUTPUT/checkpoints/last.ckpt beside OUTPUT/config.yaml
    run_dir = file.parent.parent if file.parent.name == CHECKPOINT_DIR else file.parent
    return file, run_dir


def read_checkpoint(file: Path) -> dict:
    """The checkpoint's dict; weights_only: a checkpoint holds tensors and plain values, never code to run."""
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated file, or not a torch file at all
        raise ValueError(f"ckpt={file}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not hparams or "model" not in hparams or "parametrization" not in hparams or "state_dict" not in checkpoint:
        raise ValueError(f"ckpt={file}: not a mugpt training checkpoint (no model/parametrization hyperparameters)")
    return checkpoint


def build_model(hparams: Mapping[str, Any]) -> GPT:
    """The GPT exactly as training built it: the parametrization sets µP's base shapes and multipliers."""
    return get_parametrization(hparams["parametrization"]).build_model(GPTConfig(**hparams["model"]))


def model_state(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The GPT's own weights out of a Lightning state dict (`model.<name>` keys)."""
    return {k.removeprefix(STATE_PREFIX): v for k, v in checkpoint["state_dict"].items() if k.startswith(STATE_PREFIX)}


def check_device(device: str) -> torch.device:
    """device=cpu|cuda[:N]|auto (auto: the GPU when there is one)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device={device}: not a device (use cpu, cuda or auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device}: no CUDA GPU on this machine (use device=cpu)")
    return dev


def load_run(ckpt: str | Path, device: str = "auto") -> LoadedRun:
    """Load a run's checkpoint into a plain GPT on `device`, in eval mode, with its tokenizer and config."""
    dev = check_device(device)
    file, run_dir = resolve_checkpoint(ckpt)
    checkpoint = read_checkpoint(file)
    hparams = checkpoint["hyper_parameters"]
    config = OmegaConf.load(run_dir / CONFIG_FILE) if (run_dir / CONFIG_FILE).is_file() else None
    model = build_model(hparams)
    model.load_state_dict(model_state(checkpoint))
    model.to(dev).eval()
    # data=shards leaves data.tokenizer null (the manifest's): then the vocabulary tells it apart
    tokenizer = get_tokenizer((config.data.get("tokenizer") if config is not None else None)
                              or tokenizer_for(hparams["model"]))
    if tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(f"ckpt={ckpt}: data.tokenizer={tokenizer.name} has {tokenizer.vocab_size} tokens, the model "
                         f"was trained on model.vocab_size={model.config.vocab_size}")
    return LoadedRun(model=model, tokenizer=tokenizer, ckpt=file, run_dir=run_dir, hparams=hparams, config=config,
                     step=int(checkpoint.get("global_step", 0)))


def tokenizer_for(model_hparams: Mapping[str, Any]) -> str:
    """Without config.yaml the tokenizer is told apart by the vocabulary it produced: 256 bytes or GPT-2's BPE."""
    return "byte" if model_hparams["vocab_size"] == 256 else "gpt2"


# -------------------------------------------------------------------------------------- validation
def validation_batches(run: LoadedRun, batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`batches` global validation batches built as training builds them (evenly spaced windows of the val
    split), on the model's device, as data.batch_size-sized pieces: a run of P processes validated on P of them
    per global batch. With batches = the run's data.val_batches they are exactly the windows its logged
    validation loss was measured on."""
    from mugpt.training.train import build_datamodule  # Lightning and Hydra: only when data is wanted

    if not isinstance(batches, int) or batches <= 0:
        raise ValueError(f"batches={batches}: must be a positive integer")
    data = {**OmegaConf.to_container(run.data_config, resolve=True), "val_batches": batches * run.processes}
    cfg = OmegaConf.create({"model": {"block_size": run.model.config.block_size}, "data": data})
    datamodule = build_datamodule(cfg)
    datamodule.setup("validate")
    return [(x.to(run.device), y.to(run.device)) for x, y in datamodule.val_dataloader()]


@torch.no_grad()
def evaluate_loss(model: GPT, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Mean cross-entropy per target token over the batches, as the validation step averages it."""
    total, count = 0.0, 0
    for x, y in batches:
        _, loss = model(x, y)
        total += float(loss) * y.numel()
        count += y.numel()
    return total / count


# ---------------------------------------------------------------------------------------- sampling
def encode_prompt(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The prompt's token ids; an empty prompt starts from <|endoftext|> (GPT-2) or a newline (bytes)."""
    ids = tokenizer.encode(prompt)
    if ids:
        return ids
    return [tokenizer.eot_token] if tokenizer.eot_token is not None else tokenizer.encode("\n")


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, num_samples: int) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens}: must be a non-negative integer")
    if not temperature >= 0:
        raise ValueError(f"temperature={temperature}: must be >= 0 (0 is greedy decoding)")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k={top_k}: must be a positive integer or null")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples={num_samples}: must be a positive integer")


def sample_ids(model: GPT, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 1.0,
               top_k: int | None = None, seed: int = 0, num_samples: int = 1) -> torch.Tensor:
    """(num_samples, len(prompt) + max_new_tokens) token ids: prompt then continuation.

    Goes through GPT.generate, i.e. the model's own forward, so µP's readout multiplier (output_mult / width
    multiplier, inside the readout) shapes the sampled distribution as it shaped the training loss."""
    check_sampling(max_new_tokens, temperature, top_k, num_samples)
    device = next(model.parameters()).device
    torch.manual_seed(seed)  # generate() draws with torch.multinomial from the global generator (CUDA's too)
    idx = torch.tensor([list(prompt_ids)] * num_samples, dtype=torch.long, device=device)
    model.eval()
    return model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k)


def sample_text(run: LoadedRun, prompt: str, max_new_tokens: int, temperature: float = 1.0,
                top_k: int | None = None, seed: int = 0, num_samples: int = 1) -> list[str]:
    """num_samples texts, each the prompt followed by its sampled continuation."""
    prompt_ids = encode_prompt(run.tokenizer, prompt)
    out = sample_ids(run.model, prompt_ids, max_new_tokens, temperature, top_k, seed, num_samples)
    start = 0 if prompt else len(prompt_ids)  # the start token of an empty prompt is not part of the text
    return [run.tokenizer.decode(row[start:].tolist()) for row in out]


# ------------------------------------------------------------------------------------ the two commands
CKPT_REQUIRED = "{0}=RUN_DIR (a training run's output directory) or {0}=FILE.ckpt"


def option(cfg: DictConfig, name: str, kind: type, nullable: bool = False, positive: bool = False) -> Any:
    """A script option read by mugpt.config.script_option; a missing checkpoint option says what to give."""
    return script_option(cfg, name, kind, nullable=nullable, positive=positive, required=CKPT_REQUIRED.format(name))


def read_sample_options(cfg: DictConfig) -> dict[str, Any]:
    """conf/sample.yaml's options, typed and checked: every refusal here comes before a checkpoint is read."""
    opts = {"ckpt": option(cfg, "ckpt", str), "prompt": option(cfg, "prompt", str),
            "max_new_tokens": option(cfg, "max_new_tokens", int), "temperature": option(cfg, "temperature", float),
            "top_k": option(cfg, "top_k", int, nullable=True), "seed": option(cfg, "seed", int),
            "num_samples": option(cfg, "num_samples", int), "device": option(cfg, "device", str)}
    check_sampling(opts["max_new_tokens"], opts["temperature"], opts["top_k"], opts["num_samples"])
    check_device(opts["device"])
    resolve_checkpoint(opts["ckpt"])  # the path exists and holds a checkpoint; reading it is load_run's
    return opts


def sample_command(cfg: DictConfig) -> list[str]:
    """scripts/sample.py without Hydra's entry point (tests call it with a composed config): the samples printed
    and kept in OUTPUT_DIR/samples.txt; a bad option exits with one line naming it, before a model is loaded."""
    import sys

    try:
        opts = read_sample_options(cfg)
        run = load_run(opts["ckpt"], opts["device"])
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    print(f"loaded {run.ckpt} ({run.description}, {run.tokenizer.name} tokens) on {run.device}", file=sys.stderr)
    texts = sample_text(run, opts["prompt"], opts["max_new_tokens"], opts["temperature"], opts["top_k"],
                        opts["seed"], opts["num_samples"])
    printed = []
    for i, text in enumerate(texts):
        printed.append(f"---------- sample {i + 1}/{len(texts)}\n{text}" if len(texts) > 1 else text)
    print("\n".join(printed))
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "samples.txt").write_text("\n".join(printed) + "\n", encoding="utf-8")
    return texts


def read_landscape_options(cfg: DictConfig) -> dict[str, Any]:
    """conf/loss_landscape.yaml's options, typed and checked: every refusal here comes before a checkpoint is
    read."""
    from mugpt.studies.landscape import check_options

    opts = {"ckpt": option(cfg, "ckpt", str), "ckpt2": option(cfg, "ckpt2", str, nullable=True),
            "resolution": option(cfg, "resolution", int), "span": option(cfg, "span", float),
            "batches": option(cfg, "batches", int), "seed": option(cfg, "seed", int),
            "out": option(cfg, "out", str, nullable=True), "device": option(cfg, "device", str),
            "threads": option(cfg, "threads", int, nullable=True, positive=True)}
    check_options(opts["resolution"], opts["span"], opts["batches"])
    check_device(opts["device"])
    for name in ("ckpt", "ckpt2"):  # both paths exist and hold a checkpoint before the first is read
        try:
            if opts[name]:
                resolve_checkpoint(opts[name])
        except ValueError as exc:  # its message names ckpt=; say which of the two
            raise ValueError(f"{name}={str(exc).removeprefix('ckpt=')}") from None
    return opts


def landscape_command(cfg: DictConfig) -> dict[str, Path]:
    """scripts/loss_landscape.py without Hydra's entry point (tests call it with a composed config): the 1-D and
    2-D landscapes of one or two runs, written and summarised; a bad option exits with one line naming it, before
    the first evaluation."""
    import sys

    from mugpt.studies.landscape import compute_landscape, format_summary, write_landscape

    try:
        opts = read_landscape_options(cfg)
        runs = [load_run(c, opts["device"]) for c in (opts["ckpt"], opts["ckpt2"]) if c]
        for run in runs:
            _ = run.data_config  # the validation data comes from config.yaml beside the checkpoint: raises if absent
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    out = Path(opts["out"]) if opts["out"] else runs[0].run_dir / "landscape"
    results = []
    for run in runs:
        print(f"{run.label} ({run.description}) on {run.device}: {opts['resolution']} + {opts['resolution']}^2 "
              f"points x {opts['batches']} batches ...", flush=True)
        results.append(compute_landscape(run, opts["resolution"], opts["span"], opts["batches"], opts["seed"]))
    paths = write_landscape(results, out)
    print(format_summary(results))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return paths
