"""Record experiments in results.tsv and report on them: the night's memory and the morning's view.

The command line of analysis.py (its docstring lists the commands): the top layer of labbook, and
the one place that composes the report with its plots."""

import argparse
import contextlib
import os
import sys
from pathlib import Path

from labbook import agentview
from labbook.audit import harness_commit
from labbook.base import Refusal, default_tsv
from labbook.ledger import STATUSES, fix_header, restore
from labbook.plots import plot_curves, write_plots
from labbook.recording import decide_command, record_with_rule
from labbook.refusals import note_refusal
from labbook.report import TEST_SPLIT_NOTE, build_report, format_report, show_audit
from labbook.rescore import best_test_bpc, evaluate_checkpoint, kept_rescores, rescore_lines
from labbook.stop import stop_runs


def build_parser():
    tsv_option = argparse.ArgumentParser(add_help=False)
    tsv_option.add_argument("--tsv", type=Path, default=argparse.SUPPRESS, help="results file (default: main worktree)")
    parser = argparse.ArgumentParser(
        prog="analysis.py",
        description=__doc__.split("\n\n")[0],
        epilog=TEST_SPLIT_NOTE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tsv", type=Path, default=None, help="results file (default: top of the main worktree)")
    parser.add_argument("--json", action="store_true", help="the agent's JSON (under 4 KB, labbook/agentview.py)")
    parser.add_argument("--full", action="store_true", help="everything as JSON: every row, kept, near-miss")
    parser.add_argument("--out", type=Path, help="directory for progress.png and memory.png (default: next to results)")
    parser.add_argument("--no-plots", action="store_true", help="do not write the PNGs")
    parser.add_argument(
        "--test",
        action="store_true",
        help="also score the best checkpoint on the test split (for the person; not cached)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    rec = sub.add_parser("record", parents=[tsv_option], help="append one run from its run.log")
    rec.add_argument("--status", choices=STATUSES, help="the person's override; without it the keep rule decides")
    rec.add_argument("--simplification", action="store_true", help="declare the change a simplification")
    rec.add_argument("--description", required=True, help="one line: what this experiment changed")
    rec.add_argument("--force", action="store_true", help="record a log from another or a dirty commit (noted)")
    rec.add_argument("log", nargs="?", default="run.log", help="the run's log (default: run.log)")

    dec = sub.add_parser("decide", parents=[tsv_option], help="the keep rule's verdict on run.log, and what to run")
    dec.add_argument("--description", help="the row's description (default: the commit's subject)")
    dec.add_argument("--simplification", action="store_true", help="the change is declared a simplification")
    dec.add_argument("--explain", action="store_true", help="print the keep rule in plain sentences")
    dec.add_argument("log", nargs="?", default="run.log", help="the run's log (default: run.log)")

    sub.add_parser(
        "stop", help="stop the run this checkout started (SIGTERM to its supervisor), wait, print its crash line"
    )
    sub.add_parser("restore", parents=[tsv_option], help="merge rows back from the backup in the git directory")
    sub.add_parser("fix-header", parents=[tsv_option], help="add the missing header line, keeping every row")
    aud = sub.add_parser(
        "audit", parents=[tsv_option], help="flag rows not comparable with the baseline; exit 1 if any"
    )
    aud.add_argument("--json", dest="audit_json", action="store_true", help="the findings as JSON")

    curves = sub.add_parser("curves", parents=[tsv_option], help="training loss against time, one or more runs")
    curves.add_argument("metrics", nargs="+", type=Path, help="metrics.jsonl files")
    curves.add_argument("--out", type=Path, default=Path("curves.png"), help="image to write (default: curves.png)")

    ev = sub.add_parser(
        "evaluate",
        parents=[tsv_option],
        help="re-score a checkpoint with the baseline's prepare.py, in a fresh process",
        epilog=TEST_SPLIT_NOTE,
    )
    ev.add_argument("checkpoint", type=Path)
    ev.add_argument("--split", choices=("val", "test"), default="val", help="test: for the person, never for decisions")
    return parser


def run_command(args, tsv):
    if args.command == "record":
        return record_with_rule(args, tsv)
    if args.command == "decide":
        return decide_command(args, tsv)
    if args.command == "stop":
        return stop_runs()
    if args.command == "restore":
        return restore(tsv)
    if args.command == "fix-header":
        return fix_header(tsv)
    if args.command == "audit":
        return show_audit(tsv, as_json=args.audit_json)
    if args.command == "curves":
        print(f"wrote {plot_curves(args.metrics, args.out)}")
        return 0
    if args.command == "evaluate":
        if not args.checkpoint.is_file():
            raise Refusal(f"no checkpoint at {args.checkpoint}")
        baseline = None  # before a baseline, or without a results file: HEAD's prepare.py
        with contextlib.suppress(Refusal):
            baseline = harness_commit(tsv)
        bpc = evaluate_checkpoint(args.checkpoint, args.split, ".", baseline)
        print(f"{args.split}_bpc: {bpc:.6f}")
        return 0
    if args.json or args.full:
        return agentview.show(tsv, full=args.full)
    return show_report(args, tsv)


def show_report(args, tsv):
    """The report, its plots (unless --no-plots) and the morning check of the kept checkpoints."""
    results, report = build_report(tsv)
    if not args.no_plots:
        flagged = [f["line"] for f in report["flagged_rows"]]
        report["plots"] = [str(p) for p in write_plots(results, args.out or Path(tsv).resolve().parent, flagged)]
    # The test split only when the person asks (--test): scored fresh, never cached.
    test_bpc, note = best_test_bpc(results, report, compute=getattr(args, "test", False))
    print(format_report(report, test_bpc, note))
    if report["totals"]["rows"]:
        print("\n".join(rescore_lines(kept_rescores(results, report, with_test=getattr(args, "test", False)))))
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    tsv = args.tsv or default_tsv()
    try:
        return run_command(args, tsv)
    except Refusal as e:
        print(f"error: {e}", file=sys.stderr)
        if args.command in ("decide", "record"):
            note_refusal(tsv, args.command, args.log, e)
        return 2
    except BrokenPipeError:  # the reader went away (`| head`): what was done is done, the rest unread
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0
    except OSError as e:  # an unreadable input the subcommand did not name itself
        print(f"error: cannot read {e.filename or 'an input'}: {e.strerror or e}", file=sys.stderr)
        return 2
