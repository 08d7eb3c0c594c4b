"""The keep rule: one function decides keep, discard, rerun or crash, and says what to run next.

`decide(rows, candidate)` is pure: it reads the ledger's rows (labbook.ledger.Row) and the run
just finished (a Candidate) and returns a Verdict with the numbers behind it and the exact shell
commands to run next. `python analysis.py decide` and `python analysis.py record` call it; the
simulation test (tests/test_keeprule_simulation.py) drives the same function. `outcomes.explain()`
(labbook/outcomes.py) renders the rule from the constants below; program.md and AGENTS.md quote it verbatim.

Design, and why (every row's kind, the tip and the reference, sigma from unselected runs, the two
stages, checked simplifications, a program judged once, near-misses): docs/keep-rule.md.

This module imports no other labbook module. The candidate's value, the sealed score, comes from
the record and decide use case (labbook/recording.py: `candidate_value`).
"""

import math
import re
import statistics
from dataclasses import dataclass, field

SETUP_REPLICATES = 4  # setup: the baseline, then this many replicates with AR_SEED=1, 2, ...
REPLICATES_AFTER_KEEP = 1  # replicates of every newly kept commit, before the next experiment
PROVISIONAL_RATE = 0.15  # at most this share of null experiments is sent to a confirmation run
CONFIRM_RATE = 0.10  # a provisional commit is kept when the mean of its 2 runs beats the t (1 - this) bound
FALSE_KEEP_RATE = 0.05  # the guard: null experiments kept by both stages together (the simulation checks it)
NOISE_FADE = 0.7  # a noise group's weight in sigma relative to the next newer group's
NOISE_RATIO = 8.0  # an older group whose variance differs from the newer groups' by more measured another model
NEAR_MISS_SE = 1.0  # a discarded experiment is a near-miss when it beat the reference by this many standard errors
SIMPLIFICATION_BOUND = 1.5  # in sigma: how much worse than the reference a simplification may be
MACHINE_NOISE_TPS = 0.10  # runs of one commit whose tokens/s differ by more measure the machine

KINDS = ("baseline", "replicate", "experiment", "simplification", "confirm", "environment")
UNSELECTED_KINDS = ("baseline", "replicate", "confirm")  # runs nobody selected
PROVISIONAL = "provisional"  # the status of a first run the rule sent to a confirmation
FIRST_KINDS = ("experiment", "simplification")  # a new commit's first run
ENVIRONMENT = "environment"  # a crash the run's environment caused (settings, data, disk, a signal): not the idea's
PROGRAM_TIMEOUT = 600  # seconds: program.md's `timeout -k 30 600`; a SIGTERM this late is that timeout's
DEFAULT_SEED = 42  # the simulation's first-run seed (a real first run's seed comes from its train.py text)
NOISE_PREFIX = "noise:"  # description prefix of a replicate (rows from before the kind column have no other mark)
NOTE_PREFIX = "rule: "  # a row's note, as the keep rule writes it: "rule: <verdict> ..."


# Small statistics: Student's t quantile without scipy


def t_cdf(x, df):
    """P(T <= x) for Student's t with `df` degrees of freedom (Simpson's rule on the density)."""
    if x < 0:
        return 1.0 - t_cdf(-x, df)
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    steps = 400

    def density(t):
        return math.exp(log_c - (df + 1) / 2 * math.log1p(t * t / df))

    h = x / steps
    total = density(0.0) + density(x) + sum((4 if i % 2 else 2) * density(i * h) for i in range(1, steps))
    return 0.5 + total * h / 3


_T_CACHE = {}


def t_quantile(p, df):
    """The p-quantile of Student's t (p > 0.5), by bisection; the normal quantile above 1000 df."""
    key = (round(p, 9), df)
    if key not in _T_CACHE:
        if df > 1000:
            _T_CACHE[key] = statistics.NormalDist().inv_cdf(p)
        else:
            lo, hi = 0.0, 100.0
            for _ in range(60):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
            _T_CACHE[key] = (lo + hi) / 2
    return _T_CACHE[key]


# Kinds, commits, the tip, sigma


