"""README's test command in a checkout mid-night: the agent's branch has a shrunk train.py committed
and AGENTS.md rewritten, and the tests still build what they need from the files as shipped."""

import os
import shutil
import subprocess
import sys

from harness import AGENTS, PROGRAM, REPO, TRAIN, git_out, shipped_commit, shipped_path

# Checks that read train.py's defaults or AGENTS.md's sizing, each of which failed next to a CPU
# rehearsal (the sizing row, the micro-batch per card, the activations per sequence); the default
# TRAIN_SEQ_LEN (1025 bytes a window, not the rehearsal's 257) is the shipped train.py's, asserted below.
CHECKS = [
    "tests/test_machine.py::test_machine_command_fills_the_block_on_a_cpu_machine",
    "tests/test_simulated_card.py::test_each_card_fits_the_micro_batch_the_sizing_table_predicts[80]",
    "tests/test_simulated_card.py::test_agents_md_states_the_sizing_tables_per_sequence_figure",
    "tests/test_docs.py::test_agents_md_has_one_machine_block_that_tools_machine_py_can_fill",
    "tests/test_bench.py::test_default_copy_of_train_py_is_train_py_itself",
]
REWRITTEN_BLOCK = "| fact | value |\n| --- | --- |\n| CPU | this laptop |\n"


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def checkout_mid_night(root):
    """A copy of this checkout's tracked files as main, and a night on `autoresearch/rehearsal`:
    README's rehearsal size committed, the machine block rewritten and left uncommitted."""
    repo = root / "clone"
    shipped = {"train.py": TRAIN, "AGENTS.md": AGENTS, "program.md": PROGRAM}  # this checkout may be mid-night too
    for name in git_out("ls-files", "--cached", "--others", "--exclude-standard").splitlines():
        if (REPO / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(shipped.get(name, REPO / name), repo / name)
    for args in (["init", "-q", "-b", "main"], ["config", "user.email", "t@x.invalid"], ["config", "user.name", "T"]):
        git(repo, *args)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "as shipped")
    git(repo, "checkout", "-qb", "autoresearch/rehearsal")
    subprocess.run([sys.executable, "tools/rehearsal.py"], cwd=repo, check=True, capture_output=True)
    git(repo, "commit", "-qam", "CPU rehearsal size")
    agents = (repo / "AGENTS.md").read_text()
    head, rest = agents.split("<!-- BEGIN MACHINE", 1)
    block_end = rest.index("<!-- END MACHINE")
    (repo / "AGENTS.md").write_text(
        head + "<!-- BEGIN MACHINE" + rest[: rest.index("\n") + 1] + REWRITTEN_BLOCK + rest[block_end:]
    )
    (repo / "results.tsv").write_text("commit\tval_bpc\n1234567\t2.3\n")
    return repo


def test_the_tests_read_the_shipped_train_py_and_agents_md_on_an_efforts_branch(tmp_path):
    repo = checkout_mid_night(tmp_path)
    assert "# CPU rehearsal" in (repo / "train.py").read_text()
    fork = shipped_commit(repo)
    assert (
        fork == subprocess.run(["git", "-C", repo, "rev-parse", "main"], capture_output=True, text=True).stdout.strip()
    )
    assert shipped_path("train.py", repo).read_text() == TRAIN.read_text()
    assert "TRAIN_SEQ_LEN = MAX_SEQ_LEN" in shipped_path("train.py", repo).read_text()
    assert REWRITTEN_BLOCK not in shipped_path("AGENTS.md", repo).read_text()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AR_", "PYTEST_XDIST", "PYTEST_CURRENT"))}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", *CHECKS],
        cwd=repo,
        env=dict(env, WARM_PYTHON="0"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert f"{len(CHECKS)} passed" in proc.stdout
