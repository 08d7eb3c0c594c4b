"""A damaged results.tsv never loses a row and never takes the report down: malformed lines, a
missing header, wrong column counts, CRLF endings, a torn last line, many writers at once."""

import json
import subprocess
import sys
from collections import Counter

import pytest
from fixtures_results import (  # noqa: F401  (fake_journal: an autouse fixture)
    HEADER5,
    data_lines,
    fake_journal,
    head,
    make_repo,
    results_text,
    run_cli,
    write_log,
)
from harness import REPO

from labbook import cli, ledger

GOOD = [
    ("aaaaaaa", 1.500000, 2.0, "keep", "baseline"),
    ("bbbbbbb", 1.450000, 2.1, "keep", "SwiGLU"),
    ("ccccccc", 1.470000, 2.1, "discard", "dim 768"),
    ("ddddddd", 0.000000, 0.0, "crash", "depth 64"),
]


@pytest.fixture
def repo(tmp_path, monkeypatch):
    path = make_repo(tmp_path / "repo")
    monkeypatch.chdir(path)
    return path


def report(capsys, tsv):
    """`analysis.py --full`: every row, the totals, the unreadable lines."""
    assert cli.main(["--tsv", str(tsv), "--full"]) == 0
    return json.loads(capsys.readouterr().out)


def test_malformed_lines_are_reported_with_their_line_numbers_and_skipped(tmp_path, capsys):
    lines = results_text(GOOD[:2]).splitlines()
    lines[2:2] = [
        "garbage without tabs",  # line 3
        "eeeeeee\tnot-a-number\t2.0\tdiscard\tbad val",  # line 4
        "fffffff\t1.4\t2.0\tkept\tbad status",  # line 5
        "ggggggg\t1.4\t2.0",  # line 6: too few columns
        "hhhhhhh\t1.4\t2.0\tdiscard\tsix\tcolumns",  # line 7: more than the header's five
        "iiiiiii\tnan\t2.0\tdiscard\tnan",  # line 8
        "jjjjjjj\t0.000000\t0.0\tkeep\ta keep without a number",  # line 9
    ]
    path = tmp_path / "results.tsv"
    path.write_text("\n".join(lines) + "\n")
    result = report(capsys, path)
    assert [m["line"] for m in result["malformed"]] == [3, 4, 5, 6, 7, 8, 9]
    assert "3 columns" in result["malformed"][3]["reason"] and "6 columns" in result["malformed"][4]["reason"]
    assert result["totals"]["rows"] == 2 and [r["commit"] for r in result["rows"]] == ["aaaaaaa", "bbbbbbb"]
    assert cli.main(["--tsv", str(path), "--no-plots"]) == 0
    text = capsys.readouterr().out
    assert all(f"skipped line {n}:" in text for n in range(3, 10)) and "2 rows =" in text


def test_rows_with_fewer_provenance_columns_than_the_header_are_read_and_more_are_not(tmp_path, capsys):
    path = tmp_path / "results.tsv"
    header = "\t".join(ledger.BASE_COLUMNS + ledger.PROVENANCE_COLUMNS)  # an older layout: no crc
    too_many = "\t".join(["kkkkkkk", "1.4", "2.0", "discard", "x"] + ["p"] * (len(ledger.COLUMNS) - 4))
    path.write_text(f"{header}\naaaaaaa\t1.5\t2.0\tkeep\tbaseline\t1.5\n{too_many}\n")
    result = report(capsys, path)
    assert result["totals"]["rows"] == 1 and result["rows"][0]["reported_bpc"] == "1.5"
    assert [m["line"] for m in result["malformed"]] == [3]


def test_a_short_row_under_a_checksummed_header_is_unreadable(tmp_path, capsys):
    path = tmp_path / "results.tsv"
    path.write_text("\t".join(ledger.COLUMNS) + "\naaaaaaa\t1.5\t2.0\tkeep\tbaseline\n")
    result = report(capsys, path)
    assert result["totals"]["rows"] == 0 and "torn or hand-edited" in result["malformed"][0]["reason"]


def test_a_missing_header_still_reports_but_recording_refuses_and_says_how_to_fix(repo, capsys):
    path = repo / "results.tsv"
    original = results_text(GOOD, header=False).encode()
    path.write_bytes(original)
    result = report(capsys, path)
    assert result["header_missing"] and result["totals"]["rows"] == 4 and result["malformed"] == []
    assert cli.main([]) == 0
    assert "header line is missing" in capsys.readouterr().out

    write_log(repo, head(repo), val_bpc=1.44)
    proc = run_cli("record", "--status", "keep", "--description", "next", cwd=repo)
    assert proc.returncode != 0 and "fix-header" in proc.stderr and proc.stderr.count("\n") == 1
    assert path.read_bytes() == original


