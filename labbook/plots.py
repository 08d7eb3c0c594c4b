"""The progress and memory plots of a results file, and training-loss curves of metrics.jsonl files.

matplotlib is imported inside new_figure: the report without plots, and `record`, never load it."""

import json
import statistics
import sys
from datetime import timedelta
from pathlib import Path

from labbook import keeprule
from labbook.audit import flag_rows
from labbook.base import Refusal, results_repo
from labbook.outcomes import commit_outcomes
from labbook.rescore import journal_entries, journal_path


def new_figure(width=12.0, height=6.0):
    """A figure on the Agg canvas, outside pyplot: nothing global, nothing shown."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


KIND_STYLE = {  # (marker, face colour, legend label); kept first runs are green, flagged rows ringed red
    "baseline": ("s", "black", "baseline"),
    "replicate": ("o", "none", "replicate (same commit, new seed)"),
    "experiment": ("o", "0.65", "experiment, discarded"),
    "simplification": ("v", "tab:purple", "simplification"),
    "confirm": ("D", "0.65", "confirmation run"),
}
KEPT_COLOR = "tab:green"


def commit_means(rows):
    """{commit: mean of its measured rows so far} over `rows`."""
    values = {}
    for row in rows:
        if row.measured:
            values.setdefault(row.commit, []).append(row.val_bpc)
    return {c: sum(v) / len(v) for c, v in values.items()}


def steps_of(rows, flagged):
    """(running best, reference) as [(x, value)] after each row, over the rows the audit did not
    flag. Both use only the runs up to each x: the running best is the lowest mean of the commits
    kept so far, each over its runs so far (a later replicate moves it where it ran, never before:
    so it can rise), and the reference is the tip's mean as it stood then."""
    best, reference, seen = [], [], []
    for x, row in enumerate(rows, start=1):
        if row.line not in flagged:
            seen.append(row)
        tip = keeprule.tip_commit(seen)
        if tip is None:
            continue
        now = commit_means(seen)
        kept = {r.commit for r in seen if r.status == "keep" and r.commit in now}
        best.append((x, min(now[c] for c in kept)))
        reference.append((x, now.get(tip)))
    return best, reference


def y_range(rows, flagged, best, reference):
    """y limits that follow the data: every measured value, the running best and the reference,
    except runs far above the kept commits' range (drawn at the edge, off-scale); a range narrower
    than the runs' noise is widened around its centre, so one run sits in the middle."""
    measured = [r.val_bpc for r in rows if r.measured and r.line not in flagged]
    if not measured:
        return 0.0, 1.0
    core = [v for _, v in best + reference if v is not None] or measured
    least = max(0.004 * statistics.median(measured), 1e-4)
    span = max(max(core) - min(core), least)
    shown = [v for v in measured if v <= max(core) + 4 * span] + core
    lo, hi = min(shown), max(shown)
    if hi - lo < least:
        middle = (hi + lo) / 2
        lo, hi = middle - least / 2, middle + least / 2
    pad = 0.06 * (hi - lo)
    return lo - pad, hi + pad


def progress_data(rows, flagged=()):
    """What plot_progress draws, as data: every non-crash row is a point (its y, the y it is drawn
    at, and whether that is the edge: off-scale), crashes on the floor, the running best and the
    reference as steps, the kept commits' labels, and the y limits."""
    flagged = set(flagged)
    kinds = dict((r.line, k) for r, k in keeprule.kinds(rows))
    best, reference = steps_of(rows, flagged)
    lo, hi = y_range(rows, flagged, best, reference)
    judged = keeprule.history([r for r in rows if r.line not in flagged])
    kept = {e["commit"] for e in judged if e["status"] == "keep"}
    points, crashes, labels = [], [], []
    for x, row in enumerate(rows, start=1):
        if not row.measured:
            crashes.append(x)
            continue
        shown = min(max(row.val_bpc, lo), hi)
        points.append(dict(x=x, y=row.val_bpc, shown=shown, offscale=shown != row.val_bpc, line=row.line,
                           kind=kinds[row.line], status=row.status, commit=row.commit,
                           kept=row.commit in kept and row.line not in flagged, flagged=row.line in flagged))  # fmt: skip
    deciding = {}
    for p in points:  # a kept commit is labelled at its last first/confirm run: where it was decided
        if p["kept"] and p["kind"] in ("experiment", "simplification", "confirm", "baseline"):
            deciding[p["commit"]] = p
    for p in deciding.values():
        row = next(r for r in rows if r.line == p["line"])
        labels.append(dict(x=p["x"], y=p["shown"], text=shorten(row.description.split(" (crash")[0], LABEL_CHARS)))
    kept_kinds = {e["commit"]: e["kind"] for e in judged if e["status"] == "keep"}
    return dict(points=points, crashes=crashes, best=best, reference=reference, labels=labels, ylim=(lo, hi),
                kept_kinds=kept_kinds)  # fmt: skip


