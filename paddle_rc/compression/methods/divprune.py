"""DivPrune: greedy max-min diversity over the features (cosine distance)."""
import paddle
import paddle.nn.functional as nnf

from paddle_rc.compression.assemble import GROUP_NONE, GROUP_RASTER, VISUAL, assemble
from paddle_rc.compression.methods.common import code, default_count
from paddle_rc.compression.ops import eye_mask
from paddle_rc.compression.registry import register


@register("divprune", defaults={"ratio": 64 / 576})
def divprune(x):
    """Pick T = budget (or round(N * ratio)) patches, output in raster order.

    Distance 1 - cos(F_i, F_j). First pick: the patch whose nearest other patch is farthest;
    then repeatedly the patch whose distance to the picked set (its nearest picked patch) is
    largest. Ties go to the lower index. T is a static count, so the loop unrolls when traced.
    """
    n = x.n
    t = x.budget if x.budget is not None else default_count(n, x.opts["ratio"])
    fn = nnf.normalize(x.F, p=2, axis=-1)
    dist = 1.0 - paddle.matmul(fn, fn, transpose_y=True)
    eye = eye_mask(n)
    big = paddle.full_like(dist, float("inf"))
    if n > 1:
        first_score = paddle.min(paddle.where(eye, big, dist), axis=1)
    else:
        first_score = paddle.zeros_like(dist[:, 0, :])
    pick = paddle.argmax(first_score, axis=1)
    pos = paddle.arange(n, dtype="int64").unsqueeze(0)
    chosen = pos == pick.unsqueeze(1)
    row = lambda i: paddle.take_along_axis(dist, i.reshape([-1, 1, 1]).expand([-1, 1, n]), axis=1).squeeze(1)
    mind = row(pick)
    neg = paddle.full_like(mind, -float("inf"))
    for _ in range(t - 1):
        pick = paddle.argmax(paddle.where(chosen, neg, mind), axis=1)
        chosen = paddle.logical_or(chosen, pos == pick.unsqueeze(1))
        mind = paddle.minimum(mind, row(pick))
    stage = code(chosen, VISUAL)
    group = paddle.where(chosen, paddle.full_like(stage, GROUP_RASTER), paddle.full_like(stage, GROUP_NONE))
    return assemble(x.F, group, group, stage, out_dtype=x.out_dtype, trim=x.trim)
