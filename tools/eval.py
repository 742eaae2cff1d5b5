#!/usr/bin/env python
r"""Evaluate on the LLaVA-1.5 benchmarks; see `python tools/eval.py -h` and docs/eval-data.md.

    python tools/eval.py --model ckpt/llava-1.5-7b --benchmark textvqa,pope \
        --data-root data/eval --method none,rc --budget 64,128
    python tools/eval.py --benchmark pope --data-root data/eval --method rc --score-only
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from paddle_rc.eval.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
