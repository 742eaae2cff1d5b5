"""Print the README's synthvqa tables from the raw reports in this folder, and redraw the plot.

    python docs/results/synthvqa_readme.py [--plot docs/images/synthvqa_accuracy.png]

Reads synthvqa-{adaptive,budgets}.json and their fullpos- and srcpos- runs (`tools/eval.py`'s report.json),
coverage-synth3-{adaptive,32}.json (`tools/benchmark.py coverage --json`) and the newest
quant-accuracy-synth3-*.json (`tools/benchmark.py quant --json`), and prints Markdown: the per-type
tables, the three position layouts side by side, the coverage tables and the quantization accuracy table. The
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


def layout_table(compact: dict, full: dict, source: dict, none: dict) -> str:
    """Overall accuracy per method and budget in the three position layouts (bold: the best of the three),
    and how often `full` and `source` beat `compact`."""
    def cell(tag):
        runs = [compact.get(tag), full.get(tag + "-fullpos"), source.get(tag + "-srcpos")]
        if not all(runs):
            return ""
        best = max(r["score"] for r in runs)
        return " / ".join(f"**{r['score']:.1f}**" if r["score"] == best else f"{r['score']:.1f}" for r in runs)

    methods = sorted({s["method"] for s in full.values()} & {s["method"] for s in source.values()})
    lines = [f"`none`: {none['score']:.1f} (spatial {none['per_question_type']['spatial']:.1f}).", "",
             "| method | own count | 16 | 32 | 64 |", "|---|---|---|---|---|"]
    for m in methods:
        lines.append(f"| {m} | {cell(m)} | {cell(m + '-b16')} | {cell(m + '-b32')} | {cell(m + '-b64')} |")
    lines.append("")
    for name, runs, suffix in (("full", full, "-fullpos"), ("source", source, "-srcpos")):
        diffs = [r["score"] - compact[t[:-len(suffix)]]["score"] for t, r in runs.items()
                 if t.endswith(suffix) and t[:-len(suffix)] in compact]
        up, down = [d for d in diffs if d > 0], [d for d in diffs if d < 0]
        lines.append(f"- `{name}`: {len(up)} of {len(diffs)} runs higher than `compact` (by "
                     f"{min(up, default=0):.1f}-{max(up, default=0):.1f}), {len(down)} lower (by up to "
                     f"{-min(down, default=0):.1f}); mean change {sum(diffs) / max(len(diffs), 1):+.1f}.")
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
    full = _load("synthvqa-fullpos-adaptive.json")["summaries"] + _load("synthvqa-fullpos-budgets.json")["summaries"]
    source = _load("synthvqa-srcpos-adaptive.json")["summaries"] + _load("synthvqa-srcpos-budgets.json")["summaries"]
    none = _by_tag(adaptive)["none"]
    print("## Each method's own count\n\n" + _type_table(adaptive))
    print("\n## Budgets 16 / 32 / 64\n\n" + _type_table(budgets))
    print("\n## compact / full / source\n\n" + layout_table(_by_tag(adaptive + budgets), _by_tag(full),
                                                            _by_tag(source), none))
    print("\n## source, per question type\n\n" + _type_table(source))
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
