"""Parallel experiments on one machine: one git worktree, one branch and one GPU per worker.

Every worker records into the one results.tsv of the main worktree (analysis.py finds it), so
the keep rule's sigma, reference and near-misses (labbook/keeprule.py, labbook/outcomes.py) are computed over all
workers. A worker's row is a discard (or a crash): `keep` is reserved for commits on the research
branch. A worker's run that the rule would send to a confirmation (below the rule's `rerun_below`
bound against the tip) is marked PROMOTE: cherry-pick it onto the research branch, run it there
and follow `python analysis.py decide` (the rule). The commands are in tools/workers.py; the
protocol is in docs/scale-out.md.
"""

import argparse
import fcntl
import json
import os
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from labbook.base import Refusal, git, git_or_refuse, main_worktree_top
from labbook.keeprule import NOISE_PREFIX
from labbook.ledger import STATUSES
from labbook.runlog import crash_reason, parse_summary

WORKTREES = "worktrees"  # under the main worktree, git-ignored


# ---------------------------------------------------------------------------
# Git and the worktree layout
# ---------------------------------------------------------------------------


def main_worktree(cwd="."):
    """Top of the main worktree, from any worktree of the repository."""
    top = main_worktree_top(cwd)
    if top is None:
        raise Refusal("not inside a git repository: run this from the project's checkout")
    return top


def worker_name(gpu):
    return f"gpu{gpu}"


def worker_dir(root, gpu):
    return root / WORKTREES / worker_name(gpu)


def worker_gpus(root):
    """GPU ids of the registered worktrees under worktrees/, in order."""
    listing = git_or_refuse(["worktree", "list", "--porcelain"], root)
    gpus = []
    for line in listing.splitlines():
        path = Path(line.removeprefix("worktree ")) if line.startswith("worktree ") else None
        if path and path.parent == root / WORKTREES and (m := re.fullmatch(r"gpu(\d+)", path.name)):
            gpus.append(m.group(1))
    return sorted(gpus, key=int)


def existing_worker(root, gpu):
    path = worker_dir(root, gpu)
    if gpu not in worker_gpus(root):
        raise Refusal(f"there is no worker {worker_name(gpu)} ({path}): create it with `python tools/workers.py setup`")
    return path


def has_uncommitted_changes(path):
    return bool(git_or_refuse(["status", "--porcelain", "--untracked-files=no"], path))


def short_head(path):
    return git_or_refuse(["rev-parse", "--short=7", "HEAD"], path)


def upstream(path):
    """The research branch a worker branch tracks, or None."""
    return git(["rev-parse", "--abbrev-ref", "--symbolic-full-name", "@{upstream}"], path)


@contextmanager
def worker_lock(root, gpu):
    """Held while a worker trains, so a second `run` on the same GPU is refused, not interleaved."""
    path = root / WORKTREES / f"{worker_name(gpu)}.lock"
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Refusal(f"{worker_name(gpu)} is already running an experiment: wait for it to finish") from None
        yield


def is_running(root, gpu):
    path = root / WORKTREES / f"{worker_name(gpu)}.lock"
    if not path.exists():
        return False
    with open(path) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    return False


# ---------------------------------------------------------------------------
# Run logs and results.tsv
# ---------------------------------------------------------------------------


def one_line(text):
    return re.sub(r"\s+", " ", text).strip()


def log_outcome(log):
    """One phrase for a run log: its val_bpc, its crash, or that it has not finished."""
    summary = parse_summary(log)
    if "val_bpc" in summary:
        return f"val_bpc {summary['val_bpc']} ({summary.get('commit', '?')})"
    reason = crash_reason(log)
    return f"crash: {reason}" if reason else "no summary yet (running, or killed)"


def tagged_description(description, name):
    """`[gpu1] description`, with a `noise:` tag kept in front, where analysis.py looks for it."""
    if description.startswith(NOISE_PREFIX):
        return f"{NOISE_PREFIX} [{name}] {description[len(NOISE_PREFIX) :].strip()}"
    return f"[{name}] {description}"


def default_status(summary):
    """A worker's commit is not on the research branch, so its row is a discard; crash without val_bpc."""
    return "discard" if "val_bpc" in summary else "crash"


def margin_to_promote(val_bpc, view):
    """How far `val_bpc` is below the keep rule's bound for a provisional first run against the
    tip (the agent view's next.rerun_below, labbook/outcomes.standing): > 0 promote it. None
    while the rule has no bound (nothing kept, or setup's replicates missing)."""
    bound = (view.get("next") or {}).get("rerun_below")
    return None if bound is None else bound - float(val_bpc)