LABEL_CHARS = 40  # a kept commit's label: an agent's one-line description, whole up to this


def shorten(text, width):
    return text if len(text) <= width else text[: width - 1] + "…"


MIN_RUNS_SHOWN = 10  # a short night's axis leaves room for the runs to come: one run is not a wide bar


def integer_ticks(ax, n):
    from matplotlib.ticker import MaxNLocator

    shown = max(n, MIN_RUNS_SHOWN)
    if shown <= 20:
        ax.set_xticks(range(1, shown + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=20))
    margin = max(0.7, 0.012 * shown)
    ax.set_xlim(1 - margin, shown + margin)


def plural(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


def progress_title(data, n_rows):
    """What the night kept, in words: the baseline, the improvements and the simplifications (kept
    because simpler, never gains) counted apart."""
    kinds = list(data["kept_kinds"].values())
    improvements = sum(k == "experiment" for k in kinds)
    simplifications = sum(k == "simplification" for k in kinds)
    kept = "the baseline" if "baseline" in kinds else "no baseline"
    kept += f", {plural(improvements, 'kept improvement')} and {plural(simplifications, 'kept simplification')}"
    best = f"; best mean {data['best'][-1][1]:.6f}" if data["best"] else ""
    return f"{plural(n_rows, 'run')}: {kept}{best}"


LABEL_SIZE = 7  # points: the kept commits' labels above the value axes


def progress_figure(results, flagged=None):
    """The progress figure: every run on the value axes, crashes in a strip of their own below them
    (a crash has no value), the kept commits named above the axes."""
    rows = results.rows
    flagged = set(flagged_lines(results) if flagged is None else flagged)
    data = progress_data(rows, flagged)
    lo, hi = data["ylim"]
    fig = new_figure(13.0, 6.5)
    if data["crashes"]:
        ax, strip = fig.subplots(2, 1, sharex=True, gridspec_kw=dict(height_ratios=[14, 1], hspace=0.08))
    else:
        ax, strip = fig.add_subplot(), None
    by_commit = {}
    for p in data["points"]:
        by_commit.setdefault(p["commit"], []).append(p)
    for runs in by_commit.values():  # a commit's runs, joined by a thin line
        if len(runs) > 1:
            ax.plot([p["x"] for p in runs], [p["shown"] for p in runs], color="0.75", linewidth=0.6, zorder=1)
    for kind, (marker, face, label) in KIND_STYLE.items():
        for kept in (False, True):
            chosen = [p for p in data["points"] if p["kind"] == kind and p["kept"] == kept and not p["offscale"]]
            if not chosen:
                continue
            color = KEPT_COLOR if kept and kind not in ("baseline", "replicate") else face
            edge = "tab:blue" if kind == "replicate" else "black"
            text = label if not kept or kind in ("baseline", "replicate") else f"{kind}, kept"
            text = text.replace("experiment, kept", "experiment, kept (first run)")
            ax.scatter([p["x"] for p in chosen], [p["shown"] for p in chosen], marker=marker, s=46 if kept else 26,
                       facecolor=color, edgecolor=edge, linewidth=0.7, zorder=3, label=text)  # fmt: skip
    off = [p for p in data["points"] if p["offscale"]]
    if off:
        up = [p for p in off if p["y"] > hi]
        down = [p for p in off if p["y"] < lo]
        for chosen, marker, va, dy in ((up, "^", "top", -9), (down, "v", "bottom", 9)):
            if chosen:
                ax.scatter(
                    [p["x"] for p in chosen],
                    [p["shown"] for p in chosen],
                    marker=marker,
                    s=40,
                    color="0.4",
                    zorder=4,
                    clip_on=False,
                    label="off-scale (value written)" if chosen is up or not up else None,
                )
            for p in chosen:
                ax.annotate(f"{p['y']:.3f}", (p["x"], p["shown"]), xytext=(0, dy), textcoords="offset points",
                            ha="center", va=va, fontsize=6, color="0.3", rotation=90)  # fmt: skip
    flagged_points = [p for p in data["points"] if p["flagged"]]
    if flagged_points:
        ax.scatter(
            [p["x"] for p in flagged_points],
            [p["shown"] for p in flagged_points],
            marker="o",
            s=150,
            facecolor="none",
            edgecolor="tab:red",
            linewidth=1.5,
            zorder=5,
            label="flagged by the audit (never counts)",
        )
    if data["best"]:
        xs, ys = zip(*data["best"])
        ax.step(xs, ys, where="post", color=KEPT_COLOR, linewidth=1.8, alpha=0.8,
                label="running best (a kept commit's mean over its runs so far)")  # fmt: skip
    if data["reference"]:
        xs, ys = zip(*data["reference"])
        ax.step(xs, ys, where="post", color="tab:blue", linewidth=1.0, linestyle="--",
                label=f"reference (the tip's mean; now {ys[-1]:.4f})")  # fmt: skip
    if strip is not None:
        strip.scatter(data["crashes"], [0.5] * len(data["crashes"]), marker="x", color="tab:red", s=40)
        strip.set_ylim(0, 1)
        strip.set_yticks([])
        strip.set_ylabel("crash", rotation=0, ha="right", va="center")
        ax.scatter([], [], marker="x", color="tab:red", s=40, label="crash (below: it has no value)")
    label_band = 0
    for lab in data["labels"]:
        ax.annotate(lab["text"], (lab["x"], 1.0), xycoords=("data", "axes fraction"), xytext=(0, 4),
                    textcoords="offset points", rotation=45, ha="left", va="bottom", fontsize=LABEL_SIZE,
                    color="darkgreen", annotation_clip=False)  # fmt: skip
        ax.plot([lab["x"], lab["x"]], [lab["y"], hi], color="darkgreen", linewidth=0.4, linestyle=":", zorder=1)
        label_band = max(label_band, 0.5 * LABEL_SIZE * len(lab["text"]) * 0.71 + LABEL_SIZE)
    ax.set_ylim(lo, hi)
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    bottom = strip if strip is not None else ax
    integer_ticks(bottom, len(rows))
    bottom.set_xlabel("run (in the order recorded)")
    ax.set_ylabel("val_bpc (lower is better)")
    ax.set_title(progress_title(data, len(rows)), pad=6 + label_band)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return fig


def alt_text(fig):
    """What a figure shows, in words, for a reader who cannot see it: its title, axes and ranges,
    and what its legend names (the notebook's alternative text for the image)."""
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    legend = ax.get_legend()
    names = [t.get_text() for t in legend.get_texts()] if legend else []
    return (
        f"{ax.get_title()}. y: {ax.get_ylabel()}, {lo:.4g} to {hi:.4g}. x: {fig.axes[-1].get_xlabel() or 'time of day'}."
        + (f" Shown: {'; '.join(names)}." if names else "")
    )


def save(fig, path):
    """The figure as a PNG whose Description (a tEXt chunk) is its alternative text (png_alt)."""
    fig.savefig(path, bbox_inches="tight", metadata={"Description": alt_text(fig)})
    return Path(path)


def png_alt(path):
    """The alternative text `save` wrote into a PNG (its Description tEXt chunk), or its file name."""
    data = Path(path).read_bytes()
    at = 8  # after the PNG signature: chunks of (length, type, data, crc)
    while at + 8 <= len(data):
        length, kind = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8]
        key, _, text = data[at + 8 : at + 8 + length].partition(b"\0")
        if kind == b"tEXt" and key == b"Description":
            return text.decode("latin-1")
        if kind == b"iTXt" and key == b"Description":  # text beyond latin-1: flags, language, keyword, UTF-8
            return text[2:].split(b"\0", 2)[-1].decode("utf-8", errors="replace")
        at += 12 + length
    return Path(path).name


