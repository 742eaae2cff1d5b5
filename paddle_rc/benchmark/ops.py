"""paddle_rc's fused CPU operators against the Paddle ops they replace, at LLaVA-1.5-7B's shapes.

Each row times the same call two ways in one process, alternating: the operator
(paddle_rc/csrc/fused_ops.cc, what inference runs) and the pure-Paddle formulation of
paddle_rc/models/fused.py (what training, export and CPUs without AVX2 run). Best of `repeats`.
"""
from __future__ import annotations

import time
from typing import Callable

import paddle

from paddle_rc import native
from paddle_rc.models import fused
from paddle_rc.runtime import default_threads

# (name, shapes of the inputs, the wrapper in paddle_rc.models.fused)
CASES = (
    ("softmax, one ViT-L attention [16, 577, 577]", ([16, 577, 577],), fused.softmax),
    ("softmax, one 7B attention [32, 653, 653]", ([32, 653, 653],), fused.softmax),
    ("rotary embedding, 7B [1, 32, 653, 128]", ([1, 32, 653, 128], [1, 1, 653, 128], [1, 1, 653, 128]), fused.rope),
    ("SwiGLU, 7B MLP [653, 11008]", ([653, 11008], [653, 11008]), fused.swiglu),
    ("quick_gelu, ViT-L MLP [577, 4096]", ([577, 4096],), fused.quick_gelu),
)


def build_name() -> str:
    """The build fused_ops.cc picks on this CPU (its rule, read from /proc/cpuinfo's flags)."""
    from paddle_rc.runtime import cpu_flags

    flags = cpu_flags()
    if {"avx512f", "avx512dq"} <= flags:
        return "avx512"
    return "avx2" if {"avx2", "fma"} <= flags else "scalar (not used: Paddle's ops run instead)"


def _best(fn: Callable, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def run_ops(repeats: int = 20) -> dict:
    if not native.library():
        return {"build": None, "reason": native.status()["reason"], "rows": []}
    rows = []
    with paddle.no_grad():
        for name, shapes, op in CASES:
            paddle.seed(0)
            args = [paddle.randn(s) for s in shapes]
            fused_s = _best(lambda: op(*args), repeats)
            with native.disabled():
                paddle_s = _best(lambda: op(*args), repeats)
            rows.append({"op": name, "fused_ms": 1e3 * fused_s, "paddle_ms": 1e3 * paddle_s,
                         "ratio": fused_s / paddle_s})
    return {"build": build_name(), "threads": default_threads(), "repeats": repeats, "rows": rows}


def format_ops_table(result: dict) -> str:
    if result["build"] is None:
        return f"paddle_rc's operators are unavailable here ({result['reason']}): nothing to compare"
    lines = [f"fused operators ({result['build']} build) against Paddle's ops, {result['threads']} threads, "
             f"best of {result['repeats']}",
             "| op | fused ms | Paddle ms | fused / Paddle |", "|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['op']} | {r['fused_ms']:.2f} | {r['paddle_ms']:.2f} | {r['ratio']:.2f}x |")
    return "\n".join(lines)
