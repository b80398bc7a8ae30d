"""Sample text from a trained run: `python scripts/sample.py ckpt=PATH [key=value ...]`.

    python scripts/sample.py ckpt=outputs/2026-01-01/12-00-00 prompt="ROMEO:" max_new_tokens=200 \
        temperature=0.8 top_k=200 seed=1337 device=cpu num_samples=1

ckpt: a run directory (its checkpoints/last.ckpt and config.yaml are read) or a .ckpt file.
prompt: taken verbatim (commas, quotes and '=' included); empty starts from <|endoftext|> or a newline.
temperature=0 decodes greedily; top_k=none samples from the whole vocabulary; device=auto picks the GPU if any.
Prints each sample (prompt + continuation); what was loaded goes to stderr.
"""

from __future__ import annotations

import sys

from mugpt.inspection import check_sampling, load_run, optional, parse_key_values, sample_text

OPTIONS = {
    "ckpt": (str, None),
    "prompt": (str, ""),
    "max_new_tokens": (int, 200),
    "temperature": (float, 0.8),
    "top_k": (optional(int), 200),
    "seed": (int, 1337),
    "device": (str, "auto"),
    "num_samples": (int, 1),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__)
        return 0
    try:  # every check before the model is sampled: a bad option is one line, not a traceback
        args = parse_key_values(argv, OPTIONS, required=["ckpt"])
        check_sampling(args["max_new_tokens"], args["temperature"], args["top_k"], args["num_samples"])
        run = load_run(args["ckpt"], args["device"])
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"loaded {run.ckpt} ({run.description}, {run.tokenizer.name} tokens) on {run.device}", file=sys.stderr)
    texts = sample_text(run, args["prompt"], args["max_new_tokens"], args["temperature"], args["top_k"],
                        args["seed"], args["num_samples"])
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"---------- sample {i + 1}/{len(texts)}")
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
