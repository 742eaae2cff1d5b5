"""Score and outlier primitives shared by the compression methods (docs/algorithm.md §2-§3).

Everything here is plain Paddle tensor code with no host round trip, so it runs on GPU and
inside a to_static graph with a dynamic batch. Per-row counts are int64 tensors; shapes other
than the batch (N, C, D) are static Python ints.
"""
from __future__ import annotations

import math

import paddle
import paddle.nn.functional as nnf

# sklearn adds this to the mean reach distance so duplicate-heavy data does not divide by 0.
_LRD_EPS = 1e-10
# LocalOutlierFactor(contamination='auto') flags LOF > 1.5 (offset_ = -1.5, strict).
_LOF_THRESHOLD = 1.5
# Stand-in for +inf in distance matrices: finite so that masked arithmetic never makes NaN.
_FAR = 1e300


def _f64(value):
    """A float64 constant as a tensor. Python-scalar arithmetic on float64 tensors becomes a
    `scale` op, which Paddle 3.3's oneDNN inference passes mis-compute (x * 0.25 returned x;
    abs and 1/x were off too), so float64 math here only combines tensors."""
    return paddle.full([1], value, dtype="float64")


def as_f32(x):
    return x if x.dtype == paddle.float32 else x.astype("float32")


def eye_mask(n):
    """[1,N,N] bool identity (paddle.eye has no bool kernel)."""
    r = paddle.arange(n, dtype="int64")
    return (r.unsqueeze(1) == r.unsqueeze(0)).unsqueeze(0)


def rank_desc(scores, valid=None):
    """Rank of every entry when its row is sorted descending ([B,N] int64, 0 = largest).

    Ties go to the lower index (stable sort), so a top-k is deterministic and a sample's
    result does not depend on what else is in the batch. Entries with valid=False rank after
    all valid ones.
    """
    s = as_f32(scores)
    if valid is not None:
        s = paddle.where(valid, s, paddle.full_like(s, -float("inf")))
    order = paddle.argsort(s, axis=-1, descending=True, stable=True)
    return paddle.argsort(order, axis=-1, stable=True)


def topk_mask(scores, k, valid=None):
    """Boolean [B,N] mask of the top-k entries per row; k is an int64 tensor [B] (or int).

    A rank mask instead of paddle.topk because k differs per row and is data dependent.
    """
    rank = rank_desc(scores, valid)
    if isinstance(k, int):
        k = paddle.full([1], k, dtype="int64")
    mask = rank < k.reshape([-1, 1])
    if valid is not None:
        mask = paddle.logical_and(mask, valid)
    return mask


