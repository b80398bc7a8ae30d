"""Tokenize a corpus once into token shards: `python scripts/prepare_data.py input=... output=...`.

Config: conf/prepare_data.yaml.

    python scripts/prepare_data.py input=corpus/ output=shards/corpus workers=4
    python scripts/prepare_data.py input='books/**/*.txt' output=shards/books tokenizer=gpt2 workers=2
    python scripts/prepare_data.py input=hf:HuggingFaceFW/fineweb-edu hf_config=sample-10BT max_tokens=1000000000 \\
        output=shards/fineweb workers=8
    python src/train.py data=shards data.path=shards/corpus

Killed part-way, the same command continues: finished groups are kept. See mugpt.data.prepare_shards.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from mugpt.data.prepare_shards import PrepareOptions, prepare


@hydra.main(version_base="1.3", config_path="../conf", config_name="prepare_data")
def main(cfg: DictConfig) -> None:
    try:
        opts = PrepareOptions(**OmegaConf.to_container(cfg, resolve=True))
        manifest = prepare(opts)
    except (ValueError, FileNotFoundError, RuntimeError, KeyError, ImportError) as exc:
        sys.exit(f"error: {str(exc).strip(chr(39)) if isinstance(exc, KeyError) else exc}")
    split = manifest["splits"]
    print(f"{opts.output}: {manifest['tokens']:,} tokens ({manifest['tokenizer']}), train {split['train']['tokens']:,} "
          f"in {len(split['train']['chunks'])} chunk(s), val {split['val']['tokens']:,}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
