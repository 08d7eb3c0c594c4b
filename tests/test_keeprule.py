"""The keep rule (labbook.keeprule) as a pure function, and `analysis.py decide` / `record` on it."""

import statistics

import pytest
from fixtures_results import (  # noqa: F401  (fake_journal: an autouse fixture)
    commit_change,
    data_lines,
    fake_journal,
    git,
    head,
    make_repo,
    write_log,
)
from harness import PROGRAM

from labbook import cli, keeprule, ledger, outcomes, recording, sources, stepwork
from labbook.keeprule import Candidate, decide

S = 0.002  # sigma of the generated rows


def row(commit, value, status, kind, seed=42, line=None, description="x", tps="1000000"):
    extra = {"seed": str(seed), "kind": kind, "tokens_per_sec": tps}
    return ledger.Row(line or 0, commit, value, 2.0, status, description, extra, kind)


def setup_rows(base=1.3, spread=(0.0, S, -S, S / 2, -S / 2)):
    rows = [row("base", base + spread[0], "keep", "baseline")]
    rows += [row("base", base + d, "keep", "replicate", seed=i) for i, d in enumerate(spread[1:], start=1)]
    return rows


def test_the_syntax_tree_size_ignores_comments_and_formatting_but_counts_removed_code():
    source = "x = 1\nif x:\n    y = 2\n"
    formatted = "# a comment\nx = (\n    1\n)\n\n\nif x:\n    y = 2  # note\n"
    assert sources.statement_count(formatted) == sources.statement_count(source)
    assert sources.statement_count("x = 1\n") < sources.statement_count(source)
    call = "f(a, qk_norm=True, flash=True)\n"
    assert sources.statement_count("f(a, flash=True)\n") < sources.statement_count(call)  # a removed keyword


def test_t_quantiles_match_the_tables():
    assert keeprule.t_quantile(0.95, 4) == pytest.approx(2.1318, abs=1e-3)
    assert keeprule.t_quantile(0.975, 2) == pytest.approx(4.3027, abs=1e-3)
    assert keeprule.t_quantile(0.85, 10) == pytest.approx(1.0931, abs=1e-3)


def test_sigma_pools_within_commits_and_the_setup_fades_behind_the_tip():
    rows = setup_rows()
    sigma, df = keeprule.pooled_sigma(rows)
    assert df == keeprule.SETUP_REPLICATES == 4
    # a much better later commit, kept: its own group (first run, confirm, replicate), no inflation
    rows += [row("good", 1.25 - S, "provisional", "experiment"), row("good", 1.25, "keep", "confirm", seed=1)]
    rows += [row("good", 1.25 + S, "keep", "replicate", seed=2)]
    sigma2, df2 = keeprule.pooled_sigma(rows)
    assert sigma2 < 2 * S and df < df2 < df + 2  # 2 df of its own, the setup's 4 at weight NOISE_FADE
    # a discarded experiment's first run was selected and its lone confirmation has no spread: neither counts
    rows += [row("miss", 1.2, "provisional", "experiment"), row("miss", 1.4, "discard", "confirm", seed=4)]
    assert keeprule.pooled_sigma(rows) == (sigma2, df2)