def plot_progress(results, path, flagged=None):
    return save(progress_figure(results, flagged), path)


def journal_memory_mb(results):
    """{run_id: peak memory in MB} as the run's summary measured it (the journal's), unrounded."""
    journal = journal_path(results_repo(results.path))
    entries = journal_entries(journal).values() if journal else []
    out = {}
    for entry in filter(None, entries):
        try:
            out[entry["run_id"]] = float(entry.get("summary", {})["peak_vram_mb"])
        except (KeyError, TypeError, ValueError):
            continue
    return out


def memory_data(rows, flagged=(), exact_mb=None):
    """[(x, memory in MB, exact, outcome, kind, commit, flagged)] for every row (crashes record 0).
    `exact` when the journal had the run's unrounded peak; else the row's 0.1 GB. `outcome` is the
    commit's (outcomes.commit_outcomes): a first run of a commit kept later is a kept commit's run."""
    kinds = dict((r.line, k) for r, k in keeprule.kinds(rows))
    fate = commit_outcomes([r for r in rows if r.line not in set(flagged)])
    exact_mb = exact_mb or {}
    out = []
    for x, r in enumerate(rows, start=1):
        mb = exact_mb.get(r.extra.get("run_id", "").strip()) if r.measured else None
        outcome = "crash" if r.status == "crash" else fate.get(r.commit, r.status)
        out.append(dict(x=x, memory=mb if mb is not None else r.memory_gb * 1024, exact=mb is not None,
                        outcome=outcome, status=r.status, kind=kinds[r.line], commit=r.commit,
                        flagged=r.line in set(flagged)))  # fmt: skip
    return out


