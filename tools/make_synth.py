#!/usr/bin/env python
"""Write the synthetic VQA benchmark (paddle_rc.synth) in LLaVA's eval layout under --out/synthvqa/.

    python tools/make_synth.py --seed 1234 --n 500 --out data/synth
    python tools/eval.py --benchmark synthvqa --data-root data/synth --method none,rc

The same --seed and --n always give the same files; items are a prefix of the seed's stream (the first
k of --n N are the items of --n k). Layout: docs/eval-data.md.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddle_rc.cli import add_config_args, parse_with_config, run  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, required=True, help="generator seed (>= 0)")
    p.add_argument("--n", type=int, required=True, help="number of questions (one per image)")
    p.add_argument("--out", required=True, help="data root; the benchmark goes to OUT/synthvqa/")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT/synthvqa/")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    add_config_args(p)
    return p


def main(argv=None) -> int:
    args = parse_with_config(build_parser(), argv)
    from paddle_rc.synth.layout import write_synthvqa

    path = write_synthvqa(args.out, int(args.seed), int(args.n), overwrite=bool(args.overwrite),
                          progress=bool(args.progress))
    print(path)
    return 0


if __name__ == "__main__":
    run(main)
