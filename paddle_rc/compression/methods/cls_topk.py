"""FasterVLM-style: the T patches with the highest CLS attention, raster order."""
import paddle

from paddle_rc.compression.assemble import GROUP_NONE, GROUP_RASTER, VISUAL, assemble
from paddle_rc.compression.methods.common import code, default_count
from paddle_rc.compression.ops import topk_mask, visual_score
from paddle_rc.compression.registry import QK, register


@register("cls-topk", defaults={"ratio": 64 / 576}, reads={QK})
def cls_topk(x):
    """Top-T of s_vis (§2), T = budget or round(N * ratio)."""
    t = x.budget if x.budget is not None else default_count(x.n, x.opts["ratio"])
    keep = topk_mask(visual_score(x.Q, x.K), t)
    stage = code(keep, VISUAL)
    group = paddle.where(keep, paddle.full_like(stage, GROUP_RASTER), paddle.full_like(stage, GROUP_NONE))
    return assemble(x.F, group, group, stage, out_dtype=x.out_dtype, trim=x.trim)