def memory_measure(rows):
    """(y label, title) for where the rows ran: CUDA's allocator peak on a GPU, the trainer
    process's peak resident memory on a CPU (what prepare.peak_memory_mb reads)."""
    devices = {r.extra.get("device", "").strip() for r in rows if r.measured} - {""}
    if devices and all(d.startswith("cuda") for d in devices):
        gpus = sorted({r.extra.get("gpu", "").strip() for r in rows if r.measured} - {""})
        return "peak memory allocated (GB)", f"peak CUDA memory allocated per run ({', '.join(gpus) or 'GPU'})"
    where = "CPU" if devices == {"cpu"} else " and ".join(sorted(devices)) or "device not recorded"
    return (
        "peak resident memory (MB)",
        f"peak resident memory of the trainer process per run ({where}: ru_maxrss, with torch and the data)",
    )


def memory_figure(results, flagged=None):
    rows = results.rows
    data = memory_data(rows, flagged_lines(results) if flagged is None else flagged, journal_memory_mb(results))
    ylabel, title = memory_measure(rows)
    scale = 1024 if "GB" in ylabel else 1  # the data are in MB
    if scale == 1 and not all(d["exact"] for d in data if d["status"] != "crash"):  # GB rows: 0.1 GB of MB
        title += "; rows without a journal entry rounded to 0.1 GB"
    fig = new_figure(13.0, 4.5)
    ax = fig.add_subplot()
    styles = (("keep", KEPT_COLOR, "run of a kept commit"), ("pending", "tab:olive", "run of a commit awaiting its confirmation"),
              ("discard", "0.6", "run of a discarded commit"))  # fmt: skip
    for outcome, color, label in styles:
        chosen = [d for d in data if d["outcome"] == outcome]
        if chosen:
            ax.bar([d["x"] for d in chosen], [d["memory"] / scale for d in chosen], color=color, label=label, width=0.8)
    flagged_bars = [d for d in data if d["flagged"]]
    if flagged_bars:
        ax.bar([d["x"] for d in flagged_bars], [d["memory"] / scale for d in flagged_bars], fill=False, hatch="///",
               edgecolor="tab:red", width=0.8, label="flagged by the audit")  # fmt: skip
    crashes = [d["x"] for d in data if d["status"] == "crash"]
    if crashes:
        ax.scatter(crashes, [0] * len(crashes), marker="x", color="tab:red", s=40, zorder=3, clip_on=False,
                   label="crash (no memory recorded)")  # fmt: skip
    top = max([d["memory"] / scale for d in data] + [1.0])
    shown = set()
    for d in data:  # each commit named once, at its first run
        if d["commit"] not in shown and d["status"] != "crash":
            shown.add(d["commit"])
            ax.annotate(d["commit"], (d["x"], d["memory"] / scale), xytext=(0, 2), textcoords="offset points",
                        rotation=90, ha="center", va="bottom", fontsize=6 if len(data) > 40 else 7)  # fmt: skip
    ax.set_ylim(0, top * 1.25)
    integer_ticks(ax, len(rows))
    ax.set_xlabel("run (in the order recorded); each commit named at its first run")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(alpha=0.3, axis="y")
    return fig


