"""The shipped keep rule (labbook.keeprule.decide, what `analysis.py decide` and `record` call) on
generated nights: setup (a baseline and its replicates, sigma estimated the way setup estimates
it), then experiments with a true effect of 0 or 3 sigma and Gaussian noise, every verdict
followed as the rule says (confirmations and replicates run with fresh noise). Two drifts on top:
an agent that retries a null idea as comment-only commits (a fresh seed each, the same program),
and a chain of simplifications that each cost a little.

Run `python tests/test_keeprule_simulation.py` to print the rates (they are quoted in AGENTS.md).
"""

import random
from dataclasses import dataclass, field

import pytest

from labbook import keeprule
from labbook.ledger import Row

SIGMA = 0.002  # a realistic run-to-run spread of val_bpc
BASE = 1.30
NIGHTS = 250
EXPERIMENTS = 8  # per night: 2,000 experiments per condition
SEED = 20261201


@dataclass
class Night:
    rng: random.Random
    rows: list = field(default_factory=list)
    truth: dict = field(default_factory=dict)  # commit -> true mean
    counter: int = 0
    programs: dict | None = None  # commit -> program key, when the rule is shown train.py's programs

    def run(self, commit, seed):
        """One training run of `commit`: its true mean plus fresh noise."""
        return keeprule.Candidate(commit, self.truth[commit] + self.rng.gauss(0.0, SIGMA), "x", seed=seed)

    def record(self, candidate, verdict):
        extra = {"seed": str(candidate.seed), "kind": verdict.kind, "note": keeprule.verdict_note(verdict)}
        row = Row(
            len(self.rows) + 2, candidate.commit, candidate.val_bpc, 2.0, verdict.status, "x", extra, verdict.kind
        )
        self.rows.append(row)

    def follow(self, candidate, **reference):
        """Decide, record, and run whatever the verdict asks for next on the same commit. Returns the
        verdicts in order."""
        verdicts = []
        while True:
            verdict = keeprule.decide(self.rows, candidate, programs=self.programs, **reference)
            self.record(candidate, verdict)
            verdicts.append(verdict)
            if verdict.next_seed is None:
                return verdicts
            # a rerun runs the candidate again; the replicates after a keep run the new tip: same commit
            candidate = self.run(candidate.commit, verdict.next_seed)
            candidate.simplification = False

    def setup(self):
        self.truth["base"] = BASE
        self.follow(self.run("base", keeprule.DEFAULT_SEED))

    def experiment(self, effect, simplification=False, program=None):
        """A new commit on the tip with a true effect (in sigma; negative is better). Returns
        (first verdict, final verdict). `program`: the key of its train.py's program (default: its own)."""
        self.counter += 1
        tip = keeprule.tip_commit(self.rows)
        commit = f"c{self.counter:05d}"
        self.truth[commit] = self.truth[tip] + effect * SIGMA
        candidate = self.run(commit, keeprule.DEFAULT_SEED)
        candidate.program = program or commit
        if self.programs is not None:
            self.programs[commit] = candidate.program
        reference = {}
        if simplification:
            candidate.simplification, candidate.statements = True, 90
            reference = {"reference_statements": 100}
        verdicts = self.follow(candidate, **reference)
        final = [v for v in verdicts if v.commit == commit and v.kind != "replicate"][-1]
        return verdicts[0], final


def simulate(effect, simplification=False, nights=NIGHTS, experiments=EXPERIMENTS, seed=SEED):
    """Rates over nights x experiments: kept, sent to a confirmation, and the true effect of keeps."""
    rng = random.Random(seed)
    kept = confirmed = total = 0
    for _ in range(nights):
        night = Night(rng)
        night.setup()
        for _ in range(experiments):
            first, final = night.experiment(effect, simplification)
            total += 1
            confirmed += first.verdict == "rerun"
            kept += final.verdict == "keep"
    return {"kept": kept / total, "rerun": confirmed / total, "experiments": total}


