"""Does µP beat the best SP? `python scripts/fair_rivals.py [RIVAL,...]`: width 64 → 256 lr transfer, AdamW, 3 seeds,
one multirun at a time, report in results/fair_rivals. SP's and µP's runs are optimizer_transfer.py's (its csv);
sp_width's donor is SP's (at the base width the rule is the identity); *_tuned: two constants over {1/4, 1, 4} × default
at the donor's best lr, the donor's lr re-swept over 5 octaves with them, the target over 5 around the new best."""

import sys

from mugpt.studies.fair_rivals import RIVALS, fair_rivals


def main(argv: list[str]) -> None:
    names = argv[0].split(",") if argv else list(RIVALS)
    fair_rivals(names)


if __name__ == "__main__":
    main(sys.argv[1:])
