"""T uniformly random patches, raster order, seeded."""
import numpy as np
import paddle

from paddle_rc.compression.assemble import GROUP_NONE, GROUP_RASTER, VISUAL, assemble
from paddle_rc.compression.methods.common import code, default_count
from paddle_rc.compression.ops import topk_mask
from paddle_rc.compression.registry import register


@register("random", defaults={"seed": 0, "ratio": 64 / 576})
def random(x):
    """Keep T = budget (or round(N * ratio)) patches drawn uniformly without replacement.

    The draw depends on (seed, N) only, not on the batch, so a sample gets the same tokens
    alone or in a batch; it is a host-side constant, so the traced graph stays deterministic.
    """
    n = x.n
    t = x.budget if x.budget is not None else default_count(n, x.opts["ratio"])
    keys = np.random.RandomState(int(x.opts["seed"])).random_sample(n).astype("float32")
    keys = paddle.to_tensor(keys).unsqueeze(0).expand_as(x.F[:, :, 0])
    keep = topk_mask(keys, t)
    stage = code(keep, VISUAL)
    group = paddle.where(keep, paddle.full_like(stage, GROUP_RASTER), paddle.full_like(stage, GROUP_NONE))
    return assemble(x.F, group, group, stage, out_dtype=x.out_dtype, trim=x.trim)
