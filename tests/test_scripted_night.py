"""A scripted night: a deterministic fake agent follows program.md's commands as written.

A temporary research repository holds a copy of train.py, prepare.py, analysis.py, labbook/,
tools/, AGENTS.md, program.md and .gitignore. The CPU rehearsal (README's tools/rehearsal.py, with smaller
constants) is committed with a learning rate that barely trains; then the agent runs the setup
(branch, dependency check, data, machine facts, baseline and the replicates `decide` asks for)
and a night of the loop, taking every command string from program.md, docs/scale-out.md or from
what `python analysis.py decide` prints under `next:`:

1. two workers (tools/workers.py) each try a change; the winner (PROMOTE) is cherry-picked, run
   on the research branch and promoted through decide (rerun, confirmation keep), its two
   replicates run on the synced workers at once (docs/scale-out.md's parallel replicates);
2. a typo crash, recorded, fixed with `git commit -a --amend --no-edit`, run again: discard, reset;
3. a declared simplification (the schedule dropped, `decide --simplification`): rerun, keep, and
   its replicate on the research branch, each decided (program.md's loop on one GPU);
4. a run killed mid-way (every process of its command, SIGKILL): decide says crash, it is
   recorded, the session "ends" before the reset and results.tsv is lost; Resume restores it and
   finds the reset that did not happen;
5. a run cut off with the session and never recorded: Resume reads run.log (HEAD's, no summary,
   no crash line), runs it again and follows decide (discard, reset).

Then it checks the branch, every row, every verdict's first line and the report. Its thirty-odd
`python` processes run through the session's warm interpreter (tests/warm_python.py, on PATH
first), which keeps it near a minute on 2 cores; select it alone with `-m night`.
"""

import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import AGENTS, REPO, TRAIN, base_env, edit_constants, kill_session
from harness import PROGRAM as HARNESS_PROGRAM

TAG = "rehearsal"  # README: follow program.md with the run tag `rehearsal`
STEPS = 3
EVAL_BYTES = 4096
SIZES = {"DIM": "32", "DEPTH": "2", "HEADS": "2", "BATCH_SIZE": "4", "TRAIN_SEQ_LEN": "64"}  # README's sizes, smaller
SLOW_LR, GOOD_LR = 1e-5, 1e-2  # the rehearsal's baseline barely trains; the first experiment's LR does

PROGRAM = HARNESS_PROGRAM.read_text()
SCALE_OUT = (REPO / "docs" / "scale-out.md").read_text()
README = (REPO / "README.md").read_text()


def spans(text):
    """Every `inline code` span of a markdown text."""
    return re.findall(r"`([^`\n]+)`", text)


def command(text, starts):
    """The one inline command of `text` that starts with `starts`, as written there."""
    found = sorted({s for s in spans(text) if s.startswith(starts)})
    if starts in found:  # the command itself, not a variant with more options
        return starts
    assert len(found) == 1, f"expected one command starting {starts!r}, found {found}"
    return found[0]


def block_line(text, starts):
    """The one line of a fenced code block (or anywhere) that starts with `starts`."""
    found = sorted({line.strip() for line in text.splitlines() if line.strip().startswith(starts)})
    assert len(found) == 1, f"expected one line starting {starts!r}, found {found}"
    return found[0]


