"""Recoverable Compression (docs/algorithm.md §5) and the released code's variant (§6)."""
from __future__ import annotations

import paddle

from paddle_rc.compression.assemble import (CENTRE, GROUP_NONE, GROUP_RANKED, GROUP_RASTER,
                                            REST, TEXT, VISUAL, assemble)
from paddle_rc.compression.methods.common import code, full_count, knn_merge, weighted_sum
from paddle_rc.compression.ops import (floor_scaled, floor_scaled_float, lof_outlier_count, rank_desc,
                                       text_score, topk_mask, visual_score)
from paddle_rc.compression import registry as reads
from paddle_rc.compression.registry import register

RC_DEFAULTS = {
    "n_neighbors_visual": 20,   # LOF k of the visual filter (step 1)
    "n_neighbors_text": 20,     # LOF k of text recovery (step 2)
    "n_neighbors_merge": 10,    # LOF k deciding the number of merge centres (step 4)
    "topk": 32,                 # members per centre, capped at n_rest - 1
    "text_weight": 50.0,        # weight of the text score in the member ranking
    # The open design choices (docs/algorithm.md, "RC's options"); defaults = the paper's behaviour.
    "text_sign": 1,             # -1: rank patches by negated text similarity (as TRIM / CDPruner do)
    "p_source": "next-layer",   # or "feature-postln": visual_projection(post_layernorm(F))
    "ocr_hint": False,          # True: TextVQA's "Reference OCR token" line reaches the text encoder
}
P_SOURCES = {"next-layer": reads.P_NEXT, "feature-postln": reads.P_FEATURE}


def rc_reads(opts):
    source = opts["p_source"]
    if source not in P_SOURCES:
        raise ValueError(f"rc option p_source must be one of {', '.join(P_SOURCES)}, got {source!r}")
    return {reads.QK, reads.TEXT, P_SOURCES[source]}


def largest_remainder(counts, total, fallback):
    """Rescale per-stage counts [B,S] (int64) to sum to `total` (Python int) per row.

    Quotas total * c_s / sum(c); floors first, then the leftover units go to the largest
    remainders (ties to the earlier stage). Rows whose counts are all zero use `fallback`
    [B,S] weights instead. A stage with weight 0 never receives a unit (the leftover is
    smaller than the number of stages with a positive remainder).
    """
    s_sum = counts.sum(axis=1, keepdim=True)
    use = paddle.where(s_sum > 0, counts, fallback)
    tot = paddle.clip(use.sum(axis=1, keepdim=True), min=1)
    scaled = use * int(total)
    base = paddle.floor_divide(scaled, tot)
    rem = scaled - base * tot
    deficit = int(total) - base.sum(axis=1, keepdim=True)
    s = counts.shape[1]
    idx = paddle.arange(s, dtype="int64")
    # rank of stage i = number of stages j that beat it (bigger remainder, or equal and earlier)
    beats = paddle.logical_or(rem.unsqueeze(1) > rem.unsqueeze(2),
                              paddle.logical_and(rem.unsqueeze(1) == rem.unsqueeze(2),
                                                 (idx.unsqueeze(0) < idx.unsqueeze(1)).unsqueeze(0)))
    rank = beats.astype("int64").sum(axis=2)
    return base + (rank < deficit).astype("int64")


def _select(s_vis, s_txt, n_v, n_t):
    """Steps 1-2 given the counts: visual top-n_v, then text top-n_t outside it."""
    vis = topk_mask(s_vis, n_v)
    t_min = paddle.min(s_txt, axis=1, keepdim=True)
    s_txt_m = paddle.where(vis, t_min.expand_as(s_txt), s_txt)
    # Restricting the text pick to non-visual patches only matters when masked minima tie
    # with real scores; it guarantees n_v + n_t distinct tokens (the union in step 3).
    txt = topk_mask(s_txt_m, n_t, valid=paddle.logical_not(vis))
    rest = paddle.logical_not(paddle.logical_or(vis, txt))
    return vis, txt, rest, s_txt_m


# The released code has none of the options: its text, P and sign are what it is reproducing.
REFERENCE_DEFAULTS = {k: RC_DEFAULTS[k] for k in
                      ("n_neighbors_visual", "n_neighbors_text", "n_neighbors_merge", "topk", "text_weight")}


