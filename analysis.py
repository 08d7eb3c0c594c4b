# %% [markdown]
# # Autoresearch: what happened overnight
#
# `results.tsv` holds one row per experiment: the commit, its `val_bpc`, peak memory, whether the
# agent kept it, and what it tried. This notebook reads the `results.tsv` in its working
# directory and shows the report the command line prints: totals, the kept changes and their
# gains (the keep rule's: tip, sigma, improvements, simplifications), near-misses, crashes, the
# integrity audit, and the progress and memory plots.

# %%
"""Record experiments in results.tsv and report on them: the night's memory and the morning's view.

Usage:
  python analysis.py decide           # the keep rule's verdict on ./run.log and what to run next
  python analysis.py record --description "SwiGLU feed-forward"   # the rule decides; reads ./run.log
  python analysis.py record --status crash --description "depth 16" path/to/run.log
  python analysis.py                  # report: totals, tip, best, sigma, kept changes, audit; writes
                                      # progress.png and memory.png next to results.tsv (or --out DIR)
  python analysis.py --json           # the agent's bounded view (never evaluates the test split)
  python analysis.py --full           # everything as JSON
  python analysis.py audit [--json]   # rows not comparable with the baseline; exit 1 if any
  python analysis.py curves metrics.jsonl checkpoints/abc1234.metrics.jsonl --out curves.png
  python analysis.py evaluate checkpoints/abc1234.pt --split test   # for the person, in the morning
  python analysis.py restore          # bring back rows lost from results.tsv, from the backup
  python analysis.py fix-header       # put the header line back on top of a headerless results.tsv
  python analysis.py --tsv other.tsv audit    # --tsv works with every subcommand

The keep rule (labbook/keeprule.py, `python analysis.py decide --explain`): setup runs the
baseline and its replicates with AR_SEED=1, 2, ...; sigma is pooled from runs nobody selected.
Rows the audit flags never count.

results.tsv sits at the top of the main worktree, with a backup in the git directory: see
labbook/ledger.py. The machinery is the labbook package next to this file.

As a notebook: `jupytext --to notebook analysis.py` writes analysis.ipynb, which runs top to
bottom on the results.tsv in its working directory.
"""

import sys
from pathlib import Path

import labbook.cli
from labbook.plots import plot_curves
from labbook.report import build_report, format_report
from labbook.rescore import best_test_bpc

if __name__ == "__main__" and "ipykernel" not in sys.modules:
    sys.exit(labbook.cli.main())

IN_NOTEBOOK = __name__ == "__main__"  # not when tools/machine.py or bench/bench.py load this file

# %% [markdown]
# ## The report for ./results.tsv

# %%
if IN_NOTEBOOK:
    NOTEBOOK_TSV = Path("results.tsv")
    notebook_results, notebook_report = build_report(NOTEBOOK_TSV, Path("."))
    notebook_test, notebook_note = best_test_bpc(notebook_results, notebook_report, compute=True)

# %%
if IN_NOTEBOOK:
    print(format_report(notebook_report, notebook_test, notebook_note))

# %% [markdown]
# Progress (running best, kept, discarded and crashed runs) and peak memory per experiment.

# %%
if IN_NOTEBOOK:
    from IPython.display import Image, display

    for png in notebook_report.get("plots", []):
        display(Image(filename=png))

# %% [markdown]
# Training loss of the last run (`metrics.jsonl`), when there is one.

# %%
if IN_NOTEBOOK and Path("metrics.jsonl").exists():
    display(Image(filename=str(plot_curves([Path("metrics.jsonl")], Path("curves.png")))))
