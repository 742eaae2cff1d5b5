"""The weight-only matmul operator rc_weight_only_matmul (paddle_rc/csrc/weight_only_matmul.cc),
from the library paddle_rc.native builds and loads."""
from __future__ import annotations

from typing import Callable, Optional

from paddle.jit import not_to_static

from paddle_rc.native import disabled, library, run, status  # noqa: F401  (re-exported for callers)

OP_NAME = "rc_weight_only_matmul"


def _run(x, qweight, scale, bits: int, group_size: int):
    return run(OP_NAME, x, qweight, scale, int(bits), int(group_size))


@not_to_static
def op() -> Optional[Callable]:
    """``f(x, qweight, scale, bits, group_size) -> x @ dequant(W)`` running the operator, or None."""
    return _run if library() else None