def row_kind(row, baseline_commit=None):
    """The row's kind: its `kind` column, or for rows recorded before that column existed, inferred (the first kept
    commit's rows are the baseline, `noise:` rows are replicates)."""
    kind = (getattr(row, "kind", "") or row.extra.get("kind", "")).strip()
    if kind in KINDS:
        return kind
    if row.description.startswith(NOISE_PREFIX):
        return "replicate"
    if baseline_commit is not None and row.commit == baseline_commit:
        return "baseline"
    return "experiment"


def baseline_commit(rows):
    for row in rows:
        if (getattr(row, "kind", "") or row.extra.get("kind", "")) == "baseline":
            return row.commit
    keeps = [r for r in rows if r.status == "keep" and not r.description.startswith(NOISE_PREFIX)]
    return keeps[0].commit if keeps else None


def kinds(rows):
    """[(row, kind)] for every row."""
    base = baseline_commit(rows)
    return [(row, row_kind(row, base)) for row in rows]


def measured(row):
    return row.status != "crash"


def tip_commit(rows):
    """The commit of the last keep row: what the branch stands on."""
    keeps = [r for r in rows if r.status == "keep"]
    return keeps[-1].commit if keeps else None


def commit_values(rows, commit):
    return [r.val_bpc for r in rows if r.commit == commit and measured(r)]


def noise_groups(rows, replicate=None):
    """[[val_bpc]] per commit of the runs sigma may use, the tip's group last: unselected runs, and a kept
    experiment's first run (why: docs/keep-rule.md). `replicate`: (commit, val_bpc) of one more."""
    kept = {r.commit for r in rows if r.status == "keep"}
    groups = {}
    for row, kind in kinds(rows):
        if measured(row) and (kind in UNSELECTED_KINDS or (kind == "experiment" and row.commit in kept)):
            groups[row.commit] = groups.pop(row.commit, []) + [row.val_bpc]
    if replicate:
        groups[replicate[0]] = groups.pop(replicate[0], []) + [replicate[1]]
    return list(groups.values())


def pooled_sigma(rows, replicate=None):
    """(sigma, Satterthwaite's degrees of freedom rounded down) from the noise groups, newest first, each weighing
    NOISE_FADE times the next newer one, up to the first whose variance differs from the newer ones' by more than
    NOISE_RATIO either way; (None, 0) without a group of two runs."""
    squares = weighted_df = squared_weights_df = 0.0
    for age, values in enumerate(reversed([v for v in noise_groups(rows, replicate) if len(v) > 1])):
        df, mean, weight = len(values) - 1, statistics.fmean(values), NOISE_FADE**age
        variance, pooled = sum((x - mean) ** 2 for x in values) / df, squares / (weighted_df or 1)
        if age and not (variance <= NOISE_RATIO * pooled and pooled <= NOISE_RATIO * variance):
            break  # an older model's noise
        squares, weighted_df = squares + weight * variance * df, weighted_df + weight * df
        squared_weights_df += weight * weight * df
    if not weighted_df:
        return None, 0
    return math.sqrt(squares / weighted_df), int(weighted_df**2 / squared_weights_df + 1e-9)


def sent_to_confirmation(row):
    """Whether `row` is a first run the rule sent to a confirmation (older ledgers: a rerun's discard)."""
    legacy = row.status == "discard" and row.extra.get("note", "").startswith(f"{NOTE_PREFIX}rerun")
    return row.status == PROVISIONAL or legacy


def next_seed(rows, commit, taken=None):
    """The smallest AR_SEED >= 1 that no row has used, for any commit, nor the run just judged (`taken`, its seed): a
    confirmation or replicate shares no seed (no initialisation, no data order) with any run it is compared against."""
    used = {taken}
    for row in rows:
        try:
            used.add(int(row.extra.get("seed", "") or -1))
        except ValueError:
            pass
    seed = 1
    while seed in used:
        seed += 1
    return seed


# The candidate and the verdict


@dataclass
class Candidate:
    commit: str
    val_bpc: float | None  # None: the run crashed
    description: str = ""
    simplification: bool = False  # declared with --simplification
    params: float | None = None  # num_params_M of this run
    statements: int | None = None  # statement_count of this commit's train.py
    seed: int | None = None
    tokens_per_sec: float | None = None
    explicit: bool = True  # the description was given (--description), not the commit's subject
    crash: str | None = None  # the run log's `crash:` reason, if any
    program: str | None = None  # program_key of this commit's train.py


