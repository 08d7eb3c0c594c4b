"""The keep rule on generated nights, two ways.

The worlds a night meets (`world_rates`): setup, then a stream of ideas, half of them null and the
rest true gains of 1, 2 and 3 sigma (sigma of the tip's noise at that point), in three worlds:
constant noise, noise falling 5x after the first kept gain (the CPU rehearsal's pattern: a barely
trained baseline spreads far more than the models after it) and noise doubling after it. Every
verdict is followed as the rule says (confirmations, replicates after a keep). `world_rates` is a
numpy transcription of the rule, vectorised over nights for speed; `decided_nights` drives the
shipped function (labbook.keeprule.decide, what `analysis.py decide` and `record` call) on the same
draws, and a test holds the two to the same verdicts.

Then drifts on top, on the shipped function: an agent that retries a null idea as comment-only
commits (a fresh seed each, the same program), and a chain of simplifications that each cost a
little.

Run `python tests/test_keeprule_simulation.py` to print the table AGENTS.md quotes.
"""

import random
from dataclasses import dataclass, field

import numpy as np
import pytest

from labbook import keeprule, outcomes
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
    spread: dict = field(default_factory=dict)  # commit -> its run-to-run sigma (default SIGMA)
    draw: object = None  # the next standard normal draw (default: from rng)

    def run(self, commit, seed):
        """One training run of `commit`: its true mean plus fresh noise."""
        z = self.draw() if self.draw else self.rng.gauss(0.0, 1.0)
        return keeprule.Candidate(commit, self.truth[commit] + self.spread.get(commit, SIGMA) * z, "x", seed=seed)

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

    def experiment(self, effect, simplification=False, program=None, spread=SIGMA):
        """A new commit on the tip with a true effect (in SIGMA; negative is better) and its own
        run-to-run `spread`. Returns (first verdict, final verdict). `program`: the key of its
        train.py's program (default: its own)."""
        self.counter += 1
        tip = keeprule.tip_commit(self.rows)
        commit = f"c{self.counter:05d}"
        self.truth[commit], self.spread[commit] = self.truth[tip] + effect * SIGMA, spread
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


WORLDS = {"constant noise": 1.0, "noise falls 5x after the first gain": 0.2, "noise doubles after the first gain": 2.0}
GAINS = (0, 1, 2, 3)  # true gain of an idea, in sigma of the tip's noise
MIX = (0.5, 1 / 6, 1 / 6, 1 / 6)  # half the ideas null, the rest gains of 1, 2 and 3 sigma
WORLD_NIGHTS, WORLD_IDEAS = 2000, 30


def draws(nights, ideas, seed):
    """The noise every night meets, shared by both transcriptions: setup's five runs, each idea's
    gain, its first run, its confirmation and the replicates after a keep (standard normal)."""
    rng = np.random.default_rng(seed)
    return dict(
        setup=rng.normal(size=(nights, keeprule.SETUP_REPLICATES + 1)),
        gain=rng.choice(len(GAINS), size=(nights, ideas), p=MIX),
        first=rng.normal(size=(nights, ideas)),
        confirm=rng.normal(size=(nights, ideas)),
        replicates=rng.normal(size=(nights, ideas, keeprule.REPLICATES_AFTER_KEEP)),
    )


def t_quantiles(p, df):
    return np.array([keeprule.t_quantile(p, int(d)) for d in df])


def noise_of_groups(squares, dfs, count):
    """keeprule.pooled_sigma over arrays: (sigma, df) per night from its groups' sums of squares
    (newest at index count - 1)."""
    nights = np.arange(len(count))
    pooled_sq, weighted_df, squared_weights_df = (np.zeros(len(count)) for _ in range(3))
    weight, open_ = np.ones(len(count)), np.ones(len(count), bool)
    for age in range(squares.shape[1]):
        index = count - 1 - age
        ss, df = squares[nights, np.maximum(index, 0)], dfs[nights, np.maximum(index, 0)]
        present = open_ & (index >= 0)
        variance, pooled = ss / np.maximum(df, 1), pooled_sq / np.maximum(weighted_df, 1e-300)
        agrees = (weighted_df == 0) | (
            (variance <= keeprule.NOISE_RATIO * pooled) & (pooled <= keeprule.NOISE_RATIO * variance)
        )
        take = present & agrees
        open_ &= ~(present & ~agrees)
        pooled_sq += np.where(take, weight * ss, 0)
        weighted_df += np.where(take, weight * df, 0)
        squared_weights_df += np.where(take, weight * weight * df, 0)
        weight = np.where(take, weight * keeprule.NOISE_FADE, weight)
    return np.sqrt(pooled_sq / weighted_df), np.floor(weighted_df**2 / squared_weights_df + 1e-9).astype(int)


