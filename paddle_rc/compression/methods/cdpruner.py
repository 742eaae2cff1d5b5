"""CDPruner (Zhang et al., NeurIPS 2025; Theia-4869/CDPruner): a conditional DPP over the visual
tokens, greedy MAP inference, budget mode only."""
import paddle
import paddle.nn.functional as nnf

from paddle_rc.compression.assemble import GROUP_NONE, GROUP_RASTER, VISUAL, assemble
from paddle_rc.compression.methods.common import code
from paddle_rc.compression.registry import P_FEATURE, TEXT, register


def relevance(P, t, has_text):
    """Per-patch relevance in [~0, 1]: the NEGATED cosine between P_j and the question, min-max
    normalised per sample as the authors do ((r - min + 1e-6) / (max - min)). t may be the mean of
    several unit-length segment embeddings: P_j / |P_j| . t is then the mean of the segment cosines.
    Samples without a question, or with equal relevance everywhere, get relevance 1 (the DPP over
    similarity alone)."""
    r = -paddle.matmul(nnf.normalize(P, p=2, axis=-1), t.unsqueeze(2)).squeeze(2)
    lo = paddle.min(r, axis=1, keepdim=True)
    hi = paddle.max(r, axis=1, keepdim=True)
    r = (r - lo + 1e-6) / paddle.where(hi > lo, hi - lo, paddle.ones_like(hi))
    # Equal relevance everywhere (max == min, where the authors divide by zero) counts as none.
    use = paddle.logical_and(has_text.unsqueeze(1), hi > lo)
    return paddle.where(use, r, paddle.ones_like(r))


def greedy_map(kernel, t):
    """Fast greedy MAP inference of a DPP (Chen et al. 2018) for t items: each step takes the item
    with the largest remaining marginal gain d_j^2, extends the Cholesky rows and lowers the gains.
    kernel [B,N,N]; t a static count, so the loop unrolls when traced. Returns [B,N] bool."""
    n = kernel.shape[1]
    pos = paddle.arange(n, dtype="int64").unsqueeze(0)
    gains = paddle.diagonal(kernel, axis1=1, axis2=2)                      # d_j^2, [B,N]
    chosen = paddle.zeros_like(gains, dtype="bool")
    rows = None                                                           # [B,i,N] Cholesky rows
    neg = paddle.full_like(gains, -float("inf"))
    for _ in range(t):
        j = paddle.argmax(gains, axis=1)                                   # first index on ties
        pick = (pos == j.unsqueeze(1))
        kj = paddle.take_along_axis(kernel, j.reshape([-1, 1, 1]).expand([-1, 1, n]), axis=1).squeeze(1)
        gj = paddle.take_along_axis(gains, j.reshape([-1, 1]), axis=1)
        # Once the kernel's rank is used up the best gain is 0 (or rounds below it), where the
        # authors' sqrt gives NaN. Then the rows stop growing and the remaining picks simply take
        # the next largest gains: still t distinct patches, all finite.
        ok = gj > 1e-12
        dj = paddle.sqrt(paddle.where(ok, gj, paddle.ones_like(gj)))
        if rows is not None:
            cj = paddle.take_along_axis(rows, j.reshape([-1, 1, 1]).expand([-1, rows.shape[1], 1]), axis=2)
            kj = kj - paddle.matmul(cj.transpose([0, 2, 1]), rows).squeeze(1)
        e = paddle.where(ok, kj / dj, paddle.zeros_like(kj))
        rows = e.unsqueeze(1) if rows is None else paddle.concat([rows, e.unsqueeze(1)], axis=1)
        gains = paddle.where(pick, neg, gains - e * e)
        chosen = paddle.logical_or(chosen, pick)
    return chosen


@register("cdpruner", defaults={"tokens": 64, "ocr_hint": False}, reads={TEXT, P_FEATURE},
          text_mode="question-segments", after_projector=True)
def cdpruner(x):
    """Keep T = budget (or option `tokens`) patches, raster order.

    F here is already projected into the LLM's space (LLaVA's projector), as the authors compute
    the similarity there: sim = cos(F_i, F_j). With relevance r from P = visual_projection(
    post_layernorm(feature layer)) and the question, the kernel is r_i sim_ij r_j and the kept set
    its greedy MAP. The emitted tokens are the projected features of the kept patches.
    """
    t = x.budget if x.budget is not None else max(1, min(x.n, int(x.opts["tokens"])))
    fn = nnf.normalize(x.F, p=2, axis=-1)
    sim = paddle.matmul(fn, fn, transpose_y=True)
    if x.P is None or x.t is None:
        r = paddle.ones_like(x.F[:, :, 0])
    else:
        r = relevance(x.P, x.t, x.has_text)
    kernel = r.unsqueeze(2) * sim * r.unsqueeze(1)
    keep = greedy_map(kernel, t)
    stage = code(keep, VISUAL)
    group = paddle.where(keep, paddle.full_like(stage, GROUP_RASTER), paddle.full_like(stage, GROUP_NONE))
    return assemble(x.F, group, group, stage, out_dtype=x.out_dtype, trim=x.trim)
