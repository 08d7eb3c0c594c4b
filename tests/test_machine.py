"""`python tools/machine.py` fills the machine block of AGENTS.md."""

import importlib.util
import re
import subprocess
import sys

import pytest
from harness import REPO

MACHINE = REPO / "tools" / "machine.py"


@pytest.fixture(scope="module")
def machine():
    spec = importlib.util.spec_from_file_location("machine_under_test", MACHINE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_machine_command_fills_the_block_on_a_cpu_machine(tmp_path, machine):
    agents = tmp_path / "AGENTS.md"
    agents.write_text(f"# Agents\n\nbefore\n{machine.BEGIN}\nold text\n{machine.END}\nafter\n")
    proc = subprocess.run([sys.executable, str(MACHINE), "--agents", str(agents)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = agents.read_text()
    assert "old text" not in text
    assert text.startswith("# Agents\n\nbefore\n") and text.endswith("after\n")
    block = text.split(machine.BEGIN)[1].split(machine.END)[0]
    assert "CPU machine" in block and "python tools/machine.py" in block
    assert re.search(r"\| 512 \(default\) \| 8 \| \d+\.\dM \|", block)


def test_repository_agents_md_has_the_machine_block(machine):
    text = (REPO / "AGENTS.md").read_text()
    assert text.count(machine.BEGIN) == 1 and text.count(machine.END) == 1


def test_sizing_table_turns_measured_throughput_into_tokens_per_budget(machine):
    train = machine.load_train()
    measured = {"tokens_per_sec": "1000000"}
    rows = {int(r.split("|")[1].split()[0]): r for r in machine.sizing_table(train, measured)[2:] if "| 8 |" in r}
    default = [c.strip() for c in rows[512].split("|")]
    assert default[5] == "1,000,000"  # the default config's own rate comes back unchanged
    assert default[6] == f"{1_000_000 * train.TIME_BUDGET / 1e6:,.0f}M"
    # a bigger model at the same FLOP rate sees proportionally fewer tokens
    bigger = [c.strip() for c in rows[1024].split("|")]
    assert float(bigger[5].replace(",", "")) < 1_000_000 * 0.5


def test_missing_block_is_reported_with_the_lines_to_add(tmp_path, machine):
    agents = tmp_path / "AGENTS.md"
    agents.write_text("# no block here\n")
    with pytest.raises(SystemExit, match="BEGIN MACHINE"):
        machine.write_block(agents, "x")


def test_block_reports_a_measured_run_from_its_own_summary(tiny_run, machine):
    _, _, log, summary = tiny_run
    train = machine.load_train()
    measured = machine.load_script("analysis").parse_summary(log)
    block = machine.render(train, machine.machine_facts(train), measured, "note")
    assert f"{float(summary['tokens_per_sec']):,.0f} tokens/s" in block
    assert "AR_TIME_BUDGET=4" in block and "not measured" not in block