def test_the_reference_is_the_tips_mean_and_a_first_run_only_earns_a_confirmation():
    rows = setup_rows()
    first = decide(rows, Candidate("exp1", 1.3 - 4 * S, "lr 3e-3", seed=42))
    assert first.verdict == "rerun" and first.status == "provisional" and first.kind == "experiment"
    # the confirmation's seed is one no row has used: it shares no luck with the reference's runs
    assert first.reference == pytest.approx(1.3) and first.reference_runs == 5 and first.next_seed == 5
    assert first.commands[0] == "AR_SEED=5 timeout -k 30 600 python train.py > run.log 2>&1"
    assert first.commands[1] == 'python analysis.py record --description "lr 3e-3"'
    rows.append(row("exp1", 1.3 - 4 * S, "provisional", "experiment"))
    confirm = decide(rows, Candidate("exp1", 1.3 - 3 * S, "lr 3e-3", seed=1))
    assert confirm.verdict == "keep" and confirm.kind == "confirm" and confirm.runs == 2
    assert confirm.mean == pytest.approx(1.3 - 3.5 * S)  # the decision's mean, not the lucky run
    assert confirm.next_seed == 5 and "noise:" in confirm.commands[1]
    lucky = decide(rows, Candidate("exp1", 1.3 + 2 * S, "lr 3e-3", seed=1))
    assert lucky.verdict == "discard" and lucky.commands == [keeprule.RESET]
    worse = decide(setup_rows(), Candidate("exp2", 1.3 + S, "depth 12"))
    assert worse.verdict == "discard" and worse.commands == ["git reset --hard HEAD~1"]


def test_a_regression_is_never_kept_as_a_simplification():
    rows = setup_rows()
    regression = Candidate("simp", 1.3 + 1.89, "remove qk norm", simplification=True, statements=90)
    verdict = decide(rows, regression, reference_statements=100)
    assert verdict.verdict == "discard" and verdict.threshold == pytest.approx(keeprule.SIMPLIFICATION_BOUND * S, 0.5)
    free = decide(rows, Candidate("simp", 1.3 + S / 2, "remove qk norm", simplification=True, statements=90), None, 100)
    assert free.verdict == "rerun" and free.kind == "simplification"
    not_simpler = decide(rows, Candidate("simp", 1.3 + S / 2, "tidy", simplification=True, statements=120), None, 100)
    assert not_simpler.verdict == "discard" and not_simpler.kind == "experiment" and "not simpler" in not_simpler.reason


def test_simplifications_are_listed_apart_from_improvements():
    rows = setup_rows()
    rows += [row("simp", 1.301, "discard", "simplification"), row("simp", 1.3015, "keep", "confirm", seed=1)]
    rows += [row("simp", 1.301, "keep", "replicate", seed=2), row("simp", 1.302, "keep", "replicate", seed=3)]
    rows += [row("impr", 1.29, "discard", "experiment"), row("impr", 1.292, "keep", "confirm", seed=1)]
    rows += [row("noop", 1.2905, "discard", "experiment")]  # beat the reference, by a quarter of a standard error
    rows += [row("miss", 1.285, "provisional", "experiment"), row("miss", 1.289, "discard", "confirm", seed=4)]
    assert [e["commit"] for e in outcomes.simplifications(rows)] == ["simp"]
    assert [e["commit"] for e in outcomes.improvements(rows)] == ["impr"]
    assert outcomes.simplifications(rows)[0]["delta"] > 0
    assert [e["commit"] for e in outcomes.near_misses(rows)] == ["miss"]
    assert outcomes.near_misses(rows)[0]["margin"] >= keeprule.NEAR_MISS_SE


def test_an_experiment_before_setup_is_finished_is_refused():
    rows = setup_rows()[:3]
    with pytest.raises(keeprule.NotReady, match="replicates"):
        decide(rows, Candidate("exp1", 1.2))


def test_explain_is_built_from_the_constants(monkeypatch):
    assert "4 replicates" in outcomes.explain() and "85%" in outcomes.explain()
    monkeypatch.setattr(keeprule, "SETUP_REPLICATES", 6)
    monkeypatch.setattr(keeprule, "SIMPLIFICATION_BOUND", 0.5)
    assert "6 replicates with AR_SEED=1..6" in outcomes.explain() and "0.5 sigma" in outcomes.explain()


# The command line


@pytest.fixture
def repo(tmp_path, monkeypatch):
    path = make_repo(tmp_path / "repo")
    monkeypatch.chdir(path)
    monkeypatch.delenv("AR_WORKER", raising=False)
    return path