def rc_core(x, reference=False):
    o = x.opts
    n, c = x.n, x.c
    F = x.F
    s_vis = visual_score(x.Q, x.K)
    if x.P is None or x.t is None:
        s_txt = paddle.zeros_like(s_vis)
        has_text = paddle.zeros_like(s_vis[:, 0], dtype="bool")
    else:
        sign = float(o.get("text_sign", 1))
        if sign not in (1.0, -1.0):
            raise ValueError(f"rc option text_sign must be 1 or -1, got {o['text_sign']!r}")
        s_txt = text_score(x.P, x.t) * sign
        has_text = x.has_text
    n_all = full_count(s_vis, n)

    # Adaptive counts (§5 steps 1-4).
    cnt_v, _ = lof_outlier_count(s_vis, o["n_neighbors_visual"])
    # The release computes int(M * ratio) in floats; rc uses exact integers (see floor_scaled).
    scaled = floor_scaled_float if reference else floor_scaled
    n_v = scaled(n_all, cnt_v, n_all)
    vis, txt, rest, s_txt_m = _select(s_vis, s_txt, n_v, paddle.zeros_like(n_v))
    cnt_t, _ = lof_outlier_count(s_txt_m, o["n_neighbors_text"])
    n_t = scaled(n_all - n_v, cnt_t, n_all) * has_text.astype("int64")
    vis, txt, rest, s_txt_m = _select(s_vis, s_txt, n_v, n_t)
    n_rest = n_all - n_v - n_t
    cnt_a, _ = lof_outlier_count(s_vis, o["n_neighbors_merge"], valid=rest)
    if reference:
        # Released code: int(C * ratio) (the feature width, not n_rest), capped so topk works.
        n_cent = paddle.minimum(scaled(full_count(s_vis, c), cnt_a, n_rest), n_rest)
    else:
        n_cent = floor_scaled(n_rest, cnt_a, n_rest)
    extra_on = n_cent > 0

    if x.budget is not None:
        counts = paddle.stack([n_v, n_t, n_cent + extra_on.astype("int64")], axis=1)
        ht = has_text.astype("int64")
        fallback = paddle.stack([paddle.full_like(ht, 5), 3 * ht, paddle.full_like(ht, 2)], axis=1)
        new = largest_remainder(counts, x.budget, fallback)
        n_v, n_t, n_merged = new[:, 0], new[:, 1], new[:, 2]
        # In budget mode a lone merged slot is the extra token by itself.
        n_cent = paddle.clip(n_merged - 1, min=0)
        extra_on = n_merged > 0
        vis, txt, rest, s_txt_m = _select(s_vis, s_txt, n_v, n_t)
        n_rest = n_all - n_v - n_t

    centre = topk_mask(s_vis, n_cent, valid=rest)
    order_a = rank_desc(s_vis, rest)
    kk = paddle.clip(paddle.minimum(n_rest - 1, paddle.full_like(n_rest, int(o["topk"]))), min=0)

    kp = x.K[:, 1:, :]
    if reference:
        # Released code gathers keys with positions counted inside the rest list but applied
        # to the key array without CLS (Key_wo_cls = K[:, 1:]): patch I_rest[r] uses K[:, 1+r].
        rest_pos = paddle.clip(paddle.cumsum(rest.astype("int64"), axis=1) - 1, min=0)
        kp = paddle.take_along_axis(kp, rest_pos.unsqueeze(2).expand([-1, -1, kp.shape[2]]), axis=1)
    bonus = float(o["text_weight"]) * s_txt_m
    bonus = paddle.where(has_text.unsqueeze(1), bonus, paddle.zeros_like(bonus))
    merged, members = knn_merge(F, s_vis, kp, bonus, rest, centre, kk, o["topk"])

    non_centre = paddle.logical_and(rest, paddle.logical_not(centre))
    extra_members = paddle.logical_and(non_centre, extra_on.unsqueeze(1))
    extra = weighted_sum(F, s_vis, extra_members)

    stage = code(vis, VISUAL) + code(txt, TEXT) + code(centre, CENTRE) + code(extra_members, REST)
    group = paddle.full_like(stage, GROUP_NONE)
    group = paddle.where(paddle.logical_or(vis, txt), paddle.full_like(stage, GROUP_RASTER), group)
    group = paddle.where(centre, paddle.full_like(stage, GROUP_RANKED), group)
    values = paddle.where(centre.unsqueeze(2), merged, F)
    return assemble(values, group, order_a, stage, extra, extra_on, members, extra_members,
                    out_dtype=x.out_dtype, trim=x.trim)


@register("rc", defaults=RC_DEFAULTS, reads=rc_reads, text_mode="question")
def rc(x):
    """RC, mode `rc` (§5). Empty question / t=None: n_t = 0 and the merge text term is 0."""
    return rc_core(x, reference=False)


@register("rc-reference", defaults=REFERENCE_DEFAULTS, reads={reads.QK, reads.TEXT, reads.P_NEXT},
          text_mode="prompt-first-line")
def rc_reference(x):
    """RC with the released code's quirks (§6): L = floor(C * ratio) capped at n_rest, and
    member keys taken as K[:, 1 + r] for the patch at rest-list position r."""
    return rc_core(x, reference=True)
