"""Plain LLaVA-1.5: all N patch tokens in raster order."""
import paddle

from paddle_rc.compression.assemble import GROUP_RASTER, VISUAL, assemble
from paddle_rc.compression.registry import register


@register("none", takes_budget=False)
def none(x):
    """Every patch, unchanged. A budget is ignored (the result's stats say so)."""
    stage = paddle.full_like(x.F[:, :, 0], VISUAL, dtype="int64")
    group = paddle.full_like(stage, GROUP_RASTER)
    return assemble(x.F, group, group, stage, out_dtype=x.out_dtype, trim=x.trim)