def plot_memory(results, path, flagged=None):
    return save(memory_figure(results, flagged), path)


TIMELINE_COLORS = {"new idea, kept": KEPT_COLOR, "new idea, not kept": "0.6",
                   "baseline, replicate or confirmation": "tab:blue", "crash": "tab:red"}  # fmt: skip


def timeline_figure(line):
    """Runs per bin (the bin fits the night: morning.bin_minutes), stacked by what each run was, and
    the idle gaps, from morning.timeline(): a replicate or a confirmation is never counted as a keep."""
    fig = new_figure(13.0, 4.0)
    ax = fig.add_subplot()
    width = line["minutes"]
    starts = [b * width for b, _ in line["bins"]]
    bottom = [0] * len(starts)
    for name, color in TIMELINE_COLORS.items():
        counts = [c[name] for _, c in line["bins"]]
        if any(counts):
            ax.bar([x + width / 2 for x in starts], counts, bottom=bottom, width=0.9 * width, color=color, zorder=2,
                   label=f"{name} ({sum(counts)})")  # fmt: skip
        bottom = [b + c for b, c in zip(bottom, counts)]
    ax.scatter([a for a, _ in line["runs"]], [-0.4] * len(line["runs"]), marker="|", color="black", s=60,
               label="a recorded run", clip_on=False)  # fmt: skip
    for i, (a, b, minutes) in enumerate(line["gaps"]):
        ax.axvspan(a, b, color="tab:orange", alpha=0.25, zorder=0, label="idle gap" if i == 0 else None)
        ax.annotate(f"idle {minutes} min", ((a + b) / 2, max(bottom) * 1.2 + 0.5), ha="center", va="bottom",
                    fontsize=8, zorder=3)  # fmt: skip
    edges = starts + [starts[-1] + width]
    step = max(1, len(edges) // 12)  # at most a dozen tick labels
    ax.set_xticks(edges[::step])
    ax.set_xticklabels([f"{line['start'] + timedelta(minutes=m):%H:%M}" for m in edges[::step]], fontsize=8)
    ax.set_xlim(0, edges[-1])
    ax.set_ylim(-0.8, max(bottom) * 1.45 + 1.5)
    ax.yaxis.get_major_locator().set_params(integer=True)
    per = f"{width} minutes" if width < 60 else "hour" if width == 60 else f"{width // 60} hours"
    ax.set_ylabel(f"runs per {per}")
    size = f"{width}-minute" if width < 60 else f"{width // 60}-hour"
    ax.set_title(f"the night in {size} bins: {plural(len(line['runs']), 'run')}")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(alpha=0.3, axis="y")
    return fig


def plot_timeline(line, path):
    return save(timeline_figure(line), path)


def flagged_lines(results):
    """The lines the audit flags (never the baseline, a reference or the best), in order."""
    return sorted(flag_rows(results.rows, results_repo(results.path))[1]) if results.rows else []


def write_plots(results, out_dir, flagged=None):
    """progress.png and memory.png in `out_dir`; nothing for a file without rows."""
    if not results.rows:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    flagged = flagged_lines(results) if flagged is None else flagged
    return [
        plot_progress(results, out_dir / "progress.png", flagged),
        plot_memory(results, out_dir / "memory.png", flagged),
    ]


def read_metrics(path):
    """(per-step rows, summary dict or None) of a metrics.jsonl; unreadable lines are skipped.
    A missing or unreadable file is a Refusal (one `error:` line from the command line)."""
    try:
        text = Path(path).read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise Refusal(f"cannot read {path}: {e.strerror or e}") from None
    steps, summary = [], None
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("summary"), dict):
            summary = row["summary"]
        elif isinstance(row, dict) and {"time", "loss"} <= row.keys():
            try:
                steps.append({**row, "time": float(row["time"]), "loss": float(row["loss"])})
            except (TypeError, ValueError):
                continue
    return steps, summary


