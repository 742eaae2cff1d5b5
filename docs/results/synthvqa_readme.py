"""Print the README's synthvqa tables from the raw reports in this folder, and redraw the plot.

    python docs/results/synthvqa_readme.py [--plot docs/images/synthvqa_accuracy.png]

Reads synthvqa-{adaptive,budgets,fullpos-adaptive,fullpos-budgets}.json (`tools/eval.py`'s report.json),
coverage-synth3-{adaptive,32}.json (`tools/benchmark.py coverage --json`) and the newest
quant-accuracy-synth3-*.json (`tools/benchmark.py quant --json`), and prints Markdown: the per-type
tables, the compact/full comparison, the coverage tables and the quantization accuracy table. The
tables are the tools' own (paddle_rc.eval.report, paddle_rc.benchmark); this script only joins them.
"""
import argparse
import glob
import json
import os

from paddle_rc.benchmark.coverage import format_coverage_table
from paddle_rc.eval.report import build_rows, plot_png, question_type_tables

HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name):
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return json.load(f)


def _type_table(summaries) -> str:
    return "\n".join(question_type_tables(summaries)[3:])  # without the "synthvqa per question type:" title


def _by_tag(summaries) -> dict:
    return {s["tag"]: s for s in summaries}


def fullpos_table(compact: dict, full: dict, none: dict) -> str:
    """Overall accuracy per method and budget, compact / full (bold where full is higher)."""
    def cell(tag):
        c, f = compact.get(tag), full.get(tag + "-fullpos") or full.get(tag)
        if not c or not f:
            return ""
        fs = f"**{f['score']:.1f}**" if f["score"] > c["score"] else f"{f['score']:.1f}"
        return f"{c['score']:.1f} / {fs}"

    methods = sorted({s["method"] for s in full.values()})
    lines = [f"`none`: {none['score']:.1f} (count {none['per_question_type']['count']:.1f}).", "",
             "| method | own compact / full | 16 compact / full | 32 compact / full | 64 compact / full |",
             "|---|---|---|---|---|"]
    for m in methods:
        lines.append(f"| {m} | {cell(m)} | {cell(m + '-b16')} | {cell(m + '-b32')} | {cell(m + '-b64')} |")
    diffs = [f["score"] - compact[t.replace("-fullpos", "")]["score"] for t, f in full.items()
             if t.replace("-fullpos", "") in compact]
    up, down = [d for d in diffs if d > 0], [d for d in diffs if d < 0]
    lines += ["", f"{len(up)} of {len(diffs)} runs higher with `full` (by {min(up, default=0):.1f}-"
              f"{max(up, default=0):.1f}), {len(down)} lower (by up to {-min(down, default=0):.1f})."]
    return "\n".join(lines)


def quant_table(result: dict) -> str:
    acc = result["demo"]["accuracy"]
    types = ("colour", "shape", "word", "count", "exist", "spatial")
    lines = ["| weights | method | visual tokens | overall | " + " | ".join(types) + " |",
             "|---" * (4 + len(types)) + "|"]
    for prec, runs in acc.items():
        for method, r in runs.items():
            lines.append(f"| {prec} | {method} | {r['mean_visual_tokens']:.1f} | {r['accuracy']:.1f} | "
                         + " | ".join(f"{r['per_type'][t]:.1f}" for t in types) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plot", help="write the accuracy-against-tokens plot here")
    args = ap.parse_args()
    adaptive = _load("synthvqa-adaptive.json")["summaries"]
    budgets = _load("synthvqa-budgets.json")["summaries"]
    full_a = _load("synthvqa-fullpos-adaptive.json")["summaries"]
    full_b = _load("synthvqa-fullpos-budgets.json")["summaries"]
    none = _by_tag(adaptive)["none"]
    print("## Each method's own count\n\n" + _type_table(adaptive))
    print("\n## Budgets 16 / 32 / 64\n\n" + _type_table(budgets))
    print("\n## compact / full\n\n" + fullpos_table(_by_tag(adaptive + budgets), _by_tag(full_a + full_b), none))
    for name in ("coverage-synth3-adaptive.json", "coverage-synth3-32.json"):
        print(f"\n## {name}\n\n" + format_coverage_table(_load(name)))
    quant = sorted(glob.glob(os.path.join(HERE, "quant-accuracy-synth3-*.json")))[-1]
    print(f"\n## {os.path.basename(quant)}\n\n" + quant_table(_load(os.path.basename(quant))))
    if args.plot:
        data = plot_png(build_rows(budgets + [none]), {"synthvqa"})
        with open(args.plot, "wb") as f:
            f.write(data)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