# program.md's commands, exactly as written there
BRANCHES = command(PROGRAM, "git branch --list")
CREATE_BRANCH = command(PROGRAM, "git checkout -b autoresearch/<tag>")
CHECKOUT = command(PROGRAM, "git checkout autoresearch/<tag>")
DEPS = command(PROGRAM, "python -c ")
PREPARE = command(PROGRAM, "python prepare.py")
MACHINE = command(PROGRAM, "python tools/machine.py")
MACHINE_COMMIT = command(PROGRAM, 'git commit -am "machine facts"')
STATUS = command(PROGRAM, "git status --short")
RUN = command(PROGRAM, "timeout -k 30 600 python train.py")
DECIDE = command(PROGRAM, "python analysis.py decide")
JSON = command(PROGRAM, "python analysis.py --json")
COMMIT_TEMPLATE = command(PROGRAM, 'git commit -am "shift_tokens=1"')
AMEND = command(PROGRAM, "git commit -a --amend")
RESET = command(PROGRAM, "git reset --hard")
TAIL = command(PROGRAM, "tail -n 50")
TAIL20 = command(PROGRAM, "tail -n 20 run.log")
LOG_IS_HEADS = command(PROGRAM, "find run.log -newermt")
RESTORE = command(PROGRAM, "python analysis.py restore")
LOG5 = command(PROGRAM, "git log --oneline")
HEAD7 = command(PROGRAM, "git rev-parse --short=7")
HEAD_ROWS = command(PROGRAM, 'grep "^$(git rev-parse --short=7 HEAD)" results.tsv')
WORKERS_SETUP = command(PROGRAM, "python tools/workers.py setup")
# docs/scale-out.md's
WORKERS_ROUND = block_line(SCALE_OUT, "for i in 0 1 2 3; do python tools/workers.py run")
WORKERS_STATUS = block_line(SCALE_OUT, "python tools/workers.py status")
WORKER_COMMIT = block_line(SCALE_OUT, "git -C worktrees/gpu1 commit -am")
CHERRY_PICK = block_line(SCALE_OUT, "git cherry-pick <commit>")
PINNED_RUN = block_line(SCALE_OUT, "CUDA_VISIBLE_DEVICES=0 timeout -k 30 600 python train.py")
SYNC = block_line(SCALE_OUT, "python tools/workers.py sync")
PARALLEL_REPLICATES = re.search(r"```bash\n(for i in 0 1 2 3; do\n  AR_SEED=.*?)\n```", SCALE_OUT, re.S).group(1)
# README's CPU rehearsal
REHEARSAL_SIZE = block_line(README, "python tools/rehearsal.py")
REHEARSAL_COMMIT = block_line(README, 'git commit -am "CPU rehearsal size"')


def rehearsal_size():
    """README's resize command with this test's smaller sizes."""
    options = " ".join(f"--{name.lower().replace('_', '-')} {value}" for name, value in SIZES.items())
    return f"{comment_of(REHEARSAL_SIZE)} {options}"


def comment_of(cmd):
    return cmd.split("#", 1)[0].strip()


class Agent:
    """Runs shell commands in the research repository and keeps what a careful agent notes."""

    def __init__(self, root, env):
        self.root, self.env = root, env
        self.verdicts = []  # (first line of decide's output, the reason line)
        self.transcript = []

    def sh(self, cmd, check=True, cwd=None, timeout=300):
        start = time.monotonic()
        proc = subprocess.run(
            ["bash", "-c", cmd], cwd=cwd or self.root, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        self.transcript.append(f"$ {cmd}  [{time.monotonic() - start:.1f} s]\n{proc.stdout}{proc.stderr}")
        if check:
            assert proc.returncode == 0, f"{cmd!r} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        return proc

    def edit(self, **values):
        train = self.root / "train.py"
        train.write_text(edit_constants(train.read_text(), **values))

    def commit(self, message, cwd=None):
        self.sh(COMMIT_TEMPLATE.replace("shift_tokens=1", message), cwd=cwd)

    def decide(self, simplification=False):
        """`python analysis.py decide` on ./run.log: (verdict, the commands under next:)."""
        out = self.sh(DECIDE + (" --simplification" if simplification else "")).stdout
        lines = out.splitlines()
        assert "next:" in lines, out
        self.verdicts.append((lines[0], lines[1]))
        commands = [line.strip() for line in lines[lines.index("next:") + 1 :] if line.strip()]
        return lines[0], commands, out

    def follow(self, commands, run_prefix="", replicates=True):
        """Do exactly what `next:` says, in order; after each run, `decide` again and follow it
        (program.md: 'after each replicate run, decide names the next seed'). With
        replicates=False the commands of a keep's replicates are returned, not run."""
        for i, cmd in enumerate(commands):
            if cmd.startswith("#"):
                continue
            if "python train.py" in cmd:
                if not replicates and self.verdicts[-1][0] == "keep" and "replicate" not in self.verdicts[-1][1]:
                    return commands[i:]
                self.sh(run_prefix + cmd, check=False, timeout=660)
                _, after, _ = self.decide()
                return self.follow(after, run_prefix, replicates)
            self.sh(cmd)
        return []

    def run_and_decide(self, simplification=False, run=RUN):
        self.sh(run, check=False, timeout=660)
        return self.decide(simplification)

    def rows(self):
        with open(self.root / "results.tsv", newline="") as f:
            return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))

    def head(self):
        return self.sh(HEAD7).stdout.strip()