def main(capsys, *args):
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def rows_of(repo):
    lines = (repo / "results.tsv").read_text().splitlines()
    return [dict(zip(lines[0].split("\t"), line.split("\t"))) for line in lines[1:]]


def test_setup_and_a_confirmed_keep_through_decide_and_record(repo, capsys):
    base = head(repo)
    write_log(repo, base, val_bpc=1.3)
    code, out, _ = main(capsys, "decide")
    assert code == 0 and out.splitlines()[0] == "keep" and "AR_SEED=1 timeout -k 30 600 python train.py" in out
    assert main(capsys, "record", "--description", "baseline")[0] == 0
    for seed, value in enumerate([1.302, 1.298, 1.301, 1.299], start=1):
        write_log(repo, base, val_bpc=value, seed=seed)
        code, out, _ = main(capsys, "record", "--description", f"seed {seed}")
        assert code == 0 and "keep" in out
    assert [r["kind"] for r in rows_of(repo)] == ["baseline"] + ["replicate"] * 4
    assert all(r["description"].startswith("noise:") for r in rows_of(repo)[1:])
    exp = commit_change(repo, lr=0.003, message="lr 3e-3")
    write_log(repo, exp, val_bpc=1.290)
    code, out, _ = main(capsys, "decide")
    assert out.splitlines()[0] == "rerun" and 'record --description "lr 3e-3"' in out
    main(capsys, "record", "--description", "lr 3e-3")
    write_log(repo, exp, val_bpc=1.291, seed=5)  # the seed the rerun named: no run has used it
    code, out, _ = main(capsys, "record", "--description", "lr 3e-3")
    assert code == 0 and "AR_SEED=6 timeout -k 30 600 python train.py" in out and "confirmed improvement" in out
    last = rows_of(repo)[-1]
    assert last["status"] == "keep" and last["kind"] == "confirm"
    assert "mean 1.290500 of 2" in last["note"]
    code, out, _ = main(capsys, "decide", "--explain")
    assert out.strip() == outcomes.explain()


def test_status_is_the_persons_override_and_is_noted(repo, capsys):
    base = head(repo)
    write_log(repo, base, val_bpc=1.3)
    main(capsys, "record", "--description", "baseline")
    write_log(repo, base, val_bpc=1.301, seed=1)
    main(capsys, "record", "--status", "discard", "--description", "noise: seed 1")
    row = rows_of(repo)[-1]
    assert row["status"] == "discard" and row["kind"] == "replicate" and "override" in row["note"]
    assert len(data_lines(repo / "results.tsv")) == 2


def test_the_decision_reads_the_value_through_one_seam(repo, capsys, monkeypatch):
    base = head(repo)
    write_log(repo, base, val_bpc=1.3)
    monkeypatch.setattr(recording, "candidate_value", lambda tsv, log_path: None)
    code, out, _ = main(capsys, "decide")
    assert out.splitlines()[0] == "crash"


@pytest.mark.parametrize(
    "crash, amend",
    [
        (None, False),  # no crash line: killed with SIGKILL
        ("out of memory (peak 7,900 MB, 85.1M parameters)", False),
        ("loss is nan at step 12", False),
        ("the model is not causal: later bytes swapped (by 0.31)", False),
        ("NameError: name 'LRR' is not defined", True),
        ("TypeError: Decoder.__init__() got an unexpected keyword argument 'rotary_pos_embb'", True),
    ],
)
def test_a_crash_offers_the_amend_only_when_the_code_itself_is_wrong(crash, amend):
    verdict = decide(setup_rows(), Candidate("c1", None, "idea", crash=crash))
    assert verdict.verdict == "crash" and verdict.commands[0].startswith(keeprule.RESET)
    assert ("git commit -a --amend --no-edit" in verdict.commands[0]) == amend
    assert ("killed" in verdict.reason) == (crash is None) and (crash or "") in verdict.reason
    assert "runs=" not in verdict.text() and "df=" not in verdict.text()  # a crash has no numbers to show