@dataclass
class Verdict:
    verdict: str  # keep | discard | rerun | crash
    kind: str  # the kind of the row that records this run
    status: str  # the status column of that row: keep, discard, provisional (rerun) or crash
    reason: str
    commit: str
    value: float | None = None  # this run's val_bpc
    runs: int | None = None  # measured runs of the commit, this one included (None: a crash)
    mean: float | None = None
    reference_commit: str | None = None
    reference: float | None = None
    reference_runs: int | None = None
    reference_se: float | None = None
    sigma: float | None = None
    df: int | None = None
    delta: float | None = None  # mean - reference (negative: better)
    threshold: float | None = None  # keep (or go on) when delta < threshold
    next_seed: int | None = None  # run the same commit again with this AR_SEED
    record_command: str = ""
    commands: list = field(default_factory=list)  # after recording
    notes: list = field(default_factory=list)  # lines to read before the commands

    def numbers(self):
        keys = ("value", "runs", "mean", "reference_commit", "reference", "reference_runs", "reference_se")
        keys += ("sigma", "df", "delta", "threshold", "next_seed")
        return {k: getattr(self, k) for k in keys}

    def as_dict(self):
        return {"verdict": self.verdict, "kind": self.kind, "status": self.status, "reason": self.reason,
                "commit": self.commit, **self.numbers(), "commands": self.commands}  # fmt: skip

    def text(self, with_record=True):
        """The verdict on its first line, then the numbers, then the commands to run next."""
        lines = [self.verdict, self.reason]
        fmt = {k: (f"{v:.6f}" if isinstance(v, float) else str(v)) for k, v in self.numbers().items() if v is not None}
        lines.append("  ".join(f"{k}={v}" for k, v in fmt.items()))
        commands = ([self.record_command] if with_record and self.record_command else []) + self.commands
        lines += self.notes + ["next:"] + [f"  {c}" for c in commands]
        return "\n".join(lines)