def research_repo(path):
    path.mkdir(parents=True)
    shipped = {"train.py": TRAIN, "AGENTS.md": AGENTS, "program.md": HARNESS_PROGRAM}  # not an effort's edits
    for name in ("train.py", "prepare.py", "analysis.py", "AGENTS.md", "program.md", ".gitignore"):
        shutil.copy(shipped.get(name, REPO / name), path / name)
    for name in ("labbook", "tools"):
        shutil.copytree(REPO / name, path / name, ignore=shutil.ignore_patterns("__pycache__"))
    return path


def agent_env(tmp, root, corpus, python):
    env = base_env(tmp, AR_DATA=corpus, AR_STEPS=STEPS, AR_EVAL_BYTES=EVAL_BYTES)
    env.update(
        PYTHONPATH=str(root),  # tools/machine.py's labbook (and the AGENTS.md it writes) are the copy's
        PATH=os.pathsep.join([str(Path(python).parent), str(Path(sys.executable).parent), env.get("PATH", "")]),
        GIT_AUTHOR_NAME="Night Agent",
        GIT_AUTHOR_EMAIL="agent@example.invalid",
        GIT_COMMITTER_NAME="Night Agent",
        GIT_COMMITTER_EMAIL="agent@example.invalid",
    )
    return env


def kill_mid_run(agent):
    """Start program.md's run in the background, wait until its model is built (its first step is
    under way), kill every process of the command."""
    log = agent.root / "run.log"
    log.unlink()  # the previous run's log, so the wait below reads this run's
    proc = subprocess.Popen(
        ["bash", "-c", RUN], cwd=agent.root, env=agent.env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and "\nmodel:" in log.read_text(errors="replace"):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run to kill ended by itself:\n" + log.read_text(errors="replace")
    kill_session(proc.pid)  # bash, and timeout's own process group with python in it
    proc.wait(timeout=30)
    time.sleep(0.5)  # the run's last writes land before anyone reads its log
    return log.read_text(errors="replace")


@pytest.mark.night
def test_scripted_night(tmp_path, corpus, warm_python):
    root = research_repo(tmp_path / "lab")
    env = agent_env(tmp_path, root, corpus, warm_python)
    agent = Agent(root, env)
    sh = agent.sh
    sh("git init -q -b main && git config commit.gpgsign false && git add . && git commit -q -m 'the project'")

    # --- setup (program.md), with README's CPU rehearsal right after step 2 ---
    assert sh(BRANCHES).stdout.strip() == ""
    sh(CREATE_BRANCH.replace("<tag>", TAG))
    sh(rehearsal_size())
    agent.edit(LR=SLOW_LR, MUON_LR=SLOW_LR)  # this night's baseline barely trains
    sh(REHEARSAL_COMMIT)
    sh(DEPS)
    assert sh(PREPARE).stdout.strip().splitlines()[-1].startswith("data ready:")
    agents_before = (root / "AGENTS.md").read_text()
    machine = sh(MACHINE)
    assert "no CUDA GPU" in machine.stderr
    assert "This is a CPU machine: nothing was measured." in (root / "AGENTS.md").read_text()
    assert (root / "AGENTS.md").read_text() != agents_before
    sh(MACHINE_COMMIT)
    assert sh(STATUS).stdout == ""
    assert not (root / "results.tsv").exists()
    verdict, commands, out = agent.run_and_decide()
    assert verdict == "keep" and commands[0].startswith("python analysis.py record --description "), out
    agent.follow(commands)  # the baseline's record, then its replicates, each decided
    setup_tip = agent.head()
    again = sh(DECIDE).stdout  # decide on the recorded last replicate (its checkpoint dropped): a dry run
    assert "already recorded" in again and "refused" not in again, again
    view = json.loads(sh(JSON).stdout)
    assert view["tip"]["commit"] == setup_tip and view["tip"]["runs"] == 5
    assert view["sigma"] > 0

    # --- 1. two workers each try a change; the winner is promoted through decide and kept ---
    sh(WORKERS_SETUP.replace("<tag>", TAG).replace("0,1,2,3", "0,1"))
    ideas = {"0": ("LR", GOOD_LR, "lr 1e-2"), "1": ("MUON_LR", 1e-6, "muon lr 1e-6")}  # a winner, a loser
    for gpu, (name, value, subject) in ideas.items():
        worker_train = root / "worktrees" / f"gpu{gpu}" / "train.py"
        worker_train.write_text(edit_constants(worker_train.read_text(), **{name: value}))
        sh(WORKER_COMMIT.replace("gpu1", f"gpu{gpu}").replace("LR 3e-3, warmdown 0.5", subject))
    sh(WORKERS_ROUND.replace("0 1 2 3", "0 1"))
    status = sh(WORKERS_STATUS).stdout
    promote = [line for line in status.splitlines() if "PROMOTE" in line]
    assert len(promote) == 1 and promote[0].startswith("gpu0"), status
    winner = promote[0].split()[2]
    sh(CHERRY_PICK.replace("<commit>", winner))
    improvement = agent.head()
    verdict, commands, out = agent.run_and_decide(run=PINNED_RUN)
    assert verdict == "rerun", out
    replicate_commands = agent.follow(commands, run_prefix="CUDA_VISIBLE_DEVICES=0 ", replicates=False)
    assert agent.verdicts[-1][0] == "keep" and agent.head() == improvement
    seeds = [int(re.match(r"AR_SEED=(\d+) ", c).group(1)) for c in replicate_commands if c.startswith("AR_SEED=")]
    assert len(seeds) == 1, replicate_commands
    improvement_seed = seeds[0]
    # its replicates on the two synced workers at once (docs/scale-out.md), with the seeds decide names
    sh(SYNC)
    sh(PARALLEL_REPLICATES.replace("0 1 2 3", "0 1").replace("$((i + 11))", f"$((i + {improvement_seed}))"))

    # --- 2. a typo crash, fixed by amending; the fixed run is discarded ---
    train = root / "train.py"
    agent.edit(LR=1e-4)
    train.write_text(train.read_text().replace("lr=LR,", "lr=LRR,", 1))
    agent.commit("lr 1e-4")
    verdict, commands, out = agent.run_and_decide()
    assert verdict == "crash", out
    agent.sh(commands[0])  # record first, always
    assert sh(TAIL).stdout.strip().splitlines()[-1].startswith("crash:")
    assert comment_of(commands[1]) == RESET and "git commit -a --amend --no-edit" in commands[1]
    train.write_text(train.read_text().replace("lr=LRR,", "lr=LR,", 1))  # the typo, fixed
    sh(AMEND)
    verdict, commands, out = agent.run_and_decide()
    assert verdict == "discard" and commands[-1] == RESET, out
    agent.follow(commands)
    assert agent.head() == improvement

    # --- 3. a declared simplification: the learning-rate schedule dropped; replicates on one GPU ---
    source = train.read_text()
    schedule = (
        "        lr_mult = lr_multiplier(run.progress)\n"
        "        for group in optimizer.param_groups:\n"
        '            group["lr"] = group["base_lr"] * lr_mult\n'
    )
    assert schedule in source
    train.write_text(source.replace(schedule, ""))
    agent.commit("no lr schedule")
    simplification = agent.head()
    verdict, commands, out = agent.run_and_decide(simplification=True)
    assert verdict == "rerun" and "provisional simplification" in out and commands[0].endswith("--simplification"), out
    agent.follow(commands)  # the confirmation, keep, then its replicate, each decided
    assert agent.verdicts[-2][0] == "keep" and "simplification" in agent.verdicts[-2][1]
    simplification_seeds = [int(r["seed"]) for r in agent.rows() if r["kind"] == "replicate"][-1:]

    # --- 4. a run killed mid-way; the session ends before the reset; results.tsv is lost ---
    agent.edit(DIM=256, HEADS=4, TRAIN_SEQ_LEN=1024, BATCH_SIZE=16)
    agent.commit("dim 256, seq 1024")
    killed = agent.head()
    log = kill_mid_run(agent)
    assert "val_bpc:" not in log
    verdict, commands, out = agent.decide()
    assert verdict == "crash" and comment_of(commands[1]) == RESET, out
    sh(commands[0])
    rows_before = agent.rows()
    (root / "results.tsv").unlink()
    # Resume
    branches = [line.strip("*+ ") for line in sh(BRANCHES).stdout.splitlines()]  # * current, + a worktree's
    assert branches == [f"autoresearch/{TAG}", f"autoresearch/{TAG}-gpu0", f"autoresearch/{TAG}-gpu1"]
    sh(CHECKOUT.replace("<tag>", TAG))
    assert not (root / "results.tsv").exists()
    sh(RESTORE)
    assert agent.rows() == rows_before
    sh(JSON)
    sh(LOG5)
    assert sh(STATUS).stdout == ""
    assert agent.head() == killed
    head_rows = sh(HEAD_ROWS).stdout.splitlines()
    assert [line.split("\t")[3] for line in head_rows] == ["crash"]
    sh(RESET)  # the case that applies: HEAD's last row is a crash, the reset did not happen
    assert agent.head() == simplification

    # --- 5. a run cut off with the session, nothing recorded; Resume reads run.log and reruns ---
    agent.edit(MUON_LR=1e-6)
    agent.commit("muon lr 1e-6")
    cut_off = agent.head()
    kill_mid_run(agent)
    sh(CHECKOUT.replace("<tag>", TAG))
    sh(RESTORE)
    assert sh(STATUS).stdout == "" and sh(HEAD_ROWS, check=False).stdout == ""  # HEAD has no row
    assert sh(LOG_IS_HEADS).stdout.strip() == "run.log"  # HEAD's own log
    tail = sh(TAIL20).stdout
    assert "val_bpc:" not in tail and "crash:" not in tail  # a log that just stops: run it again
    verdict, commands, out = agent.run_and_decide()
    assert verdict == "discard", out
    agent.follow(commands)
    assert agent.head() == simplification

    # --- the morning ---
    log = sh("git log --format=%h:%s").stdout.split("\n")
    assert log[:4] == [
        f"{simplification}:no lr schedule",
        f"{improvement}:lr 1e-2",
        f"{setup_tip}:machine facts",
        log[3].split(":")[0] + ":CPU rehearsal size",
    ], log
    assert [v for v, _ in agent.verdicts] == [
        *["keep"] * 5,  # the baseline, 4 replicates
        "rerun", "keep",  # the promoted winner, its confirmation (replicates on the workers)
        "crash", "discard",  # the typo, then the fixed commit
        "rerun", "keep", "keep",  # the simplification, its confirmation, its replicate
        "crash",  # the killed run
        "discard",  # the run cut off with the session, run again after Resume
    ]  # fmt: skip

    def key(r):
        return r["commit"], r["status"], r["kind"], r["description"]

    rows = [key(r) for r in agent.rows()]
    assert len(rows) == 18, rows
    workers_round = {r[0] for r in rows[5:7]}
    assert len(workers_round) == 2 and winner in workers_round
    loser = (workers_round - {winner}).pop()
    assert sorted(rows[5:7], key=lambda r: r[3]) == [
        (winner, "discard", "experiment", "[gpu0] lr 1e-2"),
        (loser, "discard", "experiment", "[gpu1] muon lr 1e-6"),
    ]
    assert sorted(rows[9:11]) == [  # the workers' parallel replicates, in either order
        (improvement, "discard", "replicate", f"noise: [gpu0] AR_SEED={improvement_seed}"),
        (improvement, "discard", "replicate", f"noise: [gpu1] AR_SEED={improvement_seed + 1}"),
    ]
    crash_commit, amended = rows[11][0], rows[12][0]
    assert crash_commit != amended
    assert rows[:5] + rows[7:9] + rows[11:] == [
        (setup_tip, "keep", "baseline", "baseline"),
        *[(setup_tip, "keep", "replicate", f"noise: {setup_tip}, seed {seed}") for seed in (1, 2, 3, 4)],
        (improvement, "provisional", "experiment", "lr 1e-2"),  # the rerun verdict's row
        (improvement, "keep", "confirm", "lr 1e-2"),
        (crash_commit, "crash", "experiment", "lr 1e-4 (crash: NameError: name 'LRR' is not defined)"),
        (amended, "discard", "experiment", "lr 1e-4"),
        (simplification, "provisional", "simplification", "no lr schedule"),
        (simplification, "keep", "confirm", "no lr schedule"),
        *[
            (simplification, "keep", "replicate", f"noise: {simplification}, seed {seed}")
            for seed in simplification_seeds
        ],
        (killed, "crash", "experiment", "dim 256, seq 1024"),
        (cut_off, "discard", "experiment", "muon lr 1e-6"),
    ]
    first = {r["commit"]: r for r in reversed(agent.rows()) if r["kind"] == "experiment"}
    assert (first[winner]["seed"], first[winner]["val_bpc"]) == (
        first[improvement]["seed"],
        first[improvement]["val_bpc"],
    )

    view = json.loads(sh(JSON).stdout)
    assert view["tip"] == {
        "commit": simplification,
        "mean": view["tip"]["mean"],
        "runs": 3,
    }  # first run, confirmation, replicate
    report = sh("python analysis.py --no-plots").stdout
    header = report.splitlines()[0]
    # the kept commits' first runs and the workers' replicates of the tip count as keeps
    assert "18 rows = 8 experiments" in header and "12 keep, 4 discard, 2 crash" in header, report
    assert "7 replicates" in header and "0 flagged" in header, report
    assert re.search(rf"^baseline +{setup_tip} ", report, re.M) and re.search(
        rf"^tip +{simplification} .*mean of 3 runs", report, re.M
    )
    assert "NameError: name 'LRR' is not defined" in report and "audit: 0 flagged" in report

    # the best is the kept commit with the lowest mean of its runs; the parallel replicates of
    # docs/scale-out.md record as `discard` (the workers' override), and a kept commit stays kept
    means = {
        commit: statistics.fmean(float(r["val_bpc"]) for r in agent.rows() if r["commit"] == commit)
        for commit in (improvement, simplification)
    }
    best = min(means, key=means.get)
    assert view["best"]["commit"] == best and re.search(rf"^best +{best} ", report, re.M), report
    assert re.search(rf"^kept simplifications.*\n(.*\n)*?.*{simplification}", report, re.M), report
