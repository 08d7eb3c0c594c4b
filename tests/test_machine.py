"""`python tools/machine.py` fills the machine block of AGENTS.md (the logic is labbook/machine.py).

The sizing table is built around train.py's own size, whatever its DIM and DEPTH, and a
measurement that cannot be taken (no GPU, a crashed run) is one line, never a traceback.
"""

import re
import subprocess
import sys

import pytest
import torch
from harness import REPO, base_env, edit_constants

from labbook import machine

MACHINE = REPO / "tools" / "machine.py"
TINY = dict(DIM=32, DEPTH=2, HEADS=2, BATCH_SIZE=4, TRAIN_SEQ_LEN=128)
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def train_copy(folder, **values):
    path = folder / "train.py"
    path.write_text(edit_constants((REPO / "train.py").read_text(), **values))
    return path


def run_machine(tmp_path, *args, **env):
    cmd = [sys.executable, str(MACHINE), *map(str, args)]
    return subprocess.run(cmd, cwd=tmp_path, env=base_env(tmp_path, **env), capture_output=True, text=True, timeout=300)


def table_rows(lines):
    """{(dim, depth): cells} of the sizing table's body rows."""
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[(int(cells[0].split()[0]), int(cells[1]))] = cells
    return rows


@NO_CUDA
def test_machine_command_fills_the_block_on_a_cpu_machine(tmp_path):
    agents = tmp_path / "AGENTS.md"
    agents.write_text(f"# Agents\n\nbefore\n{machine.BEGIN}\nold text\n{machine.END}\nafter\n")
    proc = run_machine(tmp_path, "--agents", agents)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = agents.read_text()
    assert "old text" not in text
    assert text.startswith("# Agents\n\nbefore\n") and text.endswith("after\n")
    block = text.split(machine.BEGIN)[1].split(machine.END)[0]
    assert "CPU machine" in block and "python tools/machine.py" in block and "python prepare.py" in block
    assert re.search(r"\| 512 \(default\) \| 8 \| \d+\.\dM \|", block)
    # no GPU is one line, not a traceback
    assert proc.stderr.strip().splitlines() == ["no CUDA GPU: throughput not measured (facts and model sizes only)"]


def test_repository_agents_md_has_the_machine_block():
    text = (REPO / "AGENTS.md").read_text()
    assert text.count(machine.BEGIN) == 1 and text.count(machine.END) == 1


def test_sizing_table_turns_measured_throughput_into_tokens_per_budget():
    train = machine.load_train()
    rows = table_rows(machine.sizing_table(train, {"tokens_per_sec": "1000000"}))
    default = rows[(train.DIM, train.DEPTH)]
    assert default[0] == f"{train.DIM} (default)"
    assert default[4] == "1,000,000"  # train.py's own rate comes back unchanged
    assert default[5] == f"{1_000_000 * machine.prepare.TIME_BUDGET / 1e6:,.0f}M"
    # a bigger model at the same FLOP rate sees proportionally fewer tokens
    bigger = rows[(2 * train.DIM, train.DEPTH)]
    assert float(bigger[4].replace(",", "")) < 1_000_000 * 0.5


def test_sizing_works_for_a_size_outside_the_old_table(tmp_path):
    """DIM=96, DEPTH=3: its parameters come from building that model, and the table has its neighbours."""
    path = train_copy(tmp_path, DIM=96, DEPTH=3)
    train = machine.load_train(path)
    with torch.device("meta"):
        expected = sum(p.numel() for p in train.build_model().parameters())
    rows = table_rows(machine.sizing_table(train, None))
    assert rows[(96, 3)][0] == "96 (default)" and rows[(96, 3)][2] == f"{expected / 1e6:.1f}M"
    assert {48, 72, 144, 192} <= {dim for dim, _ in rows} and {2, 4} <= {depth for _, depth in rows}
    assert [c[0] for c in rows.values()].count("96 (default)") == 1
    proc = run_machine(tmp_path, "--train", path, "--print", "--no-measure")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"| 96 (default) | 3 | {expected / 1e6:.1f}M |" in proc.stdout


def test_a_crashed_measurement_is_one_line_and_the_block_says_so(tmp_path, corpus):
    path = train_copy(tmp_path, **{**TINY, "TRAIN_SEQ_LEN": 0})  # the harness refuses it: a crash line
    proc = run_machine(tmp_path, "--train", path, "--print", "--cpu", "--seconds", 1, AR_DATA=corpus)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    failures = [line for line in proc.stderr.splitlines() if line.startswith("throughput not measured:")]
    assert len(failures) == 1 and "train.py exited with code 2: seq_len=0" in failures[0], proc.stderr[-2000:]
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        "measuring train.py for 1 s of training...",
        failures[0],
    ]
    assert "The throughput run failed (" in proc.stdout and "| 32 (default) | 2 |" in proc.stdout


def test_a_train_py_that_does_not_build_is_one_line(tmp_path):
    path = train_copy(tmp_path, DIM="not a width")
    proc = run_machine(tmp_path, "--train", path, "--print", "--no-measure")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith(f"cannot size {path}:")


def test_missing_block_is_reported_with_the_lines_to_add(tmp_path):
    agents = tmp_path / "AGENTS.md"
    agents.write_text("# no block here\n")
    with pytest.raises(SystemExit, match="BEGIN MACHINE"):
        machine.write_block(agents, "x")


def test_block_reports_a_measured_run_from_its_own_summary(tmp_path, corpus):
    """A tiny train.py measured on the CPU (--cpu): the block carries its summary's figures."""
    path = train_copy(tmp_path, **TINY)
    proc = run_machine(
        tmp_path, "--train", path, "--print", "--cpu", "--seconds", 2, AR_DATA=corpus, AR_EVAL_BYTES=8192
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    block = proc.stdout
    assert re.search(r"\| default train\.py \| [\d,]+ tokens/s, ", block), block
    assert "AR_TIME_BUDGET=2" in block and "not measured" not in block
    assert "| 32 (default) | 2 |" in block and "Measured on this CPU (--cpu)" in block
