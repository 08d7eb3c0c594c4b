"""`python tools/machine.py` fills the machine block of AGENTS.md (the logic is labbook/machine.py).

The sizing table is built around train.py's own size, whatever its DIM and DEPTH, and a
measurement that cannot be taken (no GPU, a crashed run) is one line, never a traceback.
"""

import re
import shutil

import pytest
import torch
from harness import AGENTS, REPO, TRAIN, base_env, edit_constants, run_script

from labbook import machine

MACHINE = REPO / "tools" / "machine.py"
TINY = dict(DIM=32, DEPTH=2, HEADS=2, BATCH_SIZE=4, TRAIN_SEQ_LEN=128)
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def train_copy(folder, **values):
    path = folder / "train.py"
    path.write_text(edit_constants(TRAIN.read_text(), **values))
    return path


def run_machine(tmp_path, *args, **env):
    return run_script(MACHINE, *args, cwd=tmp_path, env=base_env(tmp_path, **env))


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
    proc = run_machine(tmp_path, "--agents", agents, "--train", TRAIN)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = agents.read_text()
    assert "old text" not in text
    assert text.startswith("# Agents\n\nbefore\n") and text.endswith("after\n")
    block = text.split(machine.BEGIN)[1].split(machine.END)[0]
    assert "CPU machine" in block and "python tools/machine.py" in block and "python prepare.py" in block
    assert re.search(r"\| 512 \(train\.py now\) \| 8 \| \d+\.\dM \|", block)
    assert "act./seq (CPU est.)" in block and "an estimate (saved-tensor count on a CPU), not measured" in block
    # no GPU is one line, not a traceback
    assert proc.stderr.strip().splitlines() == ["no CUDA GPU: throughput not measured (facts and model sizes only)"]


def clone_for_machine(folder, **values):
    """The files tools/machine.py touches, as a clone has them: the tool, labbook, prepare.py,
    train.py (with `values`) and an AGENTS.md whose machine block is empty."""
    folder.mkdir()
    (folder / "tools").mkdir()
    shutil.copy(MACHINE, folder / "tools" / "machine.py")
    shutil.copytree(REPO / "labbook", folder / "labbook", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "prepare.py", folder / "prepare.py")
    train_copy(folder, **values)
    (folder / "AGENTS.md").write_text(f"# Agents\n{machine.BEGIN}\nempty\n{machine.END}\n")
    return folder


@NO_CUDA
def test_machine_command_writes_the_clone_it_is_run_from_not_the_installed_one(tmp_path):
    """Two clones, one install: PYTHONPATH puts clone A's labbook ahead of everything but the
    script's own folder (pip's editable install of A sits behind it); B's tool sizes B's train.py
    and writes B's AGENTS.md."""
    a = clone_for_machine(tmp_path / "a", DIM=64, DEPTH=2)
    b = clone_for_machine(tmp_path / "b", DIM=96, DEPTH=3)
    proc = run_script(b / "tools" / "machine.py", "--no-measure", cwd=b, env=base_env(tmp_path, PYTHONPATH=a))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| 96 (train.py now) | 3 |" in (b / "AGENTS.md").read_text()
    assert "empty" in (a / "AGENTS.md").read_text()


def test_repository_agents_md_has_the_machine_block():
    text = AGENTS.read_text()
    assert text.count(machine.BEGIN) == 1 and text.count(machine.END) == 1


def test_sizing_table_turns_measured_throughput_into_tokens_per_budget():
    train = machine.load_train(TRAIN)
    rows = table_rows(machine.sizing_table(train, {"tokens_per_sec": "1000000"}))
    default = rows[(train.DIM, train.DEPTH)]
    assert default[0] == f"{train.DIM} (train.py now)"
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
    assert rows[(96, 3)][0] == "96 (train.py now)" and rows[(96, 3)][2] == f"{expected / 1e6:.1f}M"
    assert {48, 72, 144, 192} <= {dim for dim, _ in rows} and {2, 4} <= {depth for _, depth in rows}
    assert [c[0] for c in rows.values()].count("96 (train.py now)") == 1
    proc = run_machine(tmp_path, "--train", path, "--print", "--no-measure")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"| 96 (train.py now) | 3 | {expected / 1e6:.1f}M |" in proc.stdout


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
    assert "The throughput run failed (" in proc.stdout and "| 32 (train.py now) | 2 |" in proc.stdout


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
    # throughput measured (the memory columns' CPU estimate still says "not measured" in its note)
    assert "AR_TIME_BUDGET=2" in block and "| not measured |" not in block and "Throughput not measured" not in block
    assert "| 32 (train.py now) | 2 |" in block and "Measured on this CPU (--cpu)" in block


def tiny_train(tmp_path, **values):
    return machine.load_train(train_copy(tmp_path, **{**TINY, **values}))


def memory_rows(train, memory, cards):
    """{(dim, depth): (params, per-sequence bytes, the table's memory cells)}."""
    table = table_rows(machine.sizing_table(train, None, memory, cards))
    return {(d, L): (p, memory.for_size(train, d, L), table[(d, L)][7:]) for d, L, p in machine.model_sizes(train)}