def test_the_last_replicate_reports_the_reference_and_sigma_it_leaves():
    rows = setup_rows()[:-1]  # the baseline and 3 replicates: this run is the 4th
    verdict = decide(rows, Candidate("base", 1.3 - S / 2, "", explicit=False, seed=4))
    assert verdict.verdict == "keep" and verdict.reference_runs == 5 and verdict.reference_commit == "base"
    values = [r.val_bpc for r in setup_rows()]
    assert verdict.reference == pytest.approx(sum(values) / 5)
    assert verdict.df == 4 and verdict.sigma == pytest.approx(keeprule.pooled_sigma(setup_rows())[0])
    assert "reference_runs=5" in verdict.text() and "df=4" in verdict.text()


def test_decide_after_record_says_the_run_is_recorded_and_does_not_count_it_again(repo, capsys):
    base = head(repo)
    write_log(repo, base, val_bpc=1.3)
    main(capsys, "record", "--description", "baseline")
    write_log(repo, base, val_bpc=1.302, seed=1)
    code, recorded, _ = main(capsys, "record", "--description", "noise: seed 1")
    code, out, _ = main(capsys, "decide")
    assert code == 0 and out.splitlines()[0] == "keep"
    assert "replicate 1 of 4" in out and "runs=2" in out and "already recorded: line 3" in out
    after = out.split("next:\n")[1].splitlines()
    assert after[0].strip().startswith("AR_SEED=2 timeout")  # no record command for this run: the next run first
    assert len(rows_of(repo)) == 2


def test_a_crashed_replicate_is_labelled_a_replicate_of_the_tip_and_does_not_count():
    rows = setup_rows()[:3]  # the baseline and seeds 1 and 2
    verdict = decide(rows, Candidate("base", None, "machine facts", explicit=False, crash="loss is nan at step 12"))
    assert verdict.kind == "replicate" and verdict.status == "crash"
    assert verdict.record_command == 'python analysis.py record --description "noise: base, seed 3"'
    rows.append(row("base", 0.0, "crash", "replicate", seed=3))
    again = decide(rows, Candidate("base", 1.3, "", explicit=False, seed=3))
    assert "replicate 3 of 4" in again.reason


def test_the_setup_guard_names_the_seed_that_is_next():
    with pytest.raises(keeprule.NotReady, match="AR_SEED=3 timeout"):
        decide(setup_rows()[:3], Candidate("exp1", 1.2))


def test_a_crash_of_a_new_commit_before_setup_is_complete_is_not_recorded_as_an_experiment():
    with pytest.raises(keeprule.NotReady, match="setup is not complete"):
        decide(setup_rows()[:3], Candidate("exp1", None, "lr 3e-3", crash="NameError: name 'LRR' is not defined"))


def test_a_comment_only_commit_of_a_tried_idea_is_refused_naming_the_commit_that_ran_it(repo, capsys):
    base = head(repo)
    for seed, value in enumerate([1.3, 1.302, 1.298, 1.301, 1.299]):
        write_log(repo, base, val_bpc=value, **({"seed": seed} if seed else {}))
        main(capsys, "record", "--description", "baseline" if seed == 0 else f"seed {seed}")
    idea = commit_change(repo, lr=0.003, message="lr 3e-3")
    write_log(repo, idea, val_bpc=1.301)
    assert main(capsys, "record", "--description", "lr 3e-3")[0] == 0
    (repo / "train.py").write_text((repo / "train.py").read_text() + "# lr 3e-3, one more time\n")
    retry = commit_change(repo, message="lr 3e-3 again")
    write_log(repo, retry, val_bpc=1.290)
    code, out, err = main(capsys, "decide")
    assert code == 2 and f"the same program as at {idea}" in err and "line 7, discard: lr 3e-3" in err
    assert main(capsys, "record", "--description", "lr 3e-3 again")[0] == 2 and len(rows_of(repo)) == 6


