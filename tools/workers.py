"""Parallel experiments on one machine: one git worktree, one branch and one GPU per worker.

    python tools/workers.py setup --tag mar5 --gpus 0,1,2,3  # worktrees/gpu<i> on branch autoresearch/mar5-gpu<i>
    python tools/workers.py run --gpu 1                      # train in worktrees/gpu1 on GPU 1, record the row
    python tools/workers.py status                           # each worker's branch, HEAD, state and last result
    python tools/workers.py sync                             # every worker back to the research branch's tip
    python tools/workers.py result-line run.log --id exp1    # the RESULT line that sky/experiment.yaml prints

Every worker records into the one results.tsv of the main worktree (analysis.py finds it), so
the keep rule's sigma, tip and near-misses are computed over all workers. A worker's row is a
discard (or a crash): `keep` is reserved for commits on the research branch, where a winner
(marked PROMOTE by `status`: below the rule's rerun bound) is cherry-picked, run, and judged by
`python analysis.py decide`. The protocol is in docs/scale-out.md.
"""

import sys
from pathlib import Path

# this checkout's labbook and prepare.py, even when pip's editable install points at another clone
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labbook.workers import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