def test_cpu_estimate_is_labelled_as_an_estimate(tmp_path):
    train = tiny_train(tmp_path)
    memory = machine.activation_memory(train, gpu=False)
    assert not memory.measured and memory.source == "an estimate (saved-tensor count on a CPU), not measured"
    cards = [g * 2**30 for g in machine.REFERENCE_CARDS_GB]
    lines = machine.sizing_table(train, None, memory, cards)
    assert "act./seq (CPU est.) | peak at 4 | micro-batch, 8/12/16/24/80 GB |" in lines[0]
    assert len(lines[1].split("|")) == len(lines[0].split("|"))
    note = " ".join(machine.memory_note(train, memory, cards))
    assert "an estimate (saved-tensor count on a CPU), not measured" in note and "dim × depth" in note
    block = machine.render(train, machine.machine_facts(), None, "note", memory, cards)
    assert "act./seq (CPU est.)" in block and "saved-tensor count on a CPU), not measured" in block


@NO_CUDA
def test_a_failed_gpu_measurement_falls_back_to_the_labelled_estimate(tmp_path):
    memory = machine.activation_memory(tiny_train(tmp_path), gpu=True)  # no CUDA here: the measurement fails
    assert not memory.measured and memory.per_sequence > 0
    assert memory.source.startswith(
        "an estimate (saved-tensor count on a CPU), not measured (the GPU measurement failed:"
    )


def test_a_size_too_large_for_a_small_card_does_not_fit(tmp_path):
    train = tiny_train(tmp_path)
    memory = machine.activation_memory(train, gpu=False)
    rows = machine.model_sizes(train)
    (d0, L0, p0), (d1, L1, p1) = rows[0], rows[-1]
    # a card that holds the smallest size at one sequence but not the largest
    card = (machine.fixed_bytes(p0) + memory.for_size(train, d0, L0)) / machine.CARD_FILL * 1.01
    assert machine.fixed_bytes(p1) + memory.for_size(train, d1, L1) > machine.CARD_FILL * card
    table = memory_rows(train, memory, [card])
    assert table[(d1, L1)][2][1] == "does not fit"
    assert table[(d0, L0)][2][1] == "1"
    # several cards: the small one says no, a big one fits the whole batch
    cells = memory_rows(train, memory, [card, 2**40])[(d1, L1)][2]
    assert cells[2] == f"no · {train.BATCH_SIZE}"


def test_the_micro_batch_shown_is_the_largest_fitting_divisor_of_the_batch(tmp_path):
    train = tiny_train(tmp_path, BATCH_SIZE=12)
    memory = machine.activation_memory(train, gpu=False)
    own = next(p for d, L, p in machine.model_sizes(train) if (d, L) == (train.DIM, train.DEPTH))
    act = memory.for_size(train, train.DIM, train.DEPTH)
    shown = set()
    for k in (1, 2, 3, 5, 7, 11, 13):  # cards holding about k sequences beyond the fixed part
        card = (machine.fixed_bytes(own) + act * (k + 0.5)) / machine.CARD_FILL
        for (dim, depth), (params, per_seq, cells) in memory_rows(train, memory, [card]).items():
            if cells[1] == "does not fit":
                assert machine.fixed_bytes(params) + per_seq > machine.CARD_FILL * card
                continue
            size = int(cells[1])
            assert 12 % size == 0
            assert machine.fixed_bytes(params) + per_seq * size < machine.CARD_FILL * card  # the harness's rule
            bigger = [d for d in range(size + 1, 13) if 12 % d == 0]
            assert all(machine.fixed_bytes(params) + per_seq * d >= machine.CARD_FILL * card for d in bigger)
            assert cells[2] == machine.gb(machine.fixed_bytes(params) + per_seq * size)
            if (dim, depth) == (train.DIM, train.DEPTH):
                shown.add(size)
    assert shown == {1, 2, 3, 4, 6, 12}  # every divisor, never 5, 7 or 11


def test_the_estimate_at_the_default_size_is_plausible():
    """The repository's default: a few hundred MB per 1,024-byte sequence under a flash kernel (the
    repository's own count said about 205 MB without attention matrices, 335 MB with them)."""
    train = machine.load_train(TRAIN)
    memory = machine.estimate_activations(train)
    assert 150 * 2**20 < memory.per_sequence < 450 * 2**20
    assert memory.attention == 0  # the CPU's SDPA kernel keeps no probability matrices either


def test_the_estimate_leaves_out_attention_matrices_a_flash_kernel_would_not_keep(tmp_path):
    """Without attn_flash x-transformers keeps the softmax: heads x T x T per layer, left out of the figure."""
    path = train_copy(tmp_path, **TINY)
    path.write_text(path.read_text().replace("attn_flash=True", "attn_flash=False"))
    train = machine.load_train(path)
    flash = machine.estimate_activations(machine.load_train(train_copy(tmp_path, **TINY)))
    math = machine.estimate_activations(train)
    n = train.TRAIN_SEQ_LEN + 1
    assert math.attention >= train.DEPTH * train.HEADS * n * n * 2  # at least the BF16 probabilities per layer
    assert 0.5 < math.per_sequence / flash.per_sequence < 2
    assert "Left out:" in " ".join(machine.memory_note(train, math, [2**33, 2**34]))