def analysis_report(root, cwd):
    proc = subprocess.run(
        [sys.executable, str(root / "analysis.py"), "--json", "--no-plots"], cwd=cwd, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise Refusal(f"analysis.py --json failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def last_recorded_row(root, name):
    """The last row of results.tsv that this worker recorded, as {column: text}, or None."""
    tsv = root / "results.tsv"
    if not tsv.exists():
        return None
    lines = [line for line in tsv.read_text(errors="replace").splitlines() if line.strip()]
    if not lines or not lines[0].startswith("commit\t"):
        return None
    columns = lines[0].split("\t")
    mine = None
    for line in lines[1:]:
        row = dict(zip(columns, line.split("\t")))
        if row.get("worker") == name or f"[{name}]" in row.get("description", ""):
            mine = row
    return mine


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


def parse_gpus(text):
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    if not gpus or not all(g.isdigit() for g in gpus):
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of GPU indices like 0,1,2,3")
    return list(dict.fromkeys(gpus))


def setup(args):
    root = main_worktree()
    base = args.base or git(["symbolic-ref", "--quiet", "--short", "HEAD"], root)
    if not base:
        raise Refusal("the main worktree is not on a branch: check out the research branch, or pass --base BRANCH")
    if git(["check-ignore", "-q", f"{WORKTREES}/gpu0"], root) is None:
        raise Refusal(f"{WORKTREES}/ is not git-ignored: add the line `{WORKTREES}/` to .gitignore and commit it")
    for gpu in args.gpus:
        path, branch = worker_dir(root, gpu), f"autoresearch/{args.tag}-{worker_name(gpu)}"
        if path.exists():
            print(
                f"{worker_name(gpu)}: {path} exists, left as it is (on {git_or_refuse(['branch', '--show-current'], path)})"
            )
            continue
        if git(["rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"], root):
            raise Refusal(f"branch {branch} already exists: pick another --tag, or delete it (git branch -D {branch})")
        # --track makes the research branch the worker's upstream: `status` counts commits against
        # it and `sync` resets to it
        git_or_refuse(["worktree", "add", "--quiet", "--track", "-b", branch, str(path), base], root)
        print(f"{worker_name(gpu)}: {path} on {branch} from {base} ({short_head(path)})")
    if not workers_find_data():
        first = worker_dir(root, args.gpus[0])
        print(
            "note: worktrees have no x-transformers submodule checkout, and enwik8 is not in the shared cache "
            f"yet: fill it once with `(cd {first} && python prepare.py)`, or export AR_DATA=<enwik8 file>"
        )
    return 0


def workers_find_data():
    """Whether train.py in a worktree (no submodule checkout) finds enwik8 without downloading it:
    AR_DATA, or the cache that python prepare.py fills."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "autoresearch-xt" / "enwik8"
    return bool(os.environ.get("AR_DATA")) or cache.exists()


def worker_env(gpu):
    """The caller's environment (AR_DATA and friends pass through) pinned to one GPU. AR_METRICS
    is dropped: each worktree writes its own metrics.jsonl, and a shared path would mix them."""
    env = {k: v for k, v in os.environ.items() if k != "AR_METRICS"}
    env.update(CUDA_VISIBLE_DEVICES=str(gpu), AR_WORKER=worker_name(gpu))
    return env


def run(args):
    root = main_worktree()
    path, name = existing_worker(root, args.gpu), worker_name(args.gpu)
    recording = not args.no_record
    if recording and has_uncommitted_changes(path):
        raise Refusal(
            f"{path} has uncommitted changes: commit them (git -C {path} commit -am '...') so the row names them"
        )
    if recording and not (root / "analysis.py").exists():
        raise Refusal(f"no analysis.py in {root} to record with: pass --no-record")
    env = worker_env(args.gpu)
    with worker_lock(root, args.gpu), open(path / "run.log", "w") as log:
        training = subprocess.run([sys.executable, "train.py"], cwd=path, env=env, stdout=log, stderr=subprocess.STDOUT)
    text = (path / "run.log").read_text(errors="replace")
    print(f"{name}: exit {training.returncode}, {log_outcome(text)}")
    if not recording:
        return training.returncode
    description = args.description or git_or_refuse(["log", "-1", "--format=%s"], path)
    command = [sys.executable, str(root / "analysis.py"), "record"]
    command += ["--status", args.status or default_status(parse_summary(text))]
    command += ["--description", tagged_description(description, name), "run.log"]
    recorded = subprocess.run(command, cwd=path, env=env)
    return training.returncode or recorded.returncode


def status(args):
    root = main_worktree()
    gpus = worker_gpus(root)
    if not gpus:
        print(f"no workers under {root / WORKTREES}: create them with `python tools/workers.py setup`")
        return 0
    report = analysis_report(root, root) if (root / "analysis.py").exists() else {}
    print(standing(report))
    for gpu in gpus:
        path, name = worker_dir(root, gpu), worker_name(gpu)
        base = upstream(path)
        ahead = git(["rev-list", "--count", "@{upstream}..HEAD"], path) if base else None
        position = f"+{ahead} on {base}" if ahead is not None else "no upstream"
        dirty = " (uncommitted changes)" if has_uncommitted_changes(path) else ""
        log = path / "run.log"
        last_run = log_outcome(log.read_text(errors="replace")) if log.exists() else "no run yet"
        row = last_recorded_row(root, name)
        recorded = f"{row['status']} {row['commit']} {row['val_bpc']}" if row else "nothing recorded"
        print(
            f"{name}  {git_or_refuse(['branch', '--show-current'], path)}  {short_head(path)}{dirty}  {position}  "
            f"{'running' if is_running(root, gpu) else 'idle'}  last run: {last_run}  last row: {recorded}"
            + promotion_hint(row, short_head(path), report)
        )
    return 0


def standing(view):
    """The line above the workers: the best, the tip and the bound a worker has to beat to be promoted."""
    best, tip = view.get("best"), view.get("tip")
    if not best or not tip:
        return "nothing kept yet: record the baseline on the research branch first"
    bound = (view.get("next") or {}).get("rerun_below")
    rule = (
        f"promote below {bound:.6f} (the keep rule's rerun bound against the tip {tip['commit']} {tip['mean']:.6f})"
        if bound is not None
        else "no promotion bound yet: setup's replicates of the tip give sigma first (python analysis.py decide)"
    )
    return f"best kept {best['commit']} {best['mean']:.6f}, {rule}"


def promotion_hint(row, head, view):
    """`  PROMOTE (...)` when the worker's last row is its current HEAD and the keep rule would
    send it to a confirmation run (below next.rerun_below)."""
    if not row or row.get("status") == "crash" or row.get("commit") != head:
        return ""
    margin = margin_to_promote(row["val_bpc"], view)
    if margin is None or margin <= 0:
        return ""
    return f"  PROMOTE ({margin:.6f} below the rule's rerun bound: cherry-pick, run, record)"


def sync(args):
    """Move each worker branch to its research branch's tip, dropping the commits it ran."""
    root = main_worktree()
    for gpu in args.gpus or worker_gpus(root):
        path, name = existing_worker(root, gpu), worker_name(gpu)
        base = upstream(path)
        if base is None:
            raise Refusal(f"{name} tracks no branch: git -C {path} branch --set-upstream-to <research branch>")
        if is_running(root, gpu):
            raise Refusal(f"{name} is running an experiment: sync it when it has finished")
        if has_uncommitted_changes(path):
            raise Refusal(f"{name} has uncommitted changes: commit or discard them (git -C {path} checkout -- .)")
        before = short_head(path)
        git_or_refuse(["reset", "--quiet", "--hard", "@{upstream}"], path)
        print(f"{name}: {before} -> {short_head(path)} ({base})")
    return 0


def result_line(args):
    """RESULT<TAB>id<TAB>commit<TAB>val_bpc<TAB>peak_vram_mb<TAB>ok|crash<TAB>description, from a run log."""
    log = Path(args.log)
    text = log.read_text(errors="replace") if log.exists() else ""
    summary = parse_summary(text)
    commit = summary.get("commit") or git(["rev-parse", "--short=7", "HEAD"], log.resolve().parent)
    finished = "val_bpc" in summary
    fields = [
        "RESULT",
        args.id,
        commit or "none",
        summary["val_bpc"] if finished else "0.000000",
        summary.get("peak_vram_mb", "0.0") if finished else "0.0",
        "ok" if finished else "crash",
        one_line(args.description),
    ]
    print("\t".join(one_line(f) for f in fields))
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="workers.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("setup", help="one worktree and branch per GPU under worktrees/")
    p.add_argument("--tag", required=True, help="run tag: branches are autoresearch/<tag>-gpu<i>")
    p.add_argument("--gpus", required=True, type=parse_gpus, help="GPU indices, e.g. 0,1,2,3")
    p.add_argument("--base", help="branch to start from and track (default: the main worktree's branch)")
    p.set_defaults(handler=setup)

    p = sub.add_parser("run", help="train in one worker's worktree on its GPU, then record the row")
    p.add_argument("--gpu", required=True, type=lambda s: parse_gpus(s)[0], help="the worker's GPU index")
    p.add_argument("--description", help="what the experiment tried (default: the HEAD commit's subject)")
    p.add_argument("--status", choices=STATUSES, help="default: discard, or crash when the run has no val_bpc")
    p.add_argument("--no-record", action="store_true", help="only train; record later with analysis.py record")
    p.set_defaults(handler=run)

    p = sub.add_parser("status", help="workers, their branch and HEAD, and their last result")
    p.set_defaults(handler=status)

    p = sub.add_parser("sync", help="reset worker branches to the research branch they track")
    p.add_argument("--gpus", type=parse_gpus, help="only these workers (default: all)")
    p.set_defaults(handler=sync)

    p = sub.add_parser("result-line", help="print the parseable RESULT line of a run log")
    p.add_argument("log", nargs="?", default="run.log")
    p.add_argument("--id", required=True, help="experiment id")
    p.add_argument("--description", default="", help="what the experiment tried")
    p.set_defaults(handler=result_line)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except Refusal as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
