"""Prefill and decode for methods that prune inside the LLM (registry stage "llm": FastV).

They drive LlamaModel's own layers but live apart from LlamaModel.forward, so the decoder's usual
path carries no branch, argument or cost for them. The cache they keep is split in two stacked
tensors: the first K layers hold every prompt position, the later ones only the kept positions.
"""
from __future__ import annotations

import paddle
import paddle.nn.functional as F

from paddle_rc.models.llama import rotate_half


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
    q = q * cos[:, :, -1:, :] + rotate_half(q) * sin[:, :, -1:, :]
    if attn.num_kv_heads != attn.num_heads:
        keys = paddle.repeat_interleave(keys, attn.num_heads // attn.num_kv_heads, axis=1)
    scores = paddle.matmul(q * (attn.head_dim ** -0.5), keys, transpose_y=True) + bias[:, :, -1:, :]
    probs = F.softmax(scores.astype("float32"), axis=-1)
    return probs.mean(axis=1)[:, 0, :]


def _gather_rows(x, index):
    return paddle.take_along_axis(x, index.unsqueeze(2).expand([-1, -1, x.shape[2]]), axis=1)


def pruned_prefill(llm, inputs_embeds, attention_mask, position_ids, select, layer: int):
    """-> (hidden [B,S',H] after the final norm, k_early, v_early [K,B,kvH,S,d], k_late, v_late
    [L-K,B,kvH,S',d], keep_index [B,S']). select(scores [B,S]) -> keep_index; kept positions keep
    their original position ids (RoPE), as in the authors' KV-cache version."""
    x = inputs_embeds
    cos, sin, bias = _attention_inputs(llm, position_ids, attention_mask, paddle.shape(x)[1], x.dtype)
    early_k, early_v = [], []
    for i in range(layer):
        x_in = x
        x, k, v = llm.layers[i](x, cos, sin, bias)
        early_k.append(k)
        early_v.append(v)
    scores = last_position_attention(llm.layers[layer - 1], x_in, cos, sin, bias, early_k[-1])
    keep = select(scores)
    x = _gather_rows(x, keep)
    mask = paddle.take_along_axis(attention_mask, keep, axis=1)
    pos = paddle.take_along_axis(position_ids, keep, axis=1)
    cos, sin, bias = _attention_inputs(llm, pos, mask, paddle.shape(x)[1], x.dtype)
    late_k, late_v = [], []
    for i in range(layer, len(llm.layers)):
        x, k, v = llm.layers[i](x, cos, sin, bias)
        late_k.append(k)
        late_v.append(v)
    return (llm.norm(x), paddle.stack(early_k), paddle.stack(early_v), paddle.stack(late_k),
            paddle.stack(late_v), keep)


def pruned_decode(llm, inputs_embeds, attention_mask, position_ids, k_early, v_early, k_late, v_late,
                  keep_index):
    """One decode step over the split cache. attention_mask [B, S+t+1] covers every position
    (the generation loop's mask); the later layers see it restricted to the kept prompt positions.
    -> (hidden [B,1,H], k_early, v_early, k_late, v_late), the caches one position longer."""
    x = inputs_embeds
    layer = k_early.shape[0]
    q_len = paddle.shape(x)[1]
    # Positions generated so far (and now) follow the prompt in both caches alike.
    tail = paddle.shape(k_late)[3] - paddle.shape(keep_index)[1] + q_len
    total = paddle.shape(attention_mask)[1]
    late_mask = paddle.concat([paddle.take_along_axis(attention_mask, keep_index, axis=1),
                               attention_mask[:, total - tail:]], axis=1)
    cos, sin, bias = _attention_inputs(llm, position_ids, attention_mask, q_len, x.dtype)
    _, _, late_bias = _attention_inputs(llm, position_ids, late_mask, q_len, x.dtype)
    ks, vs = [], []
    for i, dec in enumerate(llm.layers):
        early = i < layer
        pk = k_early[i] if early else k_late[i - layer]
        pv = v_early[i] if early else v_late[i - layer]
        x, k, v = dec(x, cos, sin, bias if early else late_bias, pk, pv)
        ks.append(k)
        vs.append(v)
    # The layers return this step's keys/values only; append them to each cache.
    def grow(past, new):
        return paddle.concat([past, paddle.stack(new)], axis=3)
    return (llm.norm(x), grow(k_early, ks[:layer]), grow(v_early, vs[:layer]), grow(k_late, ks[layer:]),
            grow(v_late, vs[layer:]))
