# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Autoresearch: what happened overnight
#
# Read top to bottom: what the night was, where it stands, what was kept and why, what broke,
# and the runs' memory, timing and loss curves. Everything comes from `results.tsv` in this
# directory and from git; checkpoints are optional (a missing one is said, not an error).
# The machinery is `labbook/morning.py` and `labbook/plots.py`.

# %%
"""The lab book of a night: the morning notebook (this file, top to bottom) and the command line.

python analysis.py decide --explain           # the keep rule; `decide` judges ./run.log by it
python analysis.py --help                     # every command: record, decide, audit, curves, evaluate, ...
jupytext --to notebook --execute analysis.py  # this notebook on ./results.tsv (AR_TEST=1: test scores too)
jupyter nbconvert --to html analysis.ipynb    # analysis.html, its plots embedded
"""

import sys
from pathlib import Path

import labbook.cli

if __name__ == "__main__" and "ipykernel" not in sys.modules:
    sys.exit(labbook.cli.main())

IN_NOTEBOOK = __name__ == "__main__"  # not when tools/machine.py or bench/bench.py load this file

# %%
if IN_NOTEBOOK:
    import base64
    import html

    from IPython.display import display

    from labbook import morning, plots
    from labbook.ledger import read_results

    night = morning.load(Path("results.tsv"))
    results = read_results(night.tsv)
    OUT = Path(".")

    def show(png):
        """The PNG inline, with the alternative text the plot wrote into it (for the HTML export too)."""
        data = base64.b64encode(Path(png).read_bytes()).decode()
        alt = html.escape(plots.png_alt(png), quote=True)
        display({"image/png": data, "text/html": f'<img src="data:image/png;base64,{data}" alt="{alt}">'}, raw=True)

# %% [markdown]
# ## The night
# Experiments are first runs of new commits; replicates rerun a kept commit with another seed,
# confirmations rerun a provisional one. Flagged rows (the audit's) are shown but never count.

# %%
if IN_NOTEBOOK:
    print(morning.overview_text(night))
    if night.flagged:
        print(morning.flagged_table(night))

# %% [markdown]
# ## Best and tip
# The best is the kept commit with the lowest mean; the tip is what the branch stands on (the
# last keep). They differ when a simplification was kept at a small cost.

# %%
if IN_NOTEBOOK:
    print(morning.standing_text(night))

# %% [markdown]
# ## Progress
# Every run; the step lines are the running best and the reference (the tip's mean). Runs far
# above the range are drawn at the top edge with their value; a thin line joins a commit's runs.

# %%
if IN_NOTEBOOK and night.rows:
    show(plots.plot_progress(results, OUT / "progress.png", night.flagged))

# %% [markdown]
# ## Kept changes
# Each kept experiment: the mean its decision used, its delta against the reference it was
# judged against, and what it changed in train.py (`git diff <reference> <commit> -- train.py`).

# %%
if IN_NOTEBOOK:
    print(morning.kept_table(night, "experiment"))

# %% [markdown]
# ## Simplifications
# Kept because simpler and not worse by more than the bound: never counted as gains.

# %%
if IN_NOTEBOOK:
    print(morning.kept_table(night, "simplification"))

# %% [markdown]
# ## Crashes and refusals
# Crashed runs with their reasons, then the runs `decide` or `record` refused (never recorded).

# %%
if IN_NOTEBOOK:
    print(morning.crashes_table(night))
    print("\nrefused\n" + morning.refusals_table(night))

# %% [markdown]
# ## Near-misses and confirmations
# Near-misses beat their reference, but not by the threshold. Confirmations: commits whose first
# run was provisional, the confirmation run(s), and how the mean came out.

# %%
if IN_NOTEBOOK:
    print("near-misses\n" + morning.near_misses_table(night))
    print("\nconfirmations\n" + morning.confirmations_table(night))

# %% [markdown]
# ## Validation against test
# Test scores are for the person, never for decisions, and are computed only when asked: run
# `AR_TEST=1 jupytext --to notebook --execute analysis.py` (or set `AR_TEST=1` before this cell).
# Each kept checkpoint (`checkpoints/<commit>.pt`) is scored by the baseline's prepare.py with
# the run's own settings and set against the val_bpc of the same run (the table names its line; the
# commit's val mean over all its runs stands apart); a score whose device or data differ from the
# run's row is marked NOT comparable.

# %%
if IN_NOTEBOOK:
    print(morning.test_table(night))

# %% [markdown]
# ## Memory per run
# What the runs measured and where: CUDA's allocator peak on a GPU, the trainer process's peak
# resident memory on a CPU. A run is coloured by its commit's fate: a first run kept later is kept.

# %%
if IN_NOTEBOOK and night.rows:
    show(plots.plot_memory(results, OUT / "memory.png", night.flagged))

# %% [markdown]
# ## Timeline
# Runs per bin (5 minutes to 2 hours: the bins fit the night) by what each run was, replicates and
# confirmations apart from new ideas, and the idle gaps (no run recorded for more than a run and 15 minutes).

# %%
if IN_NOTEBOOK:
    print(morning.timeline_text(night))
    if (line := morning.timeline(night)) is not None:
        show(plots.plot_timeline(line, OUT / "timeline.png"))

# %% [markdown]
# ## Loss curves: the best run against the baseline
# From `checkpoints/<commit>.metrics.jsonl`, saved for the baseline and every keep; against steps
# when the runs' budget was steps (AR_STEPS), whose seconds measure the machine's load, not the work.

# %%
if IN_NOTEBOOK:
    found, missing = morning.curve_files(night)
    for what in missing:
        print(f"missing: {what}")
    if found:
        labels, paths = zip(*found)
        show(plots.plot_curves(list(paths), OUT / "best_vs_baseline.png", labels=list(labels)))
