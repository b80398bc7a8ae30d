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

import hydra
from omegaconf import DictConfig

from mugpt.studies.inspection import sample_command


@hydra.main(version_base="1.3", config_path="../conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    sample_command(cfg)


if __name__ == "__main__":
    main()