def test_the_program_key_ignores_comments_docstrings_and_formatting_only():
    source = '"""A model."""\nLR = 0.001\n\n\ndef f(x):\n    return x * LR\n'
    same = '"""Another docstring."""\n# a note\nLR = 0.001  # lr\n\ndef f(x):\n    """Scale."""\n    return (x * LR)\n'
    assert sources.program_key(same) == sources.program_key(source)
    assert sources.program_key(source.replace("0.001", "0.003")) != sources.program_key(source)


def kept_simplification(commit, value, seed):
    return [row(commit, value, "discard", "simplification", seed=42), row(commit, value, "keep", "confirm", seed=seed)]


def test_simplifications_since_the_last_real_keep_cost_at_most_the_bound_together():
    rows = setup_rows()
    bound = keeprule.SIMPLIFICATION_BOUND * keeprule.pooled_sigma(rows)[0]
    lone = decide(rows, Candidate("s2", 1.3 + 0.8 * S, "drop bias", simplification=True, statements=90), None, 100)
    assert lone.verdict == "rerun" and lone.threshold == pytest.approx(bound)  # alone, within the bound
    rows += kept_simplification("s1", 1.3 + 0.8 * S, 5)  # a first simplification spent 0.8 sigma of it
    chained = decide(rows, Candidate("s2", 1.3 + 1.6 * S, "drop bias", simplification=True, statements=90), None, 100)
    assert chained.verdict == "discard" and chained.threshold == pytest.approx(bound - 0.8 * S)
    rows += [row("impr", 1.2895, "provisional", "experiment"), row("impr", 1.2905, "keep", "confirm", seed=6)]
    fresh = decide(rows, Candidate("s3", 1.29 + 0.8 * S, "drop bias", simplification=True, statements=90), None, 100)
    assert fresh.verdict == "rerun" and fresh.threshold == pytest.approx(fresh.sigma * keeprule.SIMPLIFICATION_BOUND)


def test_a_promoted_cherry_pick_of_a_workers_screened_commit_is_judged_not_refused():
    rows = setup_rows() + [row("w1", 1.3 - 3 * S, "discard", "experiment", description="[gpu1] lr 3e-3")]
    programs = {"base": "p0", "w1": "p1"}  # the worker's row was recorded with --status: no rule note
    promoted = decide(rows, Candidate("pick", 1.3 - 3 * S, "lr 3e-3", program="p1"), programs=programs)
    assert promoted.verdict == "rerun"
    rows[-1].extra["note"] = "rule: discard mean 1.294000 of 1 vs 1.300000"  # had the rule judged it
    with pytest.raises(keeprule.SameProgram, match="same program as at w1"):
        decide(rows, Candidate("pick", 1.3 - 3 * S, "lr 3e-3", program="p1"), programs=programs)


# Crashes the environment caused: never charged to the idea


ENVIRONMENT_CRASHES = [
    "this run is not measured like the effort's runs: AR_STEPS is unset (the effort's runs: AR_STEPS=50): export AR_STEPS=50, as at setup (a fresh shell loses exports)",
    "AR_DATA=/data/corpus.txt does not exist",
    "could not download https://mattmahoney.net/dc/enwik8.zip: <urlopen error [Errno -3] Temporary failure in name resolution>. Get enwik8 ...",
    "/root/.cache/autoresearch-xt/enwik8 is not enwik8: 1,000 bytes with md5 ab, expected 100,000,000 bytes with md5 a1. It is truncated",
    "OSError: [Errno 28] No space left on device",
    "interrupted (SIGTERM) after 41 s",
    "interrupted (SIGINT)",  # Ctrl-C during the imports: no seconds
]