def test_crlf_line_endings_read_like_lf_and_appends_keep_every_row(repo, capsys):
    lf, crlf = repo / "lf.tsv", repo / "results.tsv"
    lf.write_text(results_text(GOOD))
    crlf.write_bytes(results_text(GOOD).replace("\n", "\r\n").encode())
    a, b = report(capsys, lf), report(capsys, crlf)
    assert b["malformed"] == [] and not b["header_missing"]
    assert {k: v for k, v in a.items() if k != "file"} == {k: v for k, v in b.items() if k != "file"}

    write_log(repo, head(repo), val_bpc=1.44)
    assert cli.main(["record", "--status", "keep", "--description", "appended"]) == 0
    capsys.readouterr()
    assert [r[4] for r in data_lines(crlf)] == [r[4] for r in GOOD] + ["appended"]
    assert report(capsys, crlf)["rows"][-1]["commit"] == head(repo)


def test_a_torn_last_line_is_reported_and_the_next_row_starts_on_a_line_of_its_own(repo, capsys):
    path = repo / "results.tsv"
    path.write_text(results_text(GOOD) + "eeeeeee\t1.43")  # a write cut short
    result = report(capsys, path)
    assert result["totals"]["rows"] == 4
    assert result["malformed"][0]["line"] == 6 and "cut short" in result["malformed"][0]["reason"]

    write_log(repo, head(repo), val_bpc=1.44)
    assert cli.main(["record", "--status", "keep", "--description", "after the tear"]) == 0
    capsys.readouterr()
    lines = path.read_text().splitlines()
    assert lines[5] == "eeeeeee\t1.43" and lines[6].split("\t")[4] == "after the tear"
    result = report(capsys, path)
    assert result["totals"]["rows"] == 5 and [m["line"] for m in result["malformed"]] == [6]


def test_a_last_row_without_its_newline_is_still_a_row(tmp_path, capsys):
    path = tmp_path / "results.tsv"
    path.write_text(results_text(GOOD).rstrip("\n"))
    result = report(capsys, path)
    assert result["totals"]["rows"] == 4 and result["malformed"] == []


# Each writer records its own runs (a run is recorded once: distinct run_ids); the journal is
# the log itself, since what is under test is the appending, not the score.
APPENDER = """
import sys
sys.path[:0] = [{repo!r}, {tests!r}]
import fixtures_results
from labbook import base, recording
recording.sealed_run = fixtures_results.log_as_sealed
commit = fixtures_results.head(".")
for i in range({rows}):  # `record`'s append, without the verdict (the rule would refuse a 200th baseline)
    log = fixtures_results.write_log(".", commit, val_bpc=1.44, name=f"run-{{sys.argv[1]}}-{{i}}.log")
    code = recording.record_run(base.default_tsv(), str(log), "discard", f"writer {{sys.argv[1]}} row {{i}}")
    assert code == 0, code
"""


def test_four_processes_appending_fifty_rows_each_lose_and_interleave_nothing(repo):
    script = APPENDER.format(repo=str(REPO), tests=str(REPO / "tests"), rows=50)
    writers = [
        subprocess.Popen([sys.executable, "-c", script, str(w)], cwd=repo, stdout=subprocess.DEVNULL) for w in range(4)
    ]
    assert [w.wait(timeout=240) for w in writers] == [0, 0, 0, 0]
    expected = {f"writer {w} row {i}" for w in range(4) for i in range(50)}
    for path in (repo / "results.tsv", repo / ".git" / "autoresearch" / "results.tsv"):
        text = path.read_text()
        assert text.startswith(HEADER5) and text.count("commit\tval_bpc") == 1 and text.endswith("\n")
        rows = data_lines(path)
        assert all(len(r) == len(ledger.COLUMNS) and r[:4] == [head(repo), "1.440000", "3.0", "discard"] for r in rows)
        counts = Counter(r[4] for r in rows)
        assert set(counts) == expected and set(counts.values()) == {1}
        assert ledger.read_results(path).malformed == []


def test_restore_keeps_identical_rows_as_often_as_they_were_recorded(repo, capsys):
    crash = ("aaaaaaa", 0.0, 0.0, "crash", "same crash twice")
    backup = repo / ".git" / "autoresearch" / "results.tsv"
    backup.parent.mkdir(parents=True)
    backup.write_text(results_text([GOOD[0], crash, crash]))
    (repo / "results.tsv").write_text(results_text([GOOD[0], crash, GOOD[1]]))
    assert cli.main(["restore"]) == 0
    merged = [r[4] for r in data_lines(repo / "results.tsv")]
    assert Counter(merged) == {"baseline": 1, crash[4]: 2, "SwiGLU": 1} and merged[0] == "baseline"