def quoted(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("`", "\\`") + '"'


def record_command(description, simplification=False):
    return f"python analysis.py record --description {quoted(description)}" + (
        " --simplification" if simplification else ""
    )


RUN_TAIL = f"timeout -k 30 {PROGRAM_TIMEOUT} python train.py > run.log 2>&1"  # program.md's run command


def run_command(seed=None):
    """program.md's run command, with AR_SEED when the rule names a seed (a first run takes its train.py's)."""
    return ("" if seed is None else f"AR_SEED={seed} ") + RUN_TAIL


RESET = "git reset --hard HEAD~1"

# What ended a crashed run, from its `crash:` line. The environment's crashes (settings, data, disk) and
# signals (program.md's timeout, a kill) are not the idea's: the same commit runs again, nothing is reset,
# until a second signal ends the same commit ("again"). A code mistake is the one case an amend can fix.
CRASH_REASONS = {
    "killed": "the run has no val_bpc and no crash line: it was killed with SIGKILL (the kernel's out-of-memory killer, or kill -9)",
    "environment": "not the idea's crash: the run's settings, data, disk or Python environment stopped it: crash: {crash}",
    "timeout": "not the idea's crash: program.md's {timeout} s timeout ended the run (this machine is too slow or too busy for the budget): crash: {crash}",
    "interrupted": "not the idea's crash: a signal stopped the run: crash: {crash}",
    "again": "a signal or the timeout stopped this commit's run a second time: it is charged to the idea: crash: {crash}",
    "outcome": "the idea itself failed: crash: {crash}",
    "twin": "not a new experiment: python train.py refused another seed of a program already measured: crash: {crash}",
    "mistake": "the run crashed: crash: {crash}",
}
CRASH_NEXT = {
    "killed": "   # a run killed without a crash line is recorded, then reset",
    "environment": "# nothing to reset: do what the crash line says (the exports to set, the environment to activate, the data, free disk space), then run this commit again:",
    "timeout": (
        "# nothing to reset. At the baseline (nothing recorded yet) on a slow CPU: export a smaller AR_STEPS or shrink "
        "the rehearsal model (docs/rehearsal.md), then run again; later, run this commit again when `uptime` shows "
        "less load (a second timeout of it is charged to it):"
    ),
    "interrupted": "# nothing to reset: run this commit again (a second signal that stops it is charged to it):",
    "again": "   # a run stopped twice is recorded, then reset",
    "outcome": "   # out of memory, a diverging loss, a hang, a leak or a refused score: the idea's own result",
    "twin": "   # comments or formatting alone: recorded, then reset; change the code itself next",
    "mistake": "   # or, for a typo or a wrong shape: fix it, git commit -a --amend --no-edit, run again",
}
NOT_CHARGED = ("environment", "timeout", "interrupted")  # crash kinds rerun, never reset
SIGNALS = ("timeout", "interrupted")  # charged to the commit the second time
RESCORE_REFUSED = "run.log is not one finished run"
OUTCOMES = (
    "out of memory", "loss is ", "loss exploded", "exceeded hard time limit", "the model is not causal", RESCORE_REFUSED,
)  # fmt: skip
TWIN = r"^train\.py at \S+ is the same program as at "  # prepare.py's refusal of a tried program's twin
UNLIKE_EFFORT = "this run is not measured like the effort's runs"  # prepare.py's refusal
ENVIRONMENT_CRASHES = (
    re.escape(UNLIKE_EFFORT), r"^AR_DATA=.* does not exist$", r"^could not download ", r"^download of .* was cut short",
    r" is not enwik8: ", r"^cannot read .*: it is damaged", r" is a directory, not a data file", r"^the run's data .* is gone",
    r" holds [\d,]+ bytes: a custom corpus needs", r"No space left on device", r"Disk quota exceeded", r"file write failed",
    r" is not installed in this python ",
)  # fmt: skip


def crash_kind(crash):
    """killed, environment, timeout, interrupted, twin (a tried program again), outcome (the idea failed) or
    mistake (the code did), from a crash line."""
    if not crash:
        return "killed"
    if signal := re.match(r"interrupted \((\w+)\)(?: after (\d+) s)?", crash):
        late = signal[2] is not None and int(signal[2]) >= PROGRAM_TIMEOUT - 10
        return "timeout" if signal[1] == "SIGTERM" and late else "interrupted"
    if any(re.search(pattern, crash) for pattern in ENVIRONMENT_CRASHES):
        return ENVIRONMENT
    if re.search(TWIN, crash):
        return "twin"
    return "outcome" if crash.startswith(OUTCOMES) else "mistake"


def crash_of(row):
    """The `crash:` reason a crash row's description carries, or None."""
    head, sep, reason = row.description.partition(" (crash: ")
    return reason.removesuffix(")") if sep else None


def stopped_before(rows, commit):
    """Whether a signal or the timeout already stopped a run of `commit` (an environment row says so)."""
    return any(
        r.commit == commit and kind == ENVIRONMENT and crash_kind(crash_of(r)) in SIGNALS for r, kind in kinds(rows)
    )


def is_simpler(candidate, reference_params=None, reference_statements=None):
    """(simpler?, why): fewer parameters than the tip's run, or a smaller train.py syntax tree."""
    if candidate.params is not None and reference_params is not None and candidate.params < reference_params:
        return True, f"{candidate.params:g}M parameters < {reference_params:g}M"
    if (
        candidate.statements is not None
        and reference_statements is not None
        and candidate.statements < reference_statements
    ):
        return True, f"{candidate.statements} train.py syntax-tree nodes < {reference_statements}"
    known = [
        f"params {candidate.params} vs {reference_params}",
        f"syntax-tree nodes {candidate.statements} vs {reference_statements}",
    ]
    return False, "not simpler (" + ", ".join(known) + ")"


class CannotJudge(Exception):
    """The rule will not judge this run: the message says why and what to do instead."""


class NotReady(CannotJudge):
    """The ledger cannot judge an experiment yet (setup unfinished): the message says what to run."""


class SameProgram(CannotJudge):
    """The run's train.py is a program an earlier commit already ran: not a new experiment."""


def setup_problem(rows, tip):
    """Why setup is not complete (the tip's replicates, sigma's runs counted unweighted), or None."""
    df = sum(len(v) - 1 for v in noise_groups(rows))
    tip_kinds = [k for r, k in kinds(rows) if r.commit == tip and measured(r)]
    missing = (SETUP_REPLICATES if "baseline" in tip_kinds else 0) - tip_kinds.count("replicate")
    if df >= SETUP_REPLICATES and missing <= 0:
        return None
    return (
        f"setup is not complete: sigma has {df} degrees of freedom and the tip {tip} lacks {max(missing, 0)} "
        f"replicates. Setup runs the baseline and {SETUP_REPLICATES} replicates before any experiment, with HEAD "
        f"at {tip}: {run_command(next_seed(rows, tip))}, then python analysis.py decide and what it says"
    )


def same_program(rows, candidate, programs):
    """The latest earlier row the rule judged (its note is the rule's) whose commit's train.py is the candidate's
    program, or None. A worker's screening run (recorded with --status) is no judgment: its promoted cherry-pick is
    judged here for the first time."""
    if not candidate.program or not programs:
        return None
    twins = [
        r
        for r in rows
        if r.commit != candidate.commit
        and programs.get(r.commit) == candidate.program
        and r.extra.get("note", "").startswith(NOTE_PREFIX)
        and row_kind(r) != ENVIRONMENT
    ]
    return twins[-1] if twins else None


def anchor(rows):
    """The last real keep: the baseline or a kept experiment (a history entry), never a simplification."""
    kept = [e for e in history(rows) if e["status"] == "keep" and e["kind"] != "simplification"]
    return kept[-1] if kept else None


def simplification_allowance(rows, sigma):
    """How much worse than the reference (the tip's mean) a simplification may be: SIMPLIFICATION_BOUND sigma, less
    what the simplifications kept since the last real keep already cost against its mean."""
    base, tip = anchor(rows), tip_commit(rows)
    spent = 0.0
    if base is not None and tip is not None:
        spent = max(
            0.0, statistics.fmean(commit_values(rows, tip)) - statistics.fmean(commit_values(rows, base["commit"]))
        )
    return SIMPLIFICATION_BOUND * sigma - spent


def replicate_verdict(rows, candidate, tip):
    """A run of the tip's own commit: setup's replicates, or replicates of a new keep."""
    values = commit_values(rows, tip) + [candidate.val_bpc]
    tip_kinds = [k for r, k in kinds(rows) if r.commit == tip and measured(r)]
    replicates = tip_kinds.count("replicate") + 1
    wanted = SETUP_REPLICATES if "baseline" in tip_kinds else REPLICATES_AFTER_KEEP
    description = candidate.description if candidate.explicit else f"{tip}, seed {candidate.seed}"
    if not description.startswith(NOISE_PREFIX):
        description = f"{NOISE_PREFIX} {description}"
    verdict = Verdict("keep", "replicate", "keep", "", tip, candidate.val_bpc, len(values), statistics.fmean(values))
    verdict.reference_commit, verdict.reference, verdict.reference_runs = tip, verdict.mean, len(values)
    verdict.sigma, verdict.df = pooled_sigma(rows, replicate=(tip, candidate.val_bpc))
    verdict.reference_se = verdict.sigma / math.sqrt(len(values)) if verdict.sigma is not None else None
    verdict.record_command = record_command(description)
    if replicates < wanted:
        seed = next_seed(rows, tip, candidate.seed)
        verdict.next_seed = seed
        verdict.reason = f"replicate {replicates} of {wanted} of {tip}: run the next one"
        verdict.commands = [run_command(seed), record_command(f"{NOISE_PREFIX} {tip}, seed {seed}")]
    else:
        verdict.reason = f"replicate {replicates} of {tip}: the reference is now the mean of {len(values)} runs"
        verdict.commands = [
            "# the next experiment: edit train.py, git commit -am '...', timeout -k 30 600 python train.py > run.log 2>&1"
        ]
    return verdict


def decide(rows, candidate, reference_params=None, reference_statements=None, programs=None):
    """The verdict on `candidate` given every row recorded before it. Raises NotReady when a run of another commit
    than the tip arrives before setup's replicates give sigma its degrees of freedom, SameProgram when a new commit's
    train.py is a program an earlier commit ran (`programs`: commit -> program_key)."""
    tip = tip_commit(rows)
    if tip is not None and candidate.commit != tip and (problem := setup_problem(rows, tip)):
        raise NotReady(problem)
    if candidate.val_bpc is None:
        return crash_verdict(rows, candidate, tip)
    if tip is None:
        verdict = Verdict("keep", "baseline", "keep", "the first run: the baseline", candidate.commit)
        verdict.value = verdict.mean = candidate.val_bpc
        seed = next_seed(rows, candidate.commit, candidate.seed)
        verdict.runs, verdict.next_seed = 1, seed
        verdict.record_command = record_command(candidate.description if candidate.explicit else "baseline")
        verdict.commands = [run_command(seed), record_command(f"{NOISE_PREFIX} {candidate.commit}, seed {seed}")]
        return verdict
    if candidate.commit == tip:
        return replicate_verdict(rows, candidate, tip)
    twin = None if any(r.commit == candidate.commit for r in rows) else same_program(rows, candidate, programs)
    if twin is not None:
        raise SameProgram(
            f"train.py at {candidate.commit} is the same program as at {twin.commit} (results.tsv line "
            f"{twin.line}, {twin.status}: {twin.description}): comments, docstrings and formatting change only "
            f"the seed, so this run is another draw of a program already measured, not a new experiment. "
            f"{RESET}, then change the code itself"
        )
    sigma, df = pooled_sigma(rows)
    return experiment_verdict(rows, candidate, tip, sigma, df, reference_params, reference_statements)


def crash_verdict(rows, candidate, tip):
    """A run without val_bpc: recorded as a crash; reset when the idea caused it, run again when its environment did
    (kind `environment`: never charged to the idea, but its time shows in the report)."""
    prior = [k for r, k in kinds(rows) if r.commit == candidate.commit and measured(r)]
    kind = "confirm" if prior else ("baseline" if tip is None else "experiment")
    ended = crash_kind(candidate.crash)
    if ended in SIGNALS and stopped_before(rows, candidate.commit):
        ended = "again"
    reason = CRASH_REASONS[ended].format(crash=candidate.crash, timeout=PROGRAM_TIMEOUT)
    verdict = Verdict("crash", kind, "crash", reason, candidate.commit)
    first = tip is None and not candidate.explicit  # the baseline's own run crashed
    description = "baseline" if first else candidate.description or "crash"
    seed = None
    if candidate.commit == tip:  # a replicate that crashed: labelled as one, with the seed it ran
        verdict.kind = "replicate"
        seed = candidate.seed if candidate.seed is not None else next_seed(rows, tip)
        description = f"{NOISE_PREFIX} {tip}, seed {seed}"
    elif prior:  # a confirmation: its seed is the one the rule named
        seed = candidate.seed if candidate.seed is not None else next_seed(rows, candidate.commit)
    verdict.record_command = record_command(description)
    if ended in NOT_CHARGED:
        verdict.kind, verdict.next_seed = ENVIRONMENT, seed
        verdict.commands = [CRASH_NEXT[ended], run_command(seed)]
    elif tip is None or candidate.commit == tip:
        verdict.commands = ["# fix the crash, commit, and run again: the tip itself must run"]
    else:
        verdict.commands = [RESET + CRASH_NEXT[ended]]
    return verdict


def experiment_verdict(rows, candidate, tip, sigma, df, reference_params, reference_statements):
    reference_values = commit_values(rows, tip)
    prior = [(r, k) for r, k in kinds(rows) if r.commit == candidate.commit and measured(r)]
    values = [r.val_bpc for r, _ in prior] + [candidate.val_bpc]
    n, k = len(reference_values), len(values)
    reference, mean = statistics.fmean(reference_values), statistics.fmean(values)
    se = sigma * math.sqrt(1 / k + 1 / n)
    if prior:
        first_kind, simple, why = prior[0][1], prior[0][1] == "simplification", "confirmed simplification"
        kind = "confirm"
    else:
        simple, why = (
            is_simpler(candidate, reference_params, reference_statements) if candidate.simplification else (False, "")
        )
        first_kind = kind = "simplification" if simple else "experiment"
    if simple:
        threshold = simplification_allowance(rows, sigma)
    else:
        rate = PROVISIONAL_RATE if k == 1 else CONFIRM_RATE
        threshold = -t_quantile(1 - rate, df) * se
    delta = mean - reference
    passes = delta <= threshold if simple else delta < threshold
    verdict = Verdict("discard", kind, "discard", "", candidate.commit, candidate.val_bpc, k, mean, tip, reference, n)
    verdict.reference_se, verdict.sigma, verdict.df = sigma / math.sqrt(n), sigma, df
    verdict.delta, verdict.threshold = delta, threshold
    verdict.record_command = record_command(candidate.description, candidate.simplification and not prior)
    what = "simplification" if simple else "experiment"
    noun = "its run" if k == 1 else f"the mean of its {k} runs"
    compare = f"{noun} is {delta:+.6f} against the reference {reference:.6f} ({tip}), the bound is {threshold:+.6f}"
    if first_kind == "simplification" or not candidate.simplification or prior:
        note = ""
    else:
        note = f" (declared a simplification, but {why}: judged as an experiment)"
    if passes and k == 1:
        seed = next_seed(rows, candidate.commit, candidate.seed)
        verdict.verdict, verdict.status, verdict.next_seed = "rerun", PROVISIONAL, seed
        verdict.reason = f"provisional {what}: {compare}; one confirmation run decides{note}"
        verdict.commands = [run_command(seed), record_command(candidate.description)]
    elif passes:
        verdict.verdict = verdict.status = "keep"
        label = f"{why}" if simple else "confirmed improvement"
        verdict.reason = f"{label}: {compare}"
        seed = next_seed(rows, candidate.commit, candidate.seed)
        if REPLICATES_AFTER_KEEP:
            verdict.next_seed = seed
            verdict.commands = [
                run_command(seed),
                record_command(f"{NOISE_PREFIX} {candidate.commit}, seed {seed}"),
            ]
    else:
        verdict.reason = f"{what} not kept: {compare}{note}"
        verdict.commands = [RESET]
    return verdict


def verdict_note(verdict):
    """The decision as the row's note: the mean that the decision used, against what."""
    if verdict.delta is None:
        return f"{NOTE_PREFIX}{verdict.verdict}"
    return (
        f"{NOTE_PREFIX}{verdict.verdict} mean {verdict.mean:.6f} of {verdict.runs} vs {verdict.reference:.6f} "
        f"({verdict.reference_commit}, {verdict.reference_runs} runs), delta {verdict.delta:+.6f}, "
        f"bound {verdict.threshold:+.6f}, sigma {verdict.sigma:.6f} ({verdict.df} df)"
    )


# The history: each judged commit with its mean and the reference it faced (labbook/outcomes.py sums it up)


def history(rows):
    """One entry per commit that was judged (in order of its first row): its kind, runs, mean, status (keep once any
    row kept it, else its last row's), the reference it was judged against and the delta; `at`: the index of its first
    row in `rows`."""
    tagged = kinds(rows)
    entries, order = {}, []
    for i, (row, kind) in enumerate(tagged):
        if kind == ENVIRONMENT:  # not a run of the idea: it was run again
            continue
        entry = entries.get(row.commit)
        if entry is None:
            before = [r for r, _ in tagged[:i]]
            tip = tip_commit(before)
            ref = commit_values(before, tip) if tip else []
            entry = entries[row.commit] = dict(
                commit=row.commit, kind=kind, description=row.description, values=[], status=row.status,
                reference_commit=tip, reference=statistics.fmean(ref) if ref else None,
                reference_runs=len(ref), line=row.line, at=i,
            )  # fmt: skip
            order.append(row.commit)
        if measured(row) and not (kind == "replicate" and entry["kind"] in FIRST_KINDS):
            entry["values"].append(row.val_bpc)  # the decision's runs; later replicates refine the mean
        # once kept, a commit stays kept: later rows (replicates that workers record as discards) refine its mean
        status = PROVISIONAL if sent_to_confirmation(row) else row.status
        entry["status"] = "keep" if "keep" in (entry["status"], status) else status
    out = []
    for commit in order:
        e = entries[commit]
        all_values = commit_values(rows, commit)
        e["runs"] = len(all_values)
        e["mean"] = statistics.fmean(all_values) if all_values else None
        e["decision_mean"] = statistics.fmean(e["values"]) if e["values"] else None
        e["decision_runs"] = len(e["values"])
        ref = e["reference"]
        e["delta"] = None if ref is None or e["decision_mean"] is None else e["decision_mean"] - ref
        del e["values"]
        out.append(e)
    return out
