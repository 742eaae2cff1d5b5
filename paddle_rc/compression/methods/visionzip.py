"""VisionZip: dominant tokens by CLIP's CLS attention + contextual tokens merged by key
similarity (docs/algorithm.md §8)."""
import paddle
import paddle.nn.functional as nnf

from paddle_rc.compression.assemble import (CENTRE, GROUP_NONE, GROUP_RASTER, GROUP_RASTER2,
                                            REST, VISUAL, assemble)
from paddle_rc.compression.methods.common import code
from paddle_rc.compression.ops import as_f32, topk_mask
from paddle_rc.compression.registry import CLS_STATS, register


def visionzip_counts(n, budget, dominant, contextual):
    """(dominant, contextual) patch counts. Budget T: contextual = round(10 T / 64) (so
    64 -> 54+10, 128 -> 108+20, 192 -> 162+30, the paper's settings), dominant = T - that."""
    if budget is not None:
        contextual = (10 * budget + 32) // 64
        dominant = budget - contextual
    dominant = max(0, min(int(dominant), n))
    contextual = max(0, min(int(contextual), n - dominant))
    return dominant, contextual


@register("visionzip", defaults={"dominant": 54, "contextual": 10}, reads={CLS_STATS})
def visionzip(x):
    """Needs two extra inputs from the vision tower, passed as options:

    cls_attn [B,N]: CLS -> patch attention probabilities of CLIP's real multi-head attention
        in the layer that produces hidden_states[-2] (second-to-last encoder layer), summed
        over heads (CLS column dropped).
    metric [B,N,C/heads]: that layer's key projections split into heads and averaged over
        heads, CLS row dropped.

    Dominant = top-`dominant` patches by cls_attn (raster order). The remaining patches, in
    raster order, give `contextual` targets at positions 0, s, 2s, ... (s = max(1,
    n_rem // contextual)); every other remaining patch joins the target with the highest key
    cosine (first on ties) and each contextual token is the plain mean of its group.
    Output: dominant tokens, then contextual tokens in target order. Unlike the released code,
    F has no CLS row, so every dominant slot is a patch (the released code spends one on CLS).
    """
    cls_attn = x.opts.get("cls_attn")
    metric = x.opts.get("metric")
    if cls_attn is None or metric is None:
        raise ValueError("method 'visionzip' needs options cls_attn [B,N] and metric [B,N,C/heads] "
                         "from the vision tower (ask it for the VisionZip inputs)")
    n = x.n
    d, c = visionzip_counts(n, x.budget, x.opts["dominant"], x.opts["contextual"])
    cls_attn = as_f32(cls_attn)
    dom = topk_mask(cls_attn, d)
    rest = paddle.logical_not(dom)
    n_rem = n - d
    target = paddle.zeros_like(dom)
    if c > 0:
        step = max(1, n_rem // c)
        rpos = paddle.cumsum(rest.astype("int64"), axis=1) - 1
        target = paddle.logical_and(rest, paddle.logical_and(paddle.remainder(rpos, step) == 0,
                                                             paddle.floor_divide(rpos, step) < c))
    others = paddle.logical_and(rest, paddle.logical_not(target))
    mn = nnf.normalize(as_f32(metric), p=2, axis=-1)
    sim = paddle.matmul(mn, mn, transpose_y=True)                         # [B,N,N]
    sim = paddle.where(target.unsqueeze(1), sim, paddle.full_like(sim, -float("inf")))
    best = paddle.argmax(sim, axis=2)                                     # target per patch
    pos = paddle.arange(n, dtype="int64").reshape([1, 1, -1])
    assign = paddle.logical_and(best.unsqueeze(2) == pos, others.unsqueeze(2))   # [B,other,target]
    members = paddle.logical_and(assign.transpose([0, 2, 1]), target.unsqueeze(2))
    mf = members.astype("float32")
    contextual = (x.F + paddle.matmul(mf, x.F)) / (1.0 + mf.sum(axis=2, keepdim=True))
    values = paddle.where(target.unsqueeze(2), contextual, x.F)
    stage = code(dom, VISUAL) + code(target, CENTRE)
    if c > 0:  # without targets the other patches are simply dropped
        stage = stage + code(others, REST)
    group = paddle.full_like(stage, GROUP_NONE)
    group = paddle.where(dom, paddle.full_like(stage, GROUP_RASTER), group)
    group = paddle.where(target, paddle.full_like(stage, GROUP_RASTER2), group)
    return assemble(values, group, group, stage, members=members, out_dtype=x.out_dtype, trim=x.trim)