def lof_outlier_count(x, n_neighbors, valid=None):
    """Per-row LOF outlier count and the number of entries it was computed over.

    x: [B,N] (any float dtype); valid: optional [B,N] bool selecting each row's entries (the
    LOF of row b is that of the 1-D vector x[b, valid[b]]). Returns (count, m), both int64 [B].

    Reproduces sklearn's LocalOutlierFactor(n_neighbors=k, contamination='auto').fit_predict:
    k_b = min(k, m_b - 1); neighbours exclude the point itself; reach(p, o) =
    max(k-distance(o), |p - o|); lrd(p) = 1 / (mean reach + 1e-10); LOF(p) = mean over p's
    neighbours o of lrd(o) / lrd(p); outlier iff LOF > 1.5. Computed in float64 like sklearn
    (its trees store float64), which keeps decisions near the 1.5 threshold identical.
    Equal distances are broken by index; for exact duplicate values (e.g. masked entries all
    equal to the minimum) the choice is immaterial because duplicates share k-distance and
    lrd, so results equal sklearn's. Rows with m <= 1 have no outliers (sklearn refuses a
    single sample; a lone point is not an outlier of anything).
    """
    if x.ndim != 2:
        raise ValueError(f"lof_outlier_count expects [B,N], got shape {x.shape}")
    n = x.shape[1]
    xd = x.astype("float64")
    if valid is None:
        valid = paddle.ones_like(xd, dtype="bool")
    m = valid.astype("int64").sum(axis=1)
    kcap = min(int(n_neighbors), n - 1)
    if kcap < 1:
        return paddle.zeros_like(m), m
    k_b = paddle.clip(paddle.minimum(m - 1, paddle.full_like(m, int(n_neighbors))), min=0)

    # In 1-D the k nearest neighbours of a point lie within k places of it in sorted order, so one
    # sort per row and a window of 2k candidates replace the N x N distance sort (O(N k), not
    # O(N^2 log N)). Invalid entries sort last and are never candidates.
    key = paddle.where(valid, xd, paddle.full_like(xd, _FAR))
    order = paddle.argsort(key, axis=1, stable=True)
    xs = paddle.take_along_axis(key, order, axis=1)                          # [B,N] ascending
    vs = paddle.take_along_axis(valid.astype("int64"), order, axis=1) > 0
    offs = paddle.concat([paddle.arange(-kcap, 0, dtype="int64"), paddle.arange(1, kcap + 1, dtype="int64")])
    pos = paddle.arange(n, dtype="int64").unsqueeze(1) + offs.unsqueeze(0)  # [N,2k] sorted positions
    in_range = paddle.logical_and(pos >= 0, pos < n).unsqueeze(0)
    pos = paddle.clip(pos, 0, n - 1)
    width = 2 * kcap
    flat_pos = pos.reshape([1, n * width]).expand([paddle.shape(xs)[0], n * width])
    cand = paddle.take_along_axis(xs, flat_pos, axis=1).reshape([0, n, width])
    cand_ok = paddle.take_along_axis(vs.astype("int64"), flat_pos, axis=1).reshape([0, n, width]) > 0
    cand_ok = paddle.logical_and(paddle.logical_and(cand_ok, in_range), vs.unsqueeze(2))
    centre = xs.unsqueeze(2)
    dist = paddle.maximum(cand - centre, centre - cand)   # |xi - xj|, see _f64 on abs
    dist = paddle.where(cand_ok, dist, paddle.full_like(dist, _FAR))

    pick = paddle.argsort(dist, axis=-1, stable=True)[:, :, :kcap]           # [B,N,kcap]
    nbr_dist = paddle.take_along_axis(dist, pick, axis=2)
    nbr = paddle.take_along_axis(flat_pos.reshape([0, n, width]), pick, axis=2)  # sorted positions
    kth = paddle.clip(k_b - 1, min=0).reshape([-1, 1, 1])
    kdist = paddle.take_along_axis(nbr_dist, kth.expand_as(nbr_dist[:, :, :1]), axis=2)
    kdist = kdist.squeeze(2)                                              # [B,N], sorted order

    col_ok = paddle.arange(kcap, dtype="int64").reshape([1, 1, -1]) < k_b.reshape([-1, 1, 1])
    flat_nbr = nbr.reshape([0, n * kcap])        # 0 keeps the (dynamic) batch dim
    kdist_nbr = paddle.take_along_axis(kdist, flat_nbr, axis=1).reshape([0, n, kcap])
    reach = paddle.maximum(kdist_nbr, nbr_dist)
    zero = paddle.zeros_like(reach)
    k_f = paddle.clip(k_b, min=1).astype("float64").reshape([-1, 1])
    lrd = paddle.divide(_f64(1.0), paddle.where(col_ok, reach, zero).sum(axis=2) / k_f + _f64(_LRD_EPS))

    lrd_nbr = paddle.take_along_axis(lrd, flat_nbr, axis=1).reshape([0, n, kcap])
    ratio = lrd_nbr / lrd.unsqueeze(2)
    lof = paddle.where(col_ok, ratio, zero).sum(axis=2) / k_f
    out = paddle.logical_and(lof > _f64(_LOF_THRESHOLD), vs)
    out = paddle.logical_and(out, (k_b > 0).reshape([-1, 1]))
    return out.astype("int64").sum(axis=1), m