def smoothed(values, window=None):
    """A centred moving average whose window keeps its width at the ends, slid inside the series
    (no lag as a trailing EMA has, and no fewer values to average there). Not forced onto the first or last raw loss: one noisy last step
    would drag the line's end, making a run look worse (or better) at the end than its trend; the
    plot marks the last raw loss apart."""
    n = len(values)
    half = max(1, n // 40) if window is None else window // 2
    prefix = [0.0]
    for v in values:
        prefix.append(prefix[-1] + v)
    out = []
    for i in range(n):
        width = min(n, 2 * half + 1)
        lo = min(max(0, i - half), n - width)
        out.append((prefix[lo + width] - prefix[lo]) / width)
    return out


def curve_axis(paths):
    """ "step" when a run's budget was counted in steps (AR_STEPS: its seconds measure the machine's
    load, not the work), else "time"."""
    budgets = [(read_metrics(p)[1] or {}).get("budget", "") for p in paths]
    return "step" if any(str(b).strip().endswith("steps") for b in budgets) else "time"


def curve_data(paths, labels=None, x="time"):
    """[(label, xs, raw losses, smoothed losses)] of the metrics files with per-step rows, x the
    rows' `time` or `step`, and the warnings for those without."""
    curves, warnings = [], []
    for i, path in enumerate(paths):
        steps, summary = read_metrics(path)
        if not steps:
            warnings.append(f"{path} has no per-step rows: left out of the plot")
            continue
        label = labels[i] if labels else str(path)
        if summary and summary.get("commit") and not labels:
            label += f" ({summary['commit']})"
        losses = [s["loss"] for s in steps]
        xs = (
            [float(s.get("step", n)) for n, s in enumerate(steps, start=1)]
            if x == "step"
            else [s["time"] for s in steps]
        )
        curves.append((label, xs, losses, smoothed(losses)))
    return curves, warnings


ZOOM_FROM = 0.1  # the y axis fits every curve from this share of the shortest run's x on


def curve_ylim(curves):
    """(lo, hi, x0): y limits that hold every smoothed curve from x0 on, x0 a share of the shortest
    curve's span, the same for all: no curve loses its early part to another's zoom."""
    x0 = ZOOM_FROM * min(xs[-1] for _, xs, _, _ in curves)
    shown = [v for _, xs, _, smooth in curves for x, v in zip(xs, smooth) if x >= x0]
    lo, hi = min(shown), max(shown)
    return lo - 0.05 * (hi - lo + 1e-9), hi + 0.1 * (hi - lo + 1e-9), x0


def plot_curves(paths, out, labels=None):
    """Training loss against training time for one run, or several overlaid (the best against the
    baseline in the notebook), against steps when the runs' budget was steps (AR_STEPS). Refusal
    for missing inputs, no steps, or an unwritable `out`."""
    x = curve_axis(paths) if all(Path(p).is_file() for p in paths) else "time"
    curves, warnings = curve_data(paths, labels, x)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if not curves:
        raise Refusal("none of the metrics files has per-step rows: nothing to plot")
    try:
        fig = new_figure(11.0, 5.5)
    except ImportError:
        raise Refusal("matplotlib is not installed: pip install -e '.[analysis]'") from None
    ax = fig.add_subplot()
    for label, xs, losses, smooth in curves:
        (line,) = ax.plot(xs, smooth, label=f"{label}: smoothed, ends at {smooth[-1]:.4f}", linewidth=1.6)
        ax.plot(xs, losses, color=line.get_color(), alpha=0.2, linewidth=0.7)
        ax.scatter([xs[-1]], [losses[-1]], color=line.get_color(), zorder=3, s=20,
                   label=f"{label}: last step's raw loss {losses[-1]:.4f}")  # fmt: skip
    lo, hi, x0 = curve_ylim(curves)  # the early, steep part would squash the end of training into a line
    ax.set_ylim(lo, hi)
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    start = f"step {x0:.3g}" if x == "step" else f"{x0:.3g} s"
    ax.set_xlabel("training step (AR_STEPS: a step-counted budget)" if x == "step" else "training time (s)")
    ax.set_ylabel("training loss (nats per byte)")
    ax.set_title(
        "training loss: centred moving average, raw values faint, the last step's raw loss a dot; "
        f"y fits every curve from {start} on"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    try:
        return save(fig, out)
    except OSError as e:
        raise Refusal(f"cannot write {out}: {e.strerror or e}") from None
