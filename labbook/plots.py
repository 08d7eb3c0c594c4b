"""The progress and memory plots of a results file, and training-loss curves of metrics.jsonl files.

matplotlib is imported inside new_figure: the report without plots, and `record`, never load it."""

import json
import sys
from pathlib import Path

from labbook import keeprule
from labbook.ledger import Refusal, results_repo
from labbook.report import baseline_row


def new_figure(width=12.0, height=6.0):
    """A figure on the Agg canvas, outside pyplot: nothing global, nothing shown."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def value_range(rows, baseline, best):
    """y limits that show the kept progress, not the worst discards."""
    values = [r.val_bpc for r in rows if r.measured] or [0.0, 1.0]  # a night of crashes only
    lo, hi = min(values), max(values)
    if baseline is not None and best is not None and baseline.measured:
        span = max(baseline.val_bpc - best, 1e-3)
        hi = min(hi, baseline.val_bpc + span)
        lo = min(lo, best - 0.15 * span)
    pad = max(hi - lo, 1e-3) * 0.05
    return lo - pad, hi + pad


def plot_progress(results, path, comparable=None):
    """Every run in order; the baseline, the running best and the title's best are the keep
    rule's over the comparable rows (flagged rows are drawn, never the best)."""
    rows = results.rows
    comparable = rows if comparable is None else comparable
    sound = {id(r) for r in comparable}
    baseline = baseline_row(comparable, results_repo(results.path))
    best = keeprule.best_commit(comparable)
    fig = new_figure()
    ax = fig.add_subplot()
    lo, hi = value_range(rows, baseline, best["mean"] if best else None)
    x = {id(r): i for i, r in enumerate(rows, start=1)}
    styles = {
        "discard": dict(color="0.6", s=18, label="discarded"),
        "keep": dict(color="tab:green", s=50, zorder=3, edgecolor="black", label="kept"),
    }
    for status, style in styles.items():
        chosen = [r for r in rows if r.status == status and not r.noise]
        ax.scatter([x[id(r)] for r in chosen], [min(r.val_bpc, hi) for r in chosen], **style)
    noise = [r for r in rows if r.noise and r.measured]
    if noise:
        ax.scatter([x[id(r)] for r in noise], [r.val_bpc for r in noise], facecolor="none", edgecolor="tab:blue", s=30)
        ax.scatter([], [], facecolor="none", edgecolor="tab:blue", label="noise replicates")
    crashes = [x[id(r)] for r in rows if r.status == "crash"]
    if crashes:
        ax.scatter(crashes, [lo + 0.02 * (hi - lo)] * len(crashes), marker="x", color="tab:red", s=40, label="crash")
    flagged = [r for r in rows if id(r) not in sound and r.measured]
    if flagged:
        ax.scatter([x[id(r)] for r in flagged], [min(r.val_bpc, hi) for r in flagged], marker="s",
                   facecolor="none", edgecolor="tab:orange", s=60, label="flagged by the audit")  # fmt: skip
    steps, running, best_so_far = [], [], None
    for row in rows:
        if row.status == "keep" and not row.noise and row.kind != "replicate" and id(row) in sound:
            best_so_far = row.val_bpc if best_so_far is None else min(best_so_far, row.val_bpc)
        if best_so_far is not None:
            steps.append(x[id(row)])
            running.append(best_so_far)
    ax.step(steps, running, where="post", color="tab:green", alpha=0.7, label="running best")
    for row in rows:
        if row.status == "keep" and not row.noise:
            label = row.description if len(row.description) <= 40 else row.description[:37] + "..."
            ax.annotate(
                label, (x[id(row)], row.val_bpc), xytext=(4, 6), textcoords="offset points", rotation=25, fontsize=7
            )
    ax.set_ylim(lo, hi)
    ax.set_xlabel("experiment (in the order recorded)")
    ax.set_ylabel("val_bpc (lower is better)")
    kept = sum(r.status == "keep" and not r.noise for r in rows)
    title = f": best {best['mean']:.6f} ({best['commit']}, mean of {best['runs']} runs)" if best else ""
    ax.set_title(f"{len(rows)} runs, {kept} kept" + title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.savefig(path, bbox_inches="tight")
    return Path(path)


def plot_memory(results, path):
    rows = results.rows
    fig = new_figure(12.0, 4.0)
    ax = fig.add_subplot()
    colors = {"keep": "tab:green", "discard": "0.6", "crash": "tab:red"}
    ax.bar(range(1, len(rows) + 1), [r.memory_gb for r in rows], color=[colors[r.status] for r in rows])
    crashes = [i for i, r in enumerate(rows, start=1) if r.status == "crash"]
    ax.scatter(crashes, [0] * len(crashes), marker="x", color="tab:red", s=40, zorder=3)
    for status, color in colors.items():
        ax.bar([0], [0], color=color, label=status)
    ax.set_xlim(0.3, len(rows) + 0.7)
    ax.set_xlabel("experiment (in the order recorded)")
    ax.set_ylabel("peak memory (GB)")
    ax.set_title("peak memory per experiment (crashes record 0)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.savefig(path, bbox_inches="tight")
    return Path(path)


def write_plots(results, out_dir, comparable=None):
    """progress.png and memory.png in `out_dir`; nothing for a file without rows."""
    if not results.rows:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = plot_progress(results, out_dir / "progress.png", comparable)
    return [progress, plot_memory(results, out_dir / "memory.png")]


def read_metrics(path):
    """(per-step rows, summary dict or None) of a metrics.jsonl; unreadable lines are skipped."""
    steps, summary = [], None
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("summary"), dict):
            summary = row["summary"]
        elif isinstance(row, dict) and {"time", "loss"} <= row.keys():
            steps.append(row)
    return steps, summary


def smoothed(values, beta=0.9):
    """Bias-corrected exponential moving average, as most training dashboards draw it."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta**i))
    return out


def plot_curves(paths, out):
    """Training loss against training time for one run, or several overlaid."""
    fig = new_figure(10.0, 6.0)
    ax = fig.add_subplot()
    drawn = 0
    for path in paths:
        steps, summary = read_metrics(path)
        if not steps:
            print(f"warning: {path} has no per-step rows: left out of the plot", file=sys.stderr)
            continue
        label = str(path) + (f" ({summary['commit']})" if summary and summary.get("commit") else "")
        times, losses = [s["time"] for s in steps], [s["loss"] for s in steps]
        (line,) = ax.plot(times, smoothed(losses), label=label)
        ax.plot(times, losses, color=line.get_color(), alpha=0.25, linewidth=0.8)
        drawn += 1
    if not drawn:
        raise Refusal("none of the metrics files has per-step rows: nothing to plot")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("training loss (nats per byte)")
    ax.set_title("training loss (smoothed; raw values faint)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(out, bbox_inches="tight")
    return Path(out)
