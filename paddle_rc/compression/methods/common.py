"""Helpers shared by several methods."""
from __future__ import annotations

import paddle
import paddle.nn.functional as nnf

from paddle_rc.compression.ops import as_f32, eye_mask


class MethodInputs:
    """What a method core sees. Tensors are float32 already; budget is a clamped int or None."""

    def __init__(self, F, Q, K, P, t, has_text, budget, options, out_dtype, trim=True):
        self.F, self.Q, self.K, self.P, self.t = F, Q, K, P, t
        self.has_text = has_text
        self.budget = budget
        self.opts = options
        self.out_dtype = out_dtype
        self.trim = trim
        self.n = F.shape[1]
        self.c = F.shape[2]


def default_count(n, ratio):
    """Token count for fixed-count methods without a budget: round(N * ratio), in [1, N]."""
    return max(1, min(n, int(n * float(ratio) + 0.5)))


def knn_merge(F, weights, keys, bonus, pool, centre, kk, topk):
    """PruMerge/RC cluster update for every potential centre at once.

    For each row i, candidates are the pool entries j != i ranked by
    cos(keys_i, keys_j) + bonus_j; the first kk[b] of them are i's
    members and the merged token is F_i + sum_j weights_j F_j (raw weights, no normalising).
    Rows that are not centres are computed too and ignored: a static-shape [B,N,N] product
    instead of a Python loop over centres or batch items.
    Returns merged [B,N,C] and members [B,N,N] bool (members[b,i,j]: j merged into i).
    """
    n = F.shape[1]
    kc = min(int(topk), n - 1)
    if kc < 1:
        return F, paddle.zeros_like(centre.unsqueeze(2).expand([-1, -1, n]))
    kn = nnf.normalize(as_f32(keys), p=2, axis=-1)
    score = paddle.matmul(kn, kn, transpose_y=True) + bonus.unsqueeze(1)
    not_self = paddle.logical_not(eye_mask(n))
    cand = paddle.logical_and(pool.unsqueeze(1), not_self)
    score = paddle.where(cand, score, paddle.full_like(score, -float("inf")))
    # Only the best kc columns are needed: topk with a static k instead of sorting every N-row
    # (a third of RC's time at N=576). Unlike the stable sorts elsewhere, topk orders exactly equal
    # scores arbitrarily (deterministically per row); real key cosines + text scores do not tie.
    _, order = paddle.topk(score, kc, axis=-1, largest=True, sorted=True)
    col_ok = paddle.arange(kc, dtype="int64").reshape([1, 1, -1]) < kk.reshape([-1, 1, 1])
    col_ok = paddle.logical_and(col_ok, centre.unsqueeze(2))
    w_nbr = paddle.take_along_axis(weights.unsqueeze(1).expand([-1, n, -1]), order, axis=2)
    w_nbr = paddle.where(col_ok, w_nbr, paddle.zeros_like(w_nbr))
    wmat = paddle.put_along_axis(paddle.zeros_like(score), order, w_nbr, axis=2)
    mmat = paddle.put_along_axis(paddle.zeros_like(score), order, col_ok.astype("float32"), axis=2)
    merged = F + paddle.matmul(wmat, F)
    return merged, mmat > 0.5


def weighted_sum(F, weights, mask):
    """sum over masked patches of weights_j F_j -> [B,C]."""
    w = paddle.where(mask, weights, paddle.zeros_like(weights))
    return paddle.matmul(w.unsqueeze(1), F).squeeze(1)


def full_count(like, value):
    """An int64 [B] tensor filled with a Python int, batch taken from `like` [B,...]."""
    return paddle.full_like(like[:, 0], int(value), dtype="int64")


def code(mask, value):
    return paddle.where(mask, paddle.full_like(mask, value, dtype="int64"),
                        paddle.zeros_like(mask, dtype="int64"))
