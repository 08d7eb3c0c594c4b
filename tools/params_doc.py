"""The sealed path column of docs/adjustable_params.md, from the option sweep (labbook/optionsweep.py).

python tools/params_doc.py           # each documented option's outcome: scores, refused, crashes
python tools/params_doc.py --write   # rewrite the doc's column from the sweep
python tools/params_doc.py --check   # exit 1 when the doc differs from the sweep
"""

import sys
from pathlib import Path

# this checkout's labbook and prepare.py, even when pip's editable install points at another clone
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labbook.optionsweep import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