@pytest.mark.parametrize("crash", ENVIRONMENT_CRASHES, ids=lambda c: c[:30])
def test_an_environment_crash_is_run_again_and_never_reset(crash):
    verdict = decide(setup_rows(), Candidate("c1", None, "idea", crash=crash))
    assert verdict.verdict == "crash" and verdict.kind == keeprule.ENVIRONMENT and verdict.status == "crash"
    assert "not the idea's crash" in verdict.reason and crash in verdict.reason
    assert not any(keeprule.RESET in c for c in verdict.commands)
    assert verdict.commands[-1] == "timeout -k 30 600 python train.py > run.log 2>&1"  # the same commit, its own seed


def test_program_mds_timeout_is_named_and_points_at_a_smaller_rehearsal():
    program = PROGRAM.read_text()
    assert f"timeout -k 30 {keeprule.PROGRAM_TIMEOUT} python train.py > run.log 2>&1" in program
    verdict = decide([], Candidate("base", None, "", explicit=False, crash="interrupted (SIGTERM) after 600 s"))
    assert verdict.kind == keeprule.ENVIRONMENT and "program.md's 600 s timeout ended the run" in verdict.reason
    assert verdict.record_command.endswith('--description "baseline"')
    assert "AR_STEPS" in verdict.commands[0] and "docs/rehearsal.md" in verdict.commands[0]
    assert keeprule.crash_kind("interrupted (SIGTERM) after 37 s") == "interrupted"  # a kill, not the timeout


def test_a_confirmation_stopped_by_a_signal_runs_again_with_the_seed_the_rule_named():
    rows = setup_rows() + [row("c1", 1.2, "discard", "experiment", seed=1001, description="idea")]
    rows[-1].extra["note"] = "rule: rerun"
    verdict = decide(rows, Candidate("c1", None, "idea", crash="interrupted (SIGTERM) after 12 s"))
    assert verdict.kind == keeprule.ENVIRONMENT and verdict.next_seed == 5
    assert verdict.commands[-1].startswith("AR_SEED=5 timeout -k 30 600 python train.py")


def test_a_second_signal_on_the_same_commit_is_charged_to_it():
    stopped = row(
        "c1", 0.0, "crash", keeprule.ENVIRONMENT, description="idea (crash: interrupted (SIGTERM) after 600 s)"
    )
    verdict = decide(setup_rows() + [stopped], Candidate("c1", None, "idea", crash="interrupted (SIGTERM) after 601 s"))
    assert verdict.kind == "experiment" and "a second time" in verdict.reason
    assert verdict.commands[0].startswith(keeprule.RESET)


def test_environment_rows_are_neither_a_crash_streak_nor_an_experiment_of_the_history():
    idea = row("c1", 0.0, "crash", "experiment", description="idea (crash: loss is nan at step 3)")
    disk = row("c2", 0.0, "crash", keeprule.ENVIRONMENT, description="wider (crash: OSError: [Errno 28] No space left)")
    rows = setup_rows() + [idea, disk, row("c2", 1.2, "keep", "experiment", description="wider")]
    assert outcomes.crash_streak(rows[:-1]) == 1
    kept = outcomes.improvements(rows)
    assert [(e["commit"], e["kind"], e["runs"]) for e in kept] == [("c2", "experiment", 1)]


# The CPU rehearsal's own rows: a barely trained baseline that spreads 2.17 to 2.33, then a kept
# commit whose runs agree to about 0.01


def rehearsal_rows():
    base = [2.231146, 2.200719, 2.272993, 2.173603, 2.328679]
    rows = [row("base", base[0], "keep", "baseline")]
    rows += [row("base", v, "keep", "replicate", seed=i) for i, v in enumerate(base[1:], start=1)]
    shift = [("provisional", "experiment"), ("keep", "confirm"), ("keep", "replicate"), ("keep", "replicate")]
    values = [1.608429, 1.629127, 1.608315, 1.622110]
    rows += [
        row("shift", v, status, kind, seed=42 if i == 0 else i + 4)
        for i, (v, (status, kind)) in enumerate(zip(values, shift))
    ]
    return rows


