"""FastV (Chen et al., ECCV 2024; pkunlp-icler/FastV): pruning inside the LLM's prefill.

Unlike every other method this one runs in the LLM, not on the vision tower's outputs: the first K
decoder layers see all visual tokens; the attention the last prompt position pays them in layer K-1
(averaged over heads) ranks them; the other layers of the prefill, and their KV cache, keep only the
top ones. The registered function is the selection; paddle_rc.models.llm_pruning runs the layers.
"""
import paddle

from paddle_rc.compression.assemble import GROUP_NONE, GROUP_RASTER, VISUAL, assemble
from paddle_rc.compression.methods.common import code
from paddle_rc.compression.ops import topk_mask
from paddle_rc.compression.registry import LLM_ATTENTION, register

FASTV_DEFAULTS = {
    "layer": 2,          # K: layers 0..K-1 see every visual token, pruning happens before layer K
    "keep_ratio": 0.5,   # kept share of the visual tokens when no budget is given (the paper's R=50%)
}


def kept_count(n_visual, budget, opts):
    """Visual tokens kept after layer K: the budget, else int(N * keep_ratio) (at least 1)."""
    if budget is not None:
        return max(1, min(int(budget), n_visual))
    return max(1, min(n_visual, int(n_visual * float(opts["keep_ratio"]))))


def check_layer(opts, num_layers, explicit=True):
    """The pruning layer K. The default (2) is capped at num_layers - 1 for shallow (test) LLMs;
    a value the user gave must fit."""
    k = opts["layer"]
    if not explicit:
        return max(1, min(int(k), num_layers - 1))
    if isinstance(k, bool) or int(k) != k or not 1 <= int(k) < num_layers:
        raise ValueError(f"fastv option layer must be an integer in [1, {num_layers - 1}] "
                         f"(the LLM has {num_layers} layers), got {k!r}")
    return int(k)


@register("fastv", defaults=FASTV_DEFAULTS, reads={LLM_ATTENTION}, stage="llm")
def fastv_keep(scores, visual, n_visual, budget, opts):
    """Which sequence positions the layers from K on keep.

    scores [B,S]: attention of the last position to every position in layer K-1, mean over heads.
    visual [B,S] bool: the image's positions, exactly n_visual per row (a static int), or none at
    all (a decode step through the exported graph, which prunes nothing).
    Returns keep_index [B, S - n_visual + T] int64 ([B, S] when no position is visual), ascending:
    every non-visual position (text and left padding) and the T visual positions with the highest
    scores (ties to the earlier one).
    """
    t = kept_count(n_visual, budget, opts)
    top = topk_mask(scores, t, valid=visual)
    keep = paddle.logical_or(paddle.logical_not(visual), top)
    s = paddle.shape(scores)[1]
    pos = paddle.arange(s, dtype="int64").unsqueeze(0)
    key = paddle.where(keep, pos, pos + s)
    order = paddle.argsort(key, axis=1)
    # Every row keeps as many (its visual positions are n_visual or none); the count is a tensor so
    # that one traced program serves prefill (S - n_visual + T) and decode (S).
    kept = keep.astype("int64").sum(axis=1).max().reshape([1])
    return paddle.slice(order, axes=[1], starts=[0], ends=[kept])


def selection_result(kept, budget, opts, layer=None):
    """A CompressionResult describing which patches FastV kept (kept [B,N] bool), for stats and
    the --save-vis picture. Its tokens are placeholders: the LLM never sees them.

    layer: the K the model pruned after (opts["layer"], possibly capped, when None). The result
    also carries llm_layer (K) and llm_kept: per row, the kept patch indices (ascending int64)."""
    import numpy as np

    from paddle_rc.compression.result import CompressionResult

    k = int(opts["layer"]) if layer is None else int(layer)
    stage = code(kept, VISUAL)
    group = paddle.where(kept, paddle.full_like(stage, GROUP_RASTER), paddle.full_like(stage, GROUP_NONE))
    values = paddle.zeros(list(kept.shape) + [1], dtype="float32")
    core = assemble(values, group, group, stage)
    note = f"pruned inside the LLM after layer {k}"
    result = CompressionResult(core, "fastv", budget=budget, notes=[note])
    result.llm_layer = k
    result.llm_kept = [np.nonzero(row)[0].astype(np.int64) for row in kept.numpy()]
    return result
