"""Tables (Markdown, CSV, JSON) and a score-vs-tokens picture from run summaries."""
import csv
import glob
import io
import json
import os
import re
from collections import defaultdict

from .io import atomic_write_bytes, atomic_write_json, atomic_write_text

STAGES = ("vision", "prefill", "decode")
COLUMNS = ["benchmark", "metric", "tag", "method", "budget", "score", "rel_to_none_pct",
           "avg_visual_tokens", "unmapped_pct", "n_answered", "n_items", "partial"] + \
          [f"{s}_s" for s in STAGES]


def partial_reason(summary):
    """Why a summary's headline covers less than the whole benchmark, or '' when it does not."""
    parts = []
    if summary.get("partial"):
        parts.append(f"{summary.get('coverage')} answered")
    missing = summary.get("missing_subtasks")
    if summary.get("benchmark") == "mme" and summary.get("subtasks_in_data"):
        n_in = len(summary["subtasks_in_data"])
        if summary.get("n_subtasks_answered", n_in) < n_in:
            parts.append(f"{summary['n_subtasks_answered']}/{n_in} subtasks")
    if summary.get("missing_splits"):
        parts.append("no answers in split " + ",".join(summary["missing_splits"]))
    return "; ".join(parts)


def build_rows(summaries):
    """One row per (benchmark score, run tag). Extra headline scores (MME cognition and total,
    POPE accuracy) get rows of their own. ``rel_to_none_pct`` = score / score of the ``none``
    run on the same benchmark x 100, the "Avg %" convention of the pruning papers."""
    rows = []
    for s in summaries:
        if s.get("score") is None and s.get("n_items") is None:
            continue
        timings = s.get("mean_timings") or {}
        common = {"tag": s.get("tag"), "method": s.get("method"), "budget": s.get("budget"),
                  "avg_visual_tokens": s.get("avg_visual_tokens"),
                  "n_answered": s.get("n_answered"), "n_items": s.get("n_items"),
                  "partial": partial_reason(s) or None,
                  **{f"{st}_s": timings.get(st) for st in STAGES}}
        unmapped = s.get("unmapped_ratio")
        rows.append({"benchmark": s["benchmark"], "metric": s.get("metric", ""),
                     "score": s["score"],
                     "unmapped_pct": 100.0 * unmapped if unmapped is not None else None,
                     **common})
        for label, value in (s.get("extra_scores") or {}).items():
            if value is None:
                continue
            rows.append({"benchmark": label, "metric": label, "score": value,
                         "unmapped_pct": None, **common})
    base = {}
    for r in rows:
        if r["method"] == "none" or r["tag"] == "none":
            base[r["benchmark"]] = r["score"]
    for r in rows:
        b = base.get(r["benchmark"])
        r["rel_to_none_pct"] = 100.0 * r["score"] / b if b and r["score"] is not None else None
    rows.sort(key=lambda r: (r["benchmark"], r["tag"] != "none", str(r["method"]),
                             r["budget"] if isinstance(r["budget"], (int, float)) else -1,
                             str(r["tag"])))
    return [{c: r.get(c) for c in COLUMNS} for r in rows]


def mean_relative(rows, benchmarks=None):
    """{tag: (mean rel %, [benchmarks used])} over the main benchmark rows."""
    per_tag = defaultdict(list)
    for r in rows:
        if r["rel_to_none_pct"] is None:
            continue
        if benchmarks is not None and r["benchmark"] not in benchmarks:
            continue
        per_tag[r["tag"]].append((r["benchmark"], r["rel_to_none_pct"]))
    return {t: (sum(v for _, v in xs) / len(xs), [b for b, _ in xs]) for t, xs in per_tag.items()}


