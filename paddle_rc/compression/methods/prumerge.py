"""LLaVA-PruMerge and PruMerge+ (docs/algorithm.md §8) on the shared inputs."""
import paddle

from paddle_rc.compression.assemble import (CENTRE, GROUP_NONE, GROUP_RANKED, GROUP_RASTER2,
                                            REST, SPATIAL, assemble)
from paddle_rc.compression.methods.common import code, full_count, knn_merge, weighted_sum
from paddle_rc.compression.ops import (floor_scaled, iqr_outlier_count, rank_desc, topk_mask,
                                       visual_score)
from paddle_rc.compression.registry import QK, register

PRUMERGE_DEFAULTS = {"topk": 32}


def _merge_and_assemble(x, s_vis, centre, spatial):
    """Merge every centre with its top-32 key-cosine neighbours among all other patches,
    weights s_vis; one extra token over the non-centres; attention centres first (descending
    s_vis), spatial centres after them in raster order, then the extra token."""
    n = x.n
    all_c = paddle.logical_or(centre, spatial)
    pool = paddle.ones_like(centre)
    kk = full_count(s_vis, min(int(x.opts["topk"]), n - 1))
    merged, members = knn_merge(x.F, s_vis, x.K[:, 1:, :], paddle.zeros_like(s_vis), pool,
                                all_c, kk, x.opts["topk"])
    others = paddle.logical_not(all_c)
    extra = weighted_sum(x.F, s_vis, others)
    extra_on = paddle.ones_like(s_vis[:, 0], dtype="bool")
    stage = code(centre, CENTRE) + code(spatial, SPATIAL) + code(others, REST)
    group = paddle.full_like(stage, GROUP_NONE)
    group = paddle.where(centre, paddle.full_like(stage, GROUP_RANKED), group)
    group = paddle.where(spatial, paddle.full_like(stage, GROUP_RASTER2), group)
    values = paddle.where(all_c.unsqueeze(2), merged, x.F)
    return assemble(values, group, rank_desc(s_vis), stage, extra, extra_on, members, others,
                    out_dtype=x.out_dtype, trim=x.trim)


@register("prumerge", defaults=PRUMERGE_DEFAULTS, reads={QK})
def prumerge(x):
    """n = floor(N * iqr_ratio(s_vis)) centres + 1 extra token.

    Budget T: n = T - 1 centres plus the extra token (the extra token is always emitted, as in
    the released code, so T = 1 is the extra token alone).
    """
    s_vis = visual_score(x.Q, x.K)
    n_all = full_count(s_vis, x.n)
    if x.budget is None:
        n_c = floor_scaled(n_all, iqr_outlier_count(s_vis), n_all)
    else:
        n_c = full_count(s_vis, x.budget - 1)
    centre = topk_mask(s_vis, n_c)
    return _merge_and_assemble(x, s_vis, centre, paddle.zeros_like(centre))


def _spread(mask, count):
    """Pick `count` [B] entries of `mask` [B,N] evenly spaced along its raster order: the
    r-th masked entry (r from 0) is taken iff ceil(r*k/m) < ceil((r+1)*k/m), i.e. entries
    floor(i*m/k) for i < k, m = mask size."""
    m = mask.astype("int64").sum(axis=1, keepdim=True)
    r = paddle.cumsum(mask.astype("int64"), axis=1) - 1
    k = count.reshape([-1, 1])
    ms = paddle.clip(m, min=1)
    a = paddle.floor_divide(r * k + ms - 1, ms)
    b = paddle.floor_divide((r + 1) * k + ms - 1, ms)
    return paddle.logical_and(mask, a < b)


@register("prumerge+", defaults=PRUMERGE_DEFAULTS, reads={QK})
def prumerge_plus(x):
    """PruMerge plus spatially sampled centres.

    Adaptive: raster positions 0, s, 2s, ... below N-1 (the released code's arange(0, 575, s))
    with s = max(1, floor(floor(1/r)/3)), r the IQR ratio, skipping those already centres.
    r = 0 gives s = N (only position 0), the limit of the rule.
    Budget T: the rule yields about 3 spatial tokens per attention centre, so T - 1 is split
    1:3 — round((T-1)/4) attention centres, the rest spatial centres spread evenly over the
    non-centre patches in raster order — plus the extra token.
    """
    n = x.n
    s_vis = visual_score(x.Q, x.K)
    n_all = full_count(s_vis, n)
    pos = paddle.arange(n, dtype="int64").unsqueeze(0)
    if x.budget is None:
        cnt = iqr_outlier_count(s_vis)
        centre = topk_mask(s_vis, floor_scaled(n_all, cnt, n_all))
        # floor(1/r) = N // cnt exactly (r = cnt/N), without float rounding.
        inv = paddle.floor_divide(n_all, paddle.clip(cnt, min=1))
        step = paddle.where(cnt > 0, paddle.clip(paddle.floor_divide(inv, 3), min=1), n_all)
        grid = paddle.logical_and(paddle.remainder(pos, step.unsqueeze(1)) == 0, pos < n - 1)
        spatial = paddle.logical_and(grid, paddle.logical_not(centre))
    else:
        n_attn = (x.budget - 1 + 2) // 4
        n_sp = x.budget - 1 - n_attn
        centre = topk_mask(s_vis, full_count(s_vis, n_attn))
        spatial = _spread(paddle.logical_not(centre), full_count(s_vis, n_sp))
    return _merge_and_assemble(x, s_vis, centre, spatial)