def fishing(guarded, retries=5, nights=NIGHTS // 2, ideas=EXPERIMENTS, seed=SEED):
    """Null ideas, each retried as comment-only commits (the same program, a fresh seed) until kept
    or `retries` tries: the share of ideas kept, with the rule shown the programs (guarded) or not."""
    rng = random.Random(seed)
    kept = total = 0
    for _ in range(nights):
        night = Night(rng, programs={} if guarded else None)
        night.setup()
        for idea in range(ideas):
            total += 1
            for _ in range(retries):
                try:
                    _, final = night.experiment(0.0, program=f"idea{idea}")
                except keeprule.SameProgram:
                    break  # refused: the agent moves on to another idea
                if final.verdict == "keep":
                    kept += 1
                    break
    return {"kept": kept / total, "ideas": total}


def ratchet(chain=EXPERIMENTS, cost=1.0, nights=NIGHTS // 2, seed=SEED):
    """A chain of simplifications each `cost` sigma worse than the tip: how far the tip's true mean
    ends above the baseline's, in sigma (mean and 95th percentile over nights)."""
    rng = random.Random(seed)
    drifts = []
    for _ in range(nights):
        night = Night(rng)
        night.setup()
        for _ in range(chain):
            night.experiment(cost, simplification=True)
        drifts.append((night.truth[keeprule.tip_commit(night.rows)] - BASE) / SIGMA)
    drifts.sort()
    return {"mean": sum(drifts) / len(drifts), "p95": drifts[int(0.95 * (len(drifts) - 1))], "nights": nights}


@pytest.fixture(scope="module")
def rates():
    return {
        "null": simulate(0.0),
        "improvement_3sigma": simulate(-3.0),
        "simplification_null": simulate(0.0, simplification=True),
        "simplification_regression_3sigma": simulate(3.0, simplification=True),
    }


def test_null_experiments_are_rarely_kept_and_rarely_sent_to_a_confirmation(rates):
    print(rates)
    assert rates["null"]["kept"] <= 0.05
    assert rates["null"]["rerun"] <= 0.20


def test_a_true_improvement_of_three_sigma_is_kept_at_least_80_percent_of_the_time(rates):
    assert rates["improvement_3sigma"]["kept"] >= 0.80


def test_simplifications_without_effect_are_kept_and_real_regressions_are_not(rates):
    # a simplification that costs nothing is kept most of the time; one that costs twice the bound
    # (3 sigma) almost never
    assert keeprule.SIMPLIFICATION_BOUND * 2 <= 3.0
    assert rates["simplification_null"]["kept"] >= 0.75
    assert rates["simplification_regression_3sigma"]["kept"] <= 0.05


def test_retrying_a_null_idea_as_comment_only_commits_is_refused_not_fished():
    guarded, blind = fishing(guarded=True), fishing(guarded=False)
    print(guarded, blind)
    assert guarded["kept"] <= 0.05  # one judgment per program: the single-experiment rate
    assert blind["kept"] > guarded["kept"] + 0.02  # what five draws of one program fish (against one reference)


def test_a_chain_of_costly_simplifications_moves_the_tip_at_most_the_bound():
    drift = ratchet()
    print(drift)
    # per step alone (1.5 sigma each) the tip drifted 3.1 sigma on average, 6 sigma in one night of 20
    assert drift["mean"] <= keeprule.SIMPLIFICATION_BOUND and drift["p95"] <= 2 * keeprule.SIMPLIFICATION_BOUND + 1e-6


def test_the_simulation_drives_the_constants_explain_renders():
    text = keeprule.explain()
    assert f"{keeprule.SETUP_REPLICATES} replicates" in text
    assert f"{keeprule.SIMPLIFICATION_BOUND:g} sigma" in text


if __name__ == "__main__":
    for name, value in {
        "null": simulate(0.0),
        "improvement_3sigma": simulate(-3.0),
        "simplification_null": simulate(0.0, simplification=True),
        "simplification_regression_3sigma": simulate(3.0, simplification=True),
    }.items():
        print(
            f"{name:34} kept {value['kept']:.3f}  sent to a confirmation {value['rerun']:.3f}  n={value['experiments']}"
        )
    for guarded in (False, True):
        value = fishing(guarded)
        print(
            f"null idea tried 5 times, {'guarded' if guarded else 'blind':7}    kept {value['kept']:.3f}  n={value['ideas']}"
        )
    value = ratchet()
    print(
        f"{EXPERIMENTS} simplifications each 1 sigma worse: tip drift mean {value['mean']:.2f}, p95 {value['p95']:.2f} sigma"
    )
