"""Shrink train.py to the CPU rehearsal's size: the whole protocol on a laptop, about a minute a run.

    python tools/rehearsal.py                                # DIM 128, DEPTH 2, HEADS 2, BATCH_SIZE 8, TRAIN_SEQ_LEN 256
    python tools/rehearsal.py --dim 64 --train-seq-len 128   # any of them smaller still

Rewrites the constants of ./train.py (the checkout you run it in), then prints what to run next:
commit the size, then the step budget that replaces the clock (and the data, without the
submodule's enwik8) in front of the commands, since a fresh shell forgets exports (docs/rehearsal.md).
"""

import argparse
import re
import sys
from pathlib import Path

SIZES = dict(DIM=128, DEPTH=2, HEADS=2, BATCH_SIZE=8, TRAIN_SEQ_LEN=256)  # ~0.5M parameters: a step in ~0.1 s
STEPS = 50  # AR_STEPS: enough steps for the loss to fall, so ideas differ
SUBMODULE_DATA = Path("x-transformers/data/enwik8.gz")  # the data when AR_DATA names none


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
    print('next: git commit -am "CPU rehearsal size"')
    print("\n".join(settings_lines(data_found=SUBMODULE_DATA.is_file())))
    return 0


def settings_lines(data_found):
    """How the rehearsal's settings reach every run: in front of each command, since a shell tool
    that starts a fresh shell per command forgets an `export`."""
    data = "" if data_found else "AR_DATA=<a text file of a few MB> "
    lines = [
        f"then, in front of each command (a fresh shell forgets exports): {data}python prepare.py",
        f"setup step 6 (AR_STEPS is not needed there: it times a short run itself): {data}python tools/machine.py",
        f"and the baseline: AR_STEPS={STEPS} {data}timeout -k 30 600 python train.py > run.log 2>&1",
        "after it, every run command decide prints (and `run` in python analysis.py --json) carries them",
    ]
    if not data_found:
        lines.insert(0, f"no {SUBMODULE_DATA} here: the data is a text file of your own (AR_DATA)")
    return lines


if __name__ == "__main__":
    sys.exit(main())
