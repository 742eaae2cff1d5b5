"""Measured costs, as ratios within one run (absolute seconds depend on the machine).

    python tools/benchmark.py vision [--methods rc,none,...] [--repeats 5]   # tower + compression overhead
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddle_rc.cli import run  # noqa: E402

ALL_METHODS = "none,random,cls-topk,prumerge,prumerge+,visionzip,divprune,rc,rc-reference"


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    v = sub.add_parser("vision", help="vision tower time with each compression method vs without")
    v.add_argument("--methods", default=ALL_METHODS)
    v.add_argument("--repeats", type=int, default=5)
    v.add_argument("--batch", type=int, default=1)
    v.add_argument("--budget", type=int)
    v.add_argument("--width", type=int, default=1024, help="ViT width (ViT-L: 1024)")
    v.add_argument("--layers", type=int, default=24, help="ViT layers (ViT-L: 24)")
    v.add_argument("--heads", type=int, default=16)
    v.add_argument("--image-size", type=int, default=336)
    v.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.mode == "vision":
        from paddle_rc.benchmark.vision import format_vision_table, run_vision_benchmark

        rows = run_vision_benchmark([m.strip() for m in args.methods.split(",") if m.strip()],
                                    width=args.width, layers=args.layers, heads=args.heads,
                                    image_size=args.image_size, batch=args.batch, repeats=args.repeats,
                                    budget=args.budget)
        print(format_vision_table(rows))
        _write_json(args.json, rows)
    return 0


def _write_json(path, rows):
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)
        os.replace(tmp, path)


if __name__ == "__main__":
    run(main)