def test_on_the_rehearsals_rows_a_real_gain_is_sent_to_a_confirmation_not_discarded():
    rows = rehearsal_rows()
    verdict = decide(rows, Candidate("lr4e3", 1.562553, "LR 4e-3", seed=42))
    assert verdict.verdict == "rerun" and verdict.status == keeprule.PROVISIONAL
    # sigma is the kept commit's own spread: the baseline's (33 times its variance) measured another model
    assert verdict.sigma == pytest.approx(statistics.stdev([1.608429, 1.629127, 1.608315, 1.622110]))


def test_a_first_run_sent_to_a_confirmation_counts_with_its_commits_decision():
    rows = rehearsal_rows()
    rows.append(row("lr4e3", 1.562553, "provisional", "experiment"))
    assert outcomes.run_outcomes(rows)[-1] == outcomes.PENDING
    assert outcomes.run_outcomes(rows)[5] == "keep"  # shift's first run, kept by its confirmation
    assert outcomes.run_outcomes(rows + [row("lr4e3", 1.63, "discard", "confirm", seed=9)])[-2] == "discard"


def step_budget_log(repo, commit, value, seed=None):
    """A fake run.log of a CPU rehearsal's run: the budget is AR_STEPS', not the clock's."""
    path = write_log(repo, commit, val_bpc=value, seed=seed)
    path.write_text(path.read_text().replace("300s", "50steps"))


def test_under_a_step_budget_decide_says_it_cannot_rank_an_idea_that_changes_a_steps_work(repo, capsys):
    """A bigger batch wins under AR_STEPS for free (every run gets the same steps, whatever a step
    costs): decide's reason line says the rehearsal cannot rank it, naming the knob."""
    (repo / "train.py").write_text((repo / "train.py").read_text() + "BATCH_SIZE = 8\n")
    git(repo, "commit", "-qam", "rehearsal size")
    base = head(repo)
    for seed, value in enumerate([1.3, 1.302, 1.298, 1.301, 1.299]):
        step_budget_log(repo, base, value, seed=seed or None)
        assert main(capsys, "record", "--description", "baseline" if not seed else f"seed {seed}")[0] == 0
    (repo / "train.py").write_text((repo / "train.py").read_text().replace("BATCH_SIZE = 8", "BATCH_SIZE = 16"))
    git(repo, "commit", "-qam", "twice the batch")
    step_budget_log(repo, head(repo), 1.25)
    code, out, _ = main(capsys, "decide")
    reason = out.splitlines()[1]
    assert code == 0 and out.splitlines()[0] == "rerun"
    assert "It changes the work per step (BATCH_SIZE 8 -> 16): under a step budget (50steps)" in reason
    assert "this rehearsal cannot rank it" in reason


def test_an_idea_that_keeps_a_steps_work_gets_no_such_note():
    summary = {"micro_batch": "4", "num_params_M": "0.07"}
    source = "DIM = 32\nBATCH_SIZE = 4\nLR = 2e-3\n"
    assert stepwork.step_work_changes(source, source.replace("2e-3", "3e-3"), summary, summary) == []
    # the summary block prints num_params_M rounded, the journal whole: the same model, the same count
    assert stepwork.step_work_changes(source, source, {"num_params_M": 0.593026}, {"num_params_M": "0.6"}) == []
    assert stepwork.step_work_changes(source, source, {"num_params_M": 0.593026}, {"num_params_M": 0.560258}) == [
        "num_params_M 0.593026 -> 0.560258"
    ]
    wider = {**summary, "num_params_M": "0.2"}
    assert stepwork.step_work_changes(source, source.replace("DIM = 32", "DIM = 64"), summary, wider) == [
        "DIM 32 -> 64",
        "num_params_M 0.07 -> 0.2",
    ]
