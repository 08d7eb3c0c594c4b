"""The lab book of an autoresearch effort: results.tsv, its report and plots, and the commands of analysis.py.

Its modules stand in layers; a module imports only from its own layer or the ones below it, never
in a circle (tests/test_layers.py checks this, and that no import hides inside a function):

1. base (git, paths, the lock, atomic writes, Refusal), runlog (what a run.log says)
2. keeprule (the rule: pure, it imports no labbook module), outcomes (what its history adds up
   to), sources (train.py as the rule compares it), ledger (results.tsv and its backup)
3. rescore (the sealed scorer's journal and fresh scores), audit (which rows count), stepwork (what
   an idea changes in a step's work, for decide under a step budget)
4. recording (the record and decide use case)
5. report (the report as data and text), plots, agentview (the agent's --json view), morning (the
   notebook's tables), refusals (what decide and record refused), machine (AGENTS.md's machine facts),
   workers (one worktree per GPU), optionsweep (docs/adjustable_params.md's options through the harness),
   stop (the stop of this checkout's run)
6. cli (the command line: the one place that composes the report with its plots)
"""

LAYERS = (
    ("base", "runlog"),
    ("keeprule", "outcomes", "sources", "ledger"),
    ("rescore", "audit", "stepwork"),
    ("recording",),
    ("report", "plots", "agentview", "morning", "refusals", "machine", "workers", "optionsweep", "stop"),
    ("cli",),
)