def world_nights(factor, noise):
    """Every idea's verdict on every night: (gain index, kept, runs it cost), each (nights, ideas)."""
    setup, gain = noise["setup"], noise["gain"]
    nights, ideas = gain.shape
    replicates = keeprule.REPLICATES_AFTER_KEEP
    squares, dfs = np.zeros((nights, ideas + 1)), np.zeros((nights, ideas + 1))
    squares[:, 0], dfs[:, 0] = ((setup - setup.mean(1, keepdims=True)) ** 2).sum(1), setup.shape[1] - 1
    count = np.ones(nights, int)
    reference, reference_runs = setup.mean(1), np.full(nights, setup.shape[1])
    truth, tip_noise, gained = np.zeros(nights), np.ones(nights), np.zeros(nights, bool)
    kept, runs = np.zeros((nights, ideas), bool), np.zeros((nights, ideas), int)
    for i in range(ideas):
        sigma, df = noise_of_groups(squares, dfs, count)
        size = np.array(GAINS)[gain[:, i]]
        spread = tip_noise * np.where((size > 0) & ~gained, factor, 1.0)
        mean = truth - size * tip_noise
        first = mean + spread * noise["first"][:, i]
        confirm = mean + spread * noise["confirm"][:, i]
        se1, se2 = sigma * np.sqrt(1 + 1 / reference_runs), sigma * np.sqrt(1 / 2 + 1 / reference_runs)
        provisional = first - reference < -t_quantiles(1 - keeprule.PROVISIONAL_RATE, df) * se1
        keep = provisional & ((first + confirm) / 2 - reference < -t_quantiles(1 - keeprule.CONFIRM_RATE, df) * se2)
        kept[:, i], runs[:, i] = keep, 1 + provisional + replicates * keep
        group = np.concatenate(
            [first[:, None], confirm[:, None], mean[:, None] + spread[:, None] * noise["replicates"][:, i]], 1
        )
        at = np.nonzero(keep)[0]
        squares[at, count[at]] = ((group - group.mean(1, keepdims=True)) ** 2).sum(1)[at]
        dfs[at, count[at]] = group.shape[1] - 1
        count += keep
        reference, reference_runs = (
            np.where(keep, group.mean(1), reference),
            np.where(keep, group.shape[1], reference_runs),
        )
        truth, tip_noise = np.where(keep, mean, truth), np.where(keep, spread, tip_noise)
        gained |= keep & (size > 0)
    return gain, kept, runs


def world_rates(factor, nights=WORLD_NIGHTS, ideas=WORLD_IDEAS, seed=SEED):
    """Null ideas kept, true gains kept per size, and runs per decided idea (setup not counted)."""
    gain, kept, runs = world_nights(factor, draws(nights, ideas, seed))
    out = {f"kept_{g}sigma": float(kept[gain == i].mean()) for i, g in enumerate(GAINS)}
    return {**out, "runs_per_idea": float(runs.mean()), "ideas": gain.size}


def decided_nights(factor, noise):
    """The same nights on the shipped rule: (kept, runs) per idea, each (nights, ideas)."""
    nights, ideas = noise["gain"].shape
    kept, runs = np.zeros((nights, ideas), bool), np.zeros((nights, ideas), int)
    for n in range(nights):
        night = Night(random.Random(0))
        night.truth["base"], night.spread = 0.0, {"base": SIGMA}
        night.draw = iter(noise["setup"][n]).__next__
        night.setup()
        gained = False
        for i in range(ideas):
            size, tip = GAINS[noise["gain"][n, i]], keeprule.tip_commit(night.rows)
            spread = night.spread[tip] * (factor if size and not gained else 1.0)
            night.draw = iter([noise["first"][n, i], noise["confirm"][n, i], *noise["replicates"][n, i]]).__next__
            before = len(night.rows)
            _, final = night.experiment(-size * night.spread[tip] / SIGMA, spread=spread)
            kept[n, i], runs[n, i] = final.verdict == "keep", len(night.rows) - before
            gained |= kept[n, i] and size > 0
    return kept, runs


