r"""Sample text from a trained run: `python scripts/sample.py ckpt=PATH [overrides]` (config: conf/sample.yaml).

    python scripts/sample.py ckpt=outputs/2026-01-01/12-00-00 prompt=ROMEO: max_new_tokens=200 \
        temperature=0.8 top_k=200 seed=1337 device=cpu num_samples=1
    python scripts/sample.py ckpt=outputs/2026-01-01/12-00-00 'prompt="To be, or not"' top_k=null

Options are Hydra overrides. The prompt reaches the model verbatim once Hydra has read it, so unless it is
plain words, quote it for Hydra inside the shell's quotes. Unquoted, Hydra takes a comma for a list or a sweep,
refuses '=', '!', quotes, '#', ';', '&' and brackets, trims spaces at the ends, and reads 1603 or null as a
number or None. Inside the quotes, escape the quote character and write a literal '${' as '\${':
    'prompt="To be, or not"'   "prompt='He said \"no\", sir'"   'prompt="  x = 1"'   'prompt="1603"'
    'prompt="\${HOME}"'        prompt=ROMEO:   "prompt=What light"   (the last two need no Hydra quotes)
ckpt: a run directory (its checkpoints/last.ckpt and config.yaml are read) or a .ckpt file.
temperature=0 decodes greedily; top_k=null samples from the whole vocabulary; device=auto picks the GPU if any.
Prints each sample (prompt + continuation) on stdout, and keeps them in samples.txt in Hydra's run dir
(outputs/sample/DATE/TIME, or hydra.run.dir=...); what was loaded goes to stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from mugpt.studies.inspection import check_device, check_sampling, load_run, resolve_checkpoint, sample_text
from mugpt.studies.inspection import typed_option as option


def read_options(cfg: DictConfig) -> dict[str, Any]:
    """The typed, checked options: every refusal here comes before a checkpoint is read."""
    opts = {"ckpt": option(cfg, "ckpt", str), "prompt": option(cfg, "prompt", str),
            "max_new_tokens": option(cfg, "max_new_tokens", int), "temperature": option(cfg, "temperature", float),
            "top_k": option(cfg, "top_k", int, nullable=True), "seed": option(cfg, "seed", int),
            "num_samples": option(cfg, "num_samples", int), "device": option(cfg, "device", str)}
    check_sampling(opts["max_new_tokens"], opts["temperature"], opts["top_k"], opts["num_samples"])
    check_device(opts["device"])
    resolve_checkpoint(opts["ckpt"])  # the path exists and holds a checkpoint; reading it is load_run's
    return opts


def sample(cfg: DictConfig) -> list[str]:
    """The script without Hydra's entry point (tests call it with a composed config)."""
    try:  # a bad option is one line naming it, not a traceback, and no model is loaded for it
        opts = read_options(cfg)
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


@hydra.main(version_base="1.3", config_path="../conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    sample(cfg)


if __name__ == "__main__":
    main()
