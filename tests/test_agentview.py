"""`python analysis.py --json`: the agent's bounded view, and --full."""

import json
import random

import pytest
from fixtures_results import PREPARE_STUB, head, make_repo, prepare_hash_of, provenance_values

from labbook import agentview, cli, ledger


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A repository whose first commit is the baseline (prepare.py committed)."""
    return make_repo(tmp_path_factory.mktemp("agentview") / "repo")


def night_rows(base, n=150, seed=3):
    """A generated results.tsv text with sound provenance: setup on `base`, then experiments,
    confirmations, replicates, crashes (experiments' commits are gone, as after a reset)."""
    rng = random.Random(seed)
    lines = ["\t".join(ledger.COLUMNS)]

    def add(commit, value, status, kind, description, seed=42, tps=1_000_000):
        values = provenance_values(commit, value, status, description, kind, prepare_hash_of(PREPARE_STUB))
        values.update(seed=str(seed), tokens_per_sec=str(tps))
        lines.append(ledger.format_row(values, ledger.COLUMNS).rstrip("\n"))  # with its checksum

    add(base, 1.3, "keep", "baseline", "baseline")
    for s in range(1, 5):
        add(base, 1.3 + rng.gauss(0, 0.002), "keep", "replicate", f"noise: seed {s}", s, tps=1_300_000)
    i = 0
    while len(lines) <= n:
        i += 1
        commit = f"e{i:06d}"
        description = f"idea {i % 40}: " + "a long description of what changed " * 3
        if i % 13 == 0:
            add(commit, 0.0, "crash", "experiment", description + " (crash: out of memory)")
            continue
        add(commit, 1.3 + rng.gauss(0, 0.002), "discard", "experiment", description)
    return "\n".join(lines) + "\n"


def test_the_agent_json_stays_under_4kb_with_150_rows_and_has_what_the_agent_needs(repo, capsys):
    base = head(repo)
    tsv = repo / "results.tsv"
    tsv.write_text(night_rows(base))
    assert len(ledger.read_results(tsv).rows) >= 150
    assert cli.main(["--tsv", str(tsv), "--json"]) == 0
    out = capsys.readouterr().out
    assert len(out.encode()) < 4096
    view = json.loads(out)
    assert view["tip"]["commit"] == base and view["tip"]["runs"] == 5
    assert view["best"]["commit"] == base and view["sigma_df"] == 4 and view["flagged_rows"] == 0
    assert {"reference", "reference_se", "rerun_below", "keep_mean_of_2_below"} <= view["next"].keys()
    assert len(view["last_rows"]) == agentview.LAST_ROWS and len(view["near_misses"]) <= agentview.TOP_NEAR_MISSES
    assert view["tried"] and view["tried_left_out"] >= 0
    assert len(view["tried"]) == len(set(view["tried"]))  # deduplicated
    assert all(len(line) < agentview.DESCRIPTION_CHARS + 10 for line in view["tried"])
    assert view["experiments_since_keep"] > 100 and view["crashes_in_a_row"] == 0
    assert "test" not in out.replace("tested", "")  # no test-split number, ever
    assert view["machine_noise"] and base in view["machine_noise"][0]


def test_full_gives_the_rest_without_test_numbers(repo, capsys):
    tsv = repo / "results.tsv"
    tsv.write_text(night_rows(head(repo), 40))
    assert cli.main(["--tsv", str(tsv), "--full"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert len(full["rows"]) == len(ledger.read_results(tsv).rows)
    assert {"history", "improvements", "simplifications", "near_misses", "tried", "rule"} <= full.keys()
    assert "test_bpc" not in json.dumps(full)


def test_machine_noise_flags_runs_of_one_commit_whose_speed_differs_by_more_than_10_percent():
    def r(commit, tps):
        return ledger.Row(0, commit, 1.3, 2.0, "keep", "x", {"tokens_per_sec": str(tps)})

    assert agentview.machine_noise([r("a", 1000), r("a", 1080), r("b", 1000), r("b", 1200)]) == [
        "b: tokens/s 1000 to 1200 (+20%) over 2 runs of the same code: the machine's speed varied"
    ]


def test_tried_marks_a_first_run_sent_to_a_confirmation_apart_from_a_discard():
    def row(line, commit, value, status, kind, description, note=""):
        extra = {"seed": str(line), "kind": kind, "note": note}
        return ledger.Row(line, commit, value, 2.0, status, description, extra, kind)

    rows = [row(1, "base", 1.5, "keep", "baseline", "baseline")]
    rows += [row(n, "base", 1.5, "keep", "replicate", f"noise: base, seed {n}") for n in range(2, 6)]
    rows += [
        row(6, "c1", 1.4, "discard", "experiment", "lr 4e-3", note="rule: rerun mean 1.4 of 1 vs 1.5"),
        row(7, "c1", 1.41, "keep", "confirm", "lr 4e-3", note="rule: keep mean 1.405 of 2 vs 1.5"),
        row(8, "c2", 1.6, "discard", "experiment", "post_emb_norm", note="rule: discard mean 1.6 of 1 vs 1.405"),
    ]
    assert agentview.tried_digest(rows) == ["post_emb_norm [d]", "lr 4e-3 [rk]"]


def test_the_agents_near_misses_carry_their_margin_in_standard_errors_as_the_report_shows(tmp_path, capsys):
    from fixtures_results import write_night

    night = write_night(tmp_path / "lab")
    assert cli.main(["--tsv", str(night.tsv), "--no-plots"]) == 0
    text = capsys.readouterr().out
    assert cli.main(["--tsv", str(night.tsv), "--json"]) == 0
    misses = json.loads(capsys.readouterr().out)["near_misses"]
    assert [m["commit"] for m in misses] == [night.commits["exp4"]]
    assert f"({misses[0]['margin']:.1f} SE)" in text  # the number the report prints
