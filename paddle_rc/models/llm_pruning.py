"""Prefill and decode for methods that prune inside the LLM (registry stage "llm": FastV).

They drive LlamaModel's own layers but live apart from LlamaModel.forward, so the decoder's usual
path carries no branch, argument or cost for them. The cache they keep is split in two stacked
tensors: the first K layers hold every prompt position, the later ones only the kept positions,
with a mask of their own (paddle_rc.models.generation.SplitCache carries the four and that mask).
"""
from __future__ import annotations

import paddle
from paddle_rc.models import fused

from paddle_rc.models.llama import apply_rope


def _attention_inputs(llm, position_ids, attention_mask, query_len, dtype):
    """cos, sin and the additive mask, expanded over heads, as LlamaModel.forward builds them."""
    cos, sin = llm._rope(position_ids, dtype)
    bias = llm.attention_bias(attention_mask, query_len, dtype)
    heads = [-1, llm.config.num_attention_heads, -1, -1]
    return cos.expand(heads), sin.expand(heads), bias.expand(heads)


def last_position_attention(layer, x, cos, sin, bias, keys):
    """Attention probabilities of the last position over all positions in `layer`, mean over heads.

    x: the layer's input [B,S,H]; keys: the rotated keys that layer returned [B,kvH,S,d]. The same
    arithmetic as LlamaAttention, for one query row (recomputing its q is cheaper than having
    every layer return its full attention map).
    """
    attn = layer.self_attn
    h = layer.input_layernorm(x[:, -1:, :])
    q = attn.q_proj(h).reshape([0, 0, attn.num_heads, attn.head_dim]).transpose([0, 2, 1, 3])
    q = apply_rope(q, cos[:, :, -1:, :], sin[:, :, -1:, :])
    if attn.num_kv_heads != attn.num_heads:
        keys = paddle.repeat_interleave(keys, attn.num_heads // attn.num_kv_heads, axis=1)
    scores = paddle.matmul(q * (attn.head_dim ** -0.5), keys, transpose_y=True) + bias[:, :, -1:, :]
    probs = fused.softmax(scores.astype("float32"))
    return probs.mean(axis=1)[:, 0, :]


def _gather_rows(x, index):
    return paddle.take_along_axis(x, index.unsqueeze(2).expand([-1, -1, x.shape[2]]), axis=1)


def pruned_step(llm, inputs_embeds, attention_mask, position_ids, layer: int, select=None, past=None,
                append=True):
    """One LLM call over new tokens, pruning them after `layer` (K) decoder layers; prefill and
    decode alike (the exported FastV graph is this function with a past and a selection).

    inputs_embeds [B,S,H] the new tokens; attention_mask [B,P+S] over the first K layers' P cached
    positions and the new ones; position_ids [B,S].
    past: None (no cache yet) or (k_early, v_early [K,B,kvH,P,d], k_late, v_late [L-K,B,kvH,P',d],
    late_mask [B,P']): the split cache, the later layers' positions with their own mask.
    select(scores [B,S]) -> keep [B,S'], ascending indices into the new positions; scores is the
    attention of the last new position in layer K-1, mean over heads, over the new positions.
    None keeps every new position without scoring (the dynamic model's decode).
    -> (hidden [B,S',H] after the final norm, k_early, v_early [K,B,kvH,P+S,d], k_late, v_late
    [L-K,B,kvH,P'+S',d], late_mask [B,P'+S'], keep [B,S'] or None). Kept positions keep their
    position ids (RoPE), as in the authors' KV-cache version. append=False: the four caches and
    late_mask are this call's parts only ([..,S,..], [..,S',..], [B,S']), which the caller appends
    (the exported program; see LlamaModel.forward).
    """
    x = inputs_embeds
    q_len = paddle.shape(x)[1]
    cos, sin, bias = _attention_inputs(llm, position_ids, attention_mask, q_len, x.dtype)
    if past is None:
        k_early, v_early, k_late, v_late, late_mask = None, None, None, None, None
        new_mask = attention_mask
    else:
        k_early, v_early, k_late, v_late, late_mask = past
        new_mask = attention_mask[:, paddle.shape(k_early)[3]:]
    early_k, early_v = [], []
    x_in = x
    for i in range(layer):
        x_in = x
        x, k, v = llm.layers[i](x, cos, sin, bias, None if past is None else k_early[i],
                                None if past is None else v_early[i])
        early_k.append(k)
        early_v.append(v)
    keep = None
    kept_mask = new_mask
    if select is not None:
        # The ranking is over the new positions only (a prefill's past is none or a masked slot).
        new_bias = bias
        if past is not None:
            _, _, new_bias = _attention_inputs(llm, position_ids, new_mask, q_len, x.dtype)
        keep = select(last_position_attention(llm.layers[layer - 1], x_in, cos, sin, new_bias, early_k[-1]))
        x = _gather_rows(x, keep)
        kept_mask = paddle.take_along_axis(new_mask, keep, axis=1)
        position_ids = paddle.take_along_axis(position_ids, keep, axis=1)
    full_late_mask = kept_mask if past is None else paddle.concat([late_mask, kept_mask], axis=1)
    if select is None:
        _, _, bias = _attention_inputs(llm, position_ids, full_late_mask, q_len, x.dtype)
    else:
        cos, sin, bias = _attention_inputs(llm, position_ids, full_late_mask, paddle.shape(x)[1], x.dtype)
    late_k, late_v = [], []
    for i in range(layer, len(llm.layers)):
        j = i - layer
        x, k, v = llm.layers[i](x, cos, sin, bias, None if past is None else k_late[j],
                                None if past is None else v_late[j])
        late_k.append(k)
        late_v.append(v)

    def grow(cache, new):  # the layers return this call's keys/values only
        if cache is None or not append:
            return paddle.stack(new)
        return paddle.concat([cache, paddle.stack(new)], axis=3)
    return (llm.norm(x), grow(k_early, early_k), grow(v_early, early_v), grow(k_late, late_k),
            grow(v_late, late_v), full_late_mask if append else kept_mask, keep)


def pruned_prefill(llm, inputs_embeds, attention_mask, position_ids, select, layer: int):
    """A prefill without cache: pruned_step(past=None) -> (hidden [B,S',H], k_early, v_early, k_late,
    v_late, late_mask [B,S'], keep [B,S'])."""
    return pruned_step(llm, inputs_embeds, attention_mask, position_ids, layer, select)