def _fmt(v, digits=2):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def to_markdown(rows, summaries=()):
    head = ["benchmark", "run", "score", "vs none (%)", "avg visual tokens", "vision s",
            "prefill s", "decode s", "answered"]
    lines = ["# Evaluation report", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        extra = f" (unmapped {r['unmapped_pct']:.1f}%)" if r["unmapped_pct"] is not None else ""
        lines.append("| " + " | ".join([
            r["benchmark"], str(r["tag"]), _fmt(r["score"]) + extra, _fmt(r["rel_to_none_pct"], 1),
            _fmt(r["avg_visual_tokens"], 1), _fmt(r["vision_s"], 4), _fmt(r["prefill_s"], 4),
            _fmt(r["decode_s"], 4), f"{r['n_answered']}/{r['n_items']}"
            + (f" (partial: {r['partial']})" if r["partial"] else "")]) + " |")
    main = {s["benchmark"] for s in summaries if s.get("score") is not None}
    rel = mean_relative(rows, main or None)
    if rel:
        lines += ["", "Mean of (score / none) over the benchmarks listed (MME counted as "
                  "perception score / vanilla):", ""]
        for tag, (v, benches) in sorted(rel.items()):
            lines.append(f"- {tag}: {v:.1f}% over {', '.join(sorted(benches))}")
    lines += question_type_tables(summaries)
    metrics = sorted({(s['benchmark'], s.get('metric', '')) for s in summaries})
    if metrics:
        lines += ["", "Metrics:", ""] + [f"- {b}: {m}" for b, m in metrics]
    notes = sorted({n for s in summaries for n in (s.get("notes") or []) + [s.get("note")] if n})
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def question_type_tables(summaries, max_types=12):
    """Markdown lines: per benchmark with a few question types (synthvqa), one row per run with the
    overall score, each type's score, the mean visual tokens and the vision / prefill seconds."""
    by_bench = defaultdict(list)
    for s in summaries:
        types = s.get("per_question_type")
        if s.get("score") is not None and types and len(types) <= max_types:
            by_bench[s["benchmark"]].append(s)
    lines = []
    for bench, runs in sorted(by_bench.items()):
        types = sorted({t for s in runs for t in s["per_question_type"]})
        head = ["run", "tokens", "overall"] + types + ["vision s", "prefill s"]
        lines += ["", f"{bench} per question type:", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        runs = sorted(runs, key=lambda s: (s.get("tag") != "none", str(s.get("method")),
                                           s["budget"] if isinstance(s.get("budget"), (int, float)) else -1))
        for s in runs:
            t = s.get("mean_timings") or {}
            lines.append("| " + " | ".join(
                [str(s.get("tag")), _fmt(s.get("avg_visual_tokens"), 1), _fmt(s["score"], 1)]
                + [_fmt(s["per_question_type"].get(k), 1) for k in types]
                + [_fmt(t.get("vision"), 4), _fmt(t.get("prefill"), 4)]) + " |")
    return lines


def to_csv(rows):
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


def _series(row) -> str:
    """A plot line: the run tag without its budget (rc-b16 and rc-b64 are one line; rc-b16-fullpos,
    the same method with the other position layout, another)."""
    tag = str(row["tag"] or row["method"])
    return re.sub(r"-b\d+(?=-|$)", "", tag)


def plot_png(rows, main_benchmarks=None):
    """Score against average visual tokens, one panel per benchmark, one line per method, the
    ``none`` run as a dashed reference. Returns PNG bytes, or None when there is nothing to
    compare (fewer than two runs on every benchmark)."""
    pts = [r for r in rows if r["avg_visual_tokens"] is not None and r["score"] is not None
           and (main_benchmarks is None or r["benchmark"] in main_benchmarks)]
    by_bench = defaultdict(list)
    for r in pts:
        by_bench[r["benchmark"]].append(r)
    by_bench = {b: rs for b, rs in by_bench.items() if len({r["tag"] for r in rs}) >= 2}
    if not by_bench:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(by_bench)
    cols = min(3, n)
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(6.0 * cols, 3.7 * nrows), squeeze=False)
    methods = sorted({_series(r) for r in pts} - {"none"})
    markers = "osD^vP<>Xh"
    for ax, (bench, rs) in zip(axes.flat, sorted(by_bench.items())):
        base = [r for r in rs if r["tag"] == "none"]
        if base:
            b = base[0]
            ax.axhline(b["score"], color="0.3", ls="--", lw=1,
                       label=f"none ({b['avg_visual_tokens']:.0f} tok)")
            ax.plot([b["avg_visual_tokens"]], [b["score"]], marker="*", ms=12, color="0.3",
                    ls="none")
        for i, m in enumerate(methods):
            mine = sorted([r for r in rs if _series(r) == m],
                          key=lambda r: r["avg_visual_tokens"])
            if not mine:
                continue
            ax.plot([r["avg_visual_tokens"] for r in mine], [r["score"] for r in mine],
                    marker=markers[i % len(markers)], ms=8 - 1.5 * (i % 3), lw=1.5, alpha=0.85,
                    color=plt.cm.tab10(i % 10), label=m)
        ax.set_title(bench)
        ax.set_xlabel("avg visual tokens kept")
        ax.set_ylabel("score")
        ax.grid(alpha=0.3)
        # beside the panel: inside, it hid the points of the best methods (top left, few tokens)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def read_summaries(out_dir):
    """Every ``<benchmark>/<run>.summary.json`` under ``out_dir``, in path order."""
    out = []
    for path in sorted(glob.glob(os.path.join(out_dir, "*", "*.summary.json"))):
        try:
            with open(path, "r", encoding="utf-8") as f:
                s = json.load(f)
        except (OSError, ValueError):
            continue  # not ours, or half-written by a tool other than this one
        if isinstance(s, dict) and "benchmark" in s:
            out.append(s)
    return out


def rebuild_report(out_dir, name="report"):
    """The report of everything in ``out_dir``: a narrower rerun does not shrink it, and tables
    and picture always come from the same summaries."""
    return write_report(read_summaries(out_dir), out_dir, name)


def write_report(summaries, out_dir, name="report"):
    """Write report.md/.csv/.json (and .png when runs can be compared, removing a stale one
    otherwise); returns the paths."""
    rows = build_rows(summaries)
    paths = {}
    paths["md"] = os.path.join(out_dir, name + ".md")
    atomic_write_text(paths["md"], to_markdown(rows, summaries))
    paths["csv"] = os.path.join(out_dir, name + ".csv")
    atomic_write_text(paths["csv"], to_csv(rows))
    paths["json"] = os.path.join(out_dir, name + ".json")
    atomic_write_json(paths["json"], {"rows": rows, "summaries": summaries})
    png = plot_png(rows, {s["benchmark"] for s in summaries if s.get("score") is not None})
    png_path = os.path.join(out_dir, name + ".png")
    if png is not None:
        paths["png"] = png_path
        atomic_write_bytes(png_path, png)
    elif os.path.exists(png_path):
        os.unlink(png_path)
    return paths
