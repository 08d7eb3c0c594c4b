"""Write the facts about this machine into AGENTS.md, so the agent plans with real numbers.

    python tools/machine.py                   # measure and rewrite the machine block of AGENTS.md
    python tools/machine.py --print           # print the block, change nothing
    python tools/machine.py --seconds 60      # a longer throughput measurement (default 30 s)
    python tools/machine.py --no-measure      # facts and model sizes only

The logic is in labbook/machine.py.
"""

import sys
from pathlib import Path

# this checkout's labbook and prepare.py, even when pip's editable install points at another clone
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labbook.machine import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
