"""`python tools/rehearsal.py`: the CPU rehearsal's size, and settings that survive a fresh shell."""

import re

from harness import REPO, make_train_copy, run_script

RUN = "timeout -k 30 600 python train.py > run.log 2>&1"  # program.md's run command


def test_rehearsal_prints_its_settings_in_front_of_the_commands_not_as_exports(tmp_path):
    """A shell tool that starts a fresh shell per command loses an `export`: every setting the tool
    names sits in front of the command it is for, the data included where the submodule's is missing."""
    make_train_copy(tmp_path)
    proc = run_script(REPO / "tools" / "rehearsal.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "export AR_" not in proc.stdout
    assert re.search(r"^DIM = 128  # CPU rehearsal$", (tmp_path / "train.py").read_text(), flags=re.M)
    baseline = next(line for line in proc.stdout.splitlines() if line.startswith("and the baseline: "))
    assert baseline.endswith(f"AR_STEPS=50 AR_DATA=<a text file of a few MB> {RUN}")
    assert "AR_DATA=<a text file of a few MB> python prepare.py" in proc.stdout
    assert "AR_DATA=<a text file of a few MB> python tools/machine.py" in proc.stdout
    assert "every run command decide prints" in proc.stdout


def test_rehearsal_leaves_the_data_out_when_the_submodules_enwik8_is_there(tmp_path):
    make_train_copy(tmp_path)
    (tmp_path / "x-transformers" / "data").mkdir(parents=True)
    (tmp_path / "x-transformers" / "data" / "enwik8.gz").write_bytes(b"")
    proc = run_script(REPO / "tools" / "rehearsal.py", cwd=tmp_path)
    assert "AR_DATA" not in proc.stdout
    assert f"and the baseline: AR_STEPS=50 {RUN}" in proc.stdout
