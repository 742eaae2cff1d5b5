"""TRIM (Song et al., COLING 2025; FreedomIntelligence/TRIM): keep the patches that are IQR outliers
of softmax(-(P t)), average every other patch into one token."""
import paddle
import paddle.nn.functional as nnf

from paddle_rc.compression.assemble import GROUP_NONE, GROUP_RASTER, REST, VISUAL, assemble
from paddle_rc.compression.methods.common import code, full_count
from paddle_rc.compression.ops import floor_scaled_float, iqr_outlier_count, topk_mask
from paddle_rc.compression.registry import P_FEATURE, TEXT, register



@register("trim", defaults={"ocr_hint": False}, reads={TEXT, P_FEATURE}, text_mode="question")
def trim(x):
    """P = visual_projection(post_layernorm(F)) and t the question's CLIP embedding, both as they
    are (not normalised). Score s = softmax over patches of -(P_j . t): the patches least similar to
    the question score highest (the authors' sign). Adaptive: keep the floor(N * r) top patches,
    r = the share of s strictly above Q3 + 1.5 IQR; budget T: keep T - 1. Kept patches in raster
    order, then one token: the plain mean of F over the patches not kept.

    Without a question (t None or has_text False) every score is equal: adaptive keeps no patch (only
    the mean token), a budget keeps the first T - 1 in raster order.
    """
    n = x.n
    if x.P is None or x.t is None:
        sim = paddle.zeros_like(x.F[:, :, 0])
    else:
        sim = paddle.matmul(x.P, x.t.unsqueeze(2)).squeeze(2)
        sim = paddle.where(x.has_text.unsqueeze(1), sim, paddle.zeros_like(sim))
    s = nnf.softmax(-sim, axis=-1)
    n_all = full_count(s, n)
    if x.budget is None:
        # The authors compute int(N * (count / N)) in floats; floor_scaled_float does the same.
        keep_n = floor_scaled_float(n_all, iqr_outlier_count(s), n_all)
    else:
        keep_n = full_count(s, x.budget - 1)
    keep = topk_mask(s, keep_n)
    rest = paddle.logical_not(keep)
    rf = rest.astype("float32")
    mean = paddle.matmul(rf.unsqueeze(1), x.F).squeeze(1) / paddle.clip(rf.sum(axis=1, keepdim=True), min=1.0)
    extra_on = paddle.ones_like(keep[:, 0])
    stage = code(keep, VISUAL) + code(rest, REST)
    group = paddle.where(keep, paddle.full_like(stage, GROUP_RASTER), paddle.full_like(stage, GROUP_NONE))
    return assemble(x.F, group, group, stage, mean, extra_on, extra_members=rest,
                    out_dtype=x.out_dtype, trim=x.trim)
