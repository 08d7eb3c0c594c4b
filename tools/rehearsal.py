"""Shrink train.py to the CPU rehearsal's size: the whole protocol on a laptop, about a minute a run.

    python tools/rehearsal.py                                # DIM 128, DEPTH 2, HEADS 2, BATCH_SIZE 8, TRAIN_SEQ_LEN 256
    python tools/rehearsal.py --dim 64 --train-seq-len 128   # any of them smaller still

Rewrites the constants of ./train.py (the checkout you run it in), then prints what to run next:
commit the size, and set the step budget that replaces the clock (docs/rehearsal.md).
"""

import argparse
import re
import sys
from pathlib import Path

SIZES = dict(DIM=128, DEPTH=2, HEADS=2, BATCH_SIZE=8, TRAIN_SEQ_LEN=256)  # ~0.5M parameters: a step in ~0.1 s
STEPS = 50  # AR_STEPS: enough steps for the loss to fall, so ideas differ


def resized(text, sizes):
    """train.py's text with each `NAME = ...` line set to the rehearsal's value."""
    for name, value in sizes.items():
        text, n = re.subn(rf"^{name} = .*$", f"{name} = {value}  # CPU rehearsal", text, count=1, flags=re.M)
        if n != 1:
            raise SystemExit(f"error: train.py has no top-level `{name} = ...` line to resize")
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(prog="tools/rehearsal.py", description=__doc__.split("\n\n")[0])
    for name, value in SIZES.items():
        parser.add_argument(f"--{name.lower().replace('_', '-')}", type=int, default=value, help=f"default {value}")
    args = parser.parse_args(argv)
    train = Path("train.py")
    if not train.is_file():
        print("error: no train.py here: run this from the top of the checkout", file=sys.stderr)
        return 2
    sizes = {name: getattr(args, name.lower()) for name in SIZES}
    train.write_text(resized(train.read_text(), sizes))
    print("train.py resized for the CPU rehearsal: " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    print(f'next: git commit -am "CPU rehearsal size" && export AR_STEPS={STEPS}')
    return 0


if __name__ == "__main__":
    sys.exit(main())
