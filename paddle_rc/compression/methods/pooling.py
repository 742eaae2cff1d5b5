"""2-D average pooling of the patch grid to k x k tokens (the audit studies' strong baseline)."""
import math

import numpy as np
import paddle

from paddle_rc.compression.assemble import CENTRE, GROUP_NONE, GROUP_RASTER, REST, assemble
from paddle_rc.compression.methods.common import code
from paddle_rc.compression.registry import register


def pooling_side(n, budget, k):
    """(grid side g, pooled side k). A budget T picks k = floor(sqrt(T)) (64 -> 8, 144 -> 12); k is
    capped at g (a finer grid than the patches is the patches themselves)."""
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f"pooling needs a square patch grid, got N={n}")
    if budget is not None:
        k = math.isqrt(int(budget))
    if int(k) != k or int(k) < 1:
        raise ValueError(f"pooling side k must be a positive integer, got {k!r}")
    return g, min(int(k), g)


def pooling_matrix(g, k):
    """[k*k, g*g] weights of adaptive average pooling (torch's adaptive_avg_pool2d cells: rows
    floor(i g / k) .. ceil((i+1) g / k) - 1, likewise columns) and each cell's top-left patch."""
    starts = [(i * g) // k for i in range(k)]
    ends = [-((-(i + 1) * g) // k) for i in range(k)]
    w = np.zeros((k * k, g * g), dtype=np.float32)
    corner = np.zeros(k * k, dtype=np.int64)
    for r in range(k):
        for c in range(k):
            cell = [y * g + x for y in range(starts[r], ends[r]) for x in range(starts[c], ends[c])]
            w[r * k + c, cell] = 1.0 / len(cell)
            corner[r * k + c] = starts[r] * g + starts[c]
    return w, corner


@register("pooling", defaults={"k": 8}, budget_tokens=lambda t: math.isqrt(t) ** 2)
def pooling(x):
    """Average the patches of each of k x k cells of the grid (k = option, or floor(sqrt(budget))).

    Output: one token per cell in raster order of the cells. Each token is reported as a merge
    centre at its cell's top-left patch, with the cell's patches as its members.
    """
    n = x.n
    g, k = pooling_side(n, x.budget, x.opts["k"])
    w, corner = pooling_matrix(g, k)
    # Row p of `full` is the mean of p's cell if p is a cell corner, else e_p (p emits F_p unchanged,
    # but only corners are emitted): one [N,N] constant, so the graph is a single matmul.
    full = np.eye(n, dtype=np.float32)
    full[corner] = w
    member = np.zeros((n, n), dtype=bool)
    member[corner] = w > 0
    member[corner, corner] = False      # a cell's token is reported as its corner plus members
    is_corner = np.zeros(n, dtype=bool)
    is_corner[corner] = True
    # The constants broadcast against a [B,1,1] tensor taken from F, so the batch stays dynamic.
    ones = paddle.ones_like(x.F[:, :1, :1])                                  # [B,1,1]
    values = paddle.matmul(paddle.to_tensor(full).unsqueeze(0) * ones, x.F)
    batch = ones[:, :, 0] > 0                                                # [B,1] True
    centre = paddle.logical_and(paddle.to_tensor(is_corner).unsqueeze(0), batch)
    members = paddle.logical_and(paddle.to_tensor(member).unsqueeze(0), batch.unsqueeze(2))
    merged = paddle.logical_and(members.any(axis=1), paddle.logical_not(centre))
    stage = code(centre, CENTRE) + code(merged, REST)
    group = paddle.where(centre, paddle.full_like(stage, GROUP_RASTER), paddle.full_like(stage, GROUP_NONE))
    return assemble(values, group, group, stage, members=members, out_dtype=x.out_dtype, trim=x.trim)