def lof_outlier_ratio(x, n_neighbors):
    """Contract 1: fraction of LOF outliers per row. x [B,N] -> [B], or [N] -> scalar (float32)."""
    squeeze = x.ndim == 1
    x2 = x.unsqueeze(0) if squeeze else x
    count, m = lof_outlier_count(x2, n_neighbors)
    ratio = count.astype("float32") / paddle.clip(m, min=1).astype("float32")
    return ratio.squeeze(0) if squeeze else ratio


def _np_linear_quantile(sorted_x, q):
    """numpy's default ('linear') percentile on rows already sorted ascending (float64)."""
    n = sorted_x.shape[1]
    pos = q * (n - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    a = sorted_x[:, lo]
    b = sorted_x[:, hi]
    # numpy's _lerp picks the formulation by t so that t=1 returns b exactly.
    if frac >= 0.5:
        return b - (b - a) * _f64(1.0 - frac)
    return a + (b - a) * _f64(frac)


def iqr_outlier_count(x):
    """Per-row count of entries strictly above Q3 + 1.5 (Q3 - Q1) (PruMerge's rule), int64 [B]."""
    xd = x.astype("float64")
    s = paddle.sort(xd, axis=1)
    q1 = _np_linear_quantile(s, 0.25)
    q3 = _np_linear_quantile(s, 0.75)
    upper = q3 + _f64(1.5) * (q3 - q1)
    return (xd > upper.unsqueeze(1)).astype("int64").sum(axis=1)


def iqr_ratio(x):
    """Fraction of each row strictly above Q3 + 1.5 IQR. x [B,N] -> [B], or [N] -> scalar."""
    squeeze = x.ndim == 1
    x2 = x.unsqueeze(0) if squeeze else x
    ratio = iqr_outlier_count(x2).astype("float32") / float(x2.shape[1])
    return ratio.squeeze(0) if squeeze else ratio


def visual_score(Q, K):
    """PruMerge's CLS attention: single head over the full width, patches only.

    Q, K: [B,1+N,C] (last layer q/k projections, CLS first). Only the CLS row of
    softmax(Q K^T / sqrt(C)) is needed, so this is Q[:,0] @ K^T, not the full matrix.
    Returns float32 [B,N].
    """
    q = as_f32(Q[:, 0:1, :])
    k = as_f32(K)
    logits = paddle.matmul(q, k, transpose_y=True) * (float(k.shape[-1]) ** -0.5)
    return nnf.softmax(logits, axis=-1)[:, 0, 1:]


def text_score(P, t):
    """cos(t, P_j) / sqrt(D) for every patch j. P: [B,N,D], t: [B,D] -> float32 [B,N]."""
    p = nnf.normalize(as_f32(P), p=2, axis=-1)
    q = nnf.normalize(as_f32(t), p=2, axis=-1)
    return paddle.matmul(p, q.unsqueeze(2)).squeeze(2) * (float(p.shape[-1]) ** -0.5)


def floor_scaled(m, count, length):
    """floor(M * count / length) in exact integer arithmetic, 0 where length == 0.

    The spec's floor(M * ratio) with ratio = count / length. Integer math avoids the float
    product landing just below an integer (int(43 * (23 / 43)) == 22 in float64).
    """
    safe = paddle.clip(length, min=1)
    val = paddle.floor_divide(m * count, safe)
    return paddle.where(length > 0, val, paddle.zeros_like(val))


def floor_scaled_float(m, count, length):
    """int(M * (count / length)) as the released code computes it, in float64, so rc-reference
    lands where the release does, including just below an integer. 0 where length == 0."""
    safe = paddle.clip(length, min=1).astype("float64")
    ratio = paddle.divide(count.astype("float64"), safe)
    val = paddle.floor(paddle.multiply(m.astype("float64"), ratio)).astype("int64")
    return paddle.where(length > 0, val, paddle.zeros_like(val))