@pytest.fixture(scope="module")
def worlds():
    return {name: world_rates(factor) for name, factor in WORLDS.items()}


def test_in_every_world_null_ideas_stay_under_the_guard(worlds):
    print(worlds)
    assert all(r["kept_0sigma"] <= keeprule.FALSE_KEEP_RATE for r in worlds.values())


def test_in_every_world_most_two_sigma_gains_are_kept_at_under_1_6_runs_per_idea(worlds):
    for rates in worlds.values():
        assert rates["kept_2sigma"] >= 0.40 and rates["runs_per_idea"] <= 1.6
        assert rates["kept_1sigma"] < rates["kept_2sigma"] < rates["kept_3sigma"]


def test_when_noise_falls_after_the_first_gain_sigma_follows_the_model(worlds):
    # a sigma pooled equally over setup's runs stays at the baseline's spread and kept a 2-sigma gain
    # about one time in seven here
    falling, constant = worlds["noise falls 5x after the first gain"], worlds["constant noise"]
    assert falling["kept_2sigma"] >= constant["kept_2sigma"] - 0.1


def test_the_vectorised_nights_reach_the_shipped_rules_verdicts():
    for factor in WORLDS.values():
        noise = draws(12, 10, SEED + 1)
        _, kept, runs = world_nights(factor, noise)
        decided_kept, decided_runs = decided_nights(factor, noise)
        assert kept.any() and (kept == decided_kept).all() and (runs == decided_runs).all()


def simplifications_kept(effect, nights=NIGHTS, experiments=EXPERIMENTS, seed=SEED):
    """The share of declared simplifications with a true `effect` (in sigma) that the rule keeps."""
    rng = random.Random(seed)
    kept = total = 0
    for _ in range(nights):
        night = Night(rng)
        night.setup()
        for _ in range(experiments):
            kept += night.experiment(effect, simplification=True)[1].verdict == "keep"
            total += 1
    return kept / total


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


def test_simplifications_without_effect_are_kept_and_real_regressions_are_not():
    # a simplification that costs nothing is kept most of the time; one that costs twice the bound
    # (3 sigma) almost never
    assert keeprule.SIMPLIFICATION_BOUND * 2 <= 3.0
    # (a chain of them leaves sigma one degree of freedom per keep: about 60% are kept, 77% with two replicates)
    assert simplifications_kept(0.0, nights=NIGHTS // 2) >= 0.5
    assert simplifications_kept(3.0, nights=NIGHTS // 2) <= 0.05


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
    text = outcomes.explain()
    assert f"{keeprule.SETUP_REPLICATES} replicates" in text
    assert f"{keeprule.SIMPLIFICATION_BOUND:g} sigma" in text


if __name__ == "__main__":
    print("| world | null ideas kept | 1 sigma kept | 2 sigma kept | 3 sigma kept | runs per decided idea |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, factor in WORLDS.items():
        r = world_rates(factor)
        cells = [f"{r[f'kept_{g}sigma']:.1%}" for g in GAINS] + [f"{r['runs_per_idea']:.2f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for effect in (0.0, 3.0):
        print(f"a simplification {effect:g} sigma worse: kept {simplifications_kept(effect):.3f}")
    for guarded in (False, True):
        value = fishing(guarded)
        print(
            f"null idea tried 5 times, {'guarded' if guarded else 'blind':7}    kept {value['kept']:.3f}  n={value['ideas']}"
        )
    value = ratchet()
    print(
        f"{EXPERIMENTS} simplifications each 1 sigma worse: tip drift mean {value['mean']:.2f}, p95 {value['p95']:.2f} sigma"
    )
