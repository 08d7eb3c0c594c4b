"""A ledger that cannot tear: per-row checksums, all-or-nothing writes, one `error:` line for bad inputs."""

import errno
import os

import pytest
from fixtures_results import head, make_repo, write_log

from labbook import base, cli, ledger


@pytest.fixture
def repo(tmp_path, monkeypatch):
    path = make_repo(tmp_path / "repo")
    monkeypatch.chdir(path)
    return path


def row_line(commit, status="crash", description="x"):
    values = dict(commit=commit, val_bpc="0.000000", memory_gb="0.0", status=status, description=description)
    return ledger.format_row(values, ledger.COLUMNS)


def test_a_torn_or_checksum_failing_row_is_skipped_reported_and_never_restored(repo, capsys):
    tsv = repo / "results.tsv"
    good, bad = row_line("aaaaaaa"), row_line("bbbbbbb").replace("\tx\t", "\ty\t")
    torn = row_line("ccccccc")[:30]
    text = "\t".join(ledger.COLUMNS) + "\n" + good + bad + torn
    tsv.write_text(text)
    ledger.backup_path(tsv).parent.mkdir(parents=True, exist_ok=True)
    ledger.backup_path(tsv).write_text(text)
    results = ledger.read_results(tsv)
    assert [r.commit for r in results.rows] == ["aaaaaaa"] and len(results.malformed) == 2
    assert cli.main(["--no-plots"]) == 0
    out = capsys.readouterr().out
    assert out.count("warning: skipped line") == 2 and "1 row =" in out
    tsv.unlink()
    assert cli.main(["restore"]) == 0
    assert [r.commit for r in ledger.read_results(tsv).rows] == ["aaaaaaa"]
    assert "bbbbbbb" not in tsv.read_text() and "ccccccc" not in tsv.read_text()


def test_a_full_disk_is_one_error_line_and_no_partial_row(repo, monkeypatch, capsys):
    write_log(repo, head(repo), crash="out of memory")
    assert cli.main(["record", "--status", "crash", "--description", "first"]) == 0
    tsv, backup = repo / "results.tsv", ledger.backup_path(repo / "results.tsv")
    before, before_backup = tsv.read_bytes(), backup.read_bytes()
    capsys.readouterr()

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(base.os, "write", full)
    code = cli.main(["record", "--status", "crash", "--description", "second"])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert code == 2 and err.count("error:") == 1 and "No space left" in err
    assert tsv.read_bytes() == before and backup.read_bytes() == before_backup
    assert not [p for p in tsv.parent.iterdir() if p.name.startswith(".results.tsv.")]


@pytest.mark.parametrize(
    "argv",
    [
        ["record", "--status", "keep", "--description", "x", "missing.log"],
        ["evaluate", "missing.pt"],
        ["evaluate", "missing.pt", "--split", "test"],
        ["audit", "--tsv", "missing.tsv"],
        ["restore", "--tsv", "missing.tsv"],
    ],
)
def test_a_missing_input_is_one_error_line_and_exit_2(repo, capsys, argv):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and err.startswith("error:")


def test_an_unreadable_results_file_is_one_error_line(repo, capsys):
    (repo / "results.tsv").mkdir()
    assert cli.main(["--no-plots"]) == 2
    assert capsys.readouterr().err.startswith("error:")
