"""A compact LLaMA decoder with an explicit KV cache.

Written for static-graph export (paddlenlp's Llama does not export with dynamic shapes under PIR):
no Python branches on tensor values or shapes, symbolic reshapes, and the cache passed in and out
as two stacked tensors [layers, B, kv_heads, T, head_dim], so prefill and decode are each one
traceable function of tensors.
"""
from __future__ import annotations

import weakref

import paddle
import paddle.nn as nn

from paddle_rc.models import fused
from paddle_rc.models.config import LlamaConfig
from paddle_rc.models.host_copy import advise_huge_pages, write

_NEG = -1e30  # finite so that a fully masked row (a left-pad query) softmaxes to uniform, not NaN


class RMSNorm(nn.Layer):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = self.create_parameter([hidden_size], default_initializer=nn.initializer.Constant(1.0))
        self.eps = eps

    def forward(self, x):
        h = x.astype("float32")
        # h * h, not h.pow(2): Paddle's CPU pow kernel is ~18x slower than a multiply (10 ms vs 0.55 ms
        # on a [27,65,256] tensor), which made RMSNorm the most expensive op of a small model's forward.
        h = h * paddle.rsqrt((h * h).mean(axis=-1, keepdim=True) + self.eps)
        return self.weight * h.astype(x.dtype)


def apply_rope(x, cos, sin):
    """x * cos + rotate_half(x) * sin, with the sign of rotate_half already folded into `sin` (see
    LlamaModel._rope): a roll is one op forward and backward where slice-negate-concat was four, the
    largest single cost of a small model's training step; one fused op at inference."""
    return fused.rope(x, cos, sin)


class LlamaAttention(nn.Layer):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.keep_probs, self.probs = False, None
        self.head_dim = cfg.head_dim
        h = cfg.hidden_size
        self.q_proj = nn.Linear(h, self.num_heads * self.head_dim, bias_attr=False)
        self.k_proj = nn.Linear(h, self.num_kv_heads * self.head_dim, bias_attr=False)
        self.v_proj = nn.Linear(h, self.num_kv_heads * self.head_dim, bias_attr=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, h, bias_attr=False)

    def _repeat_kv(self, x):
        if self.num_kv_heads == self.num_heads:
            return x
        return paddle.repeat_interleave(x, self.num_heads // self.num_kv_heads, axis=1)

    def forward(self, x, cos, sin, bias, past_k=None, past_v=None):
        """-> (output, k, v of this step's tokens only: the caller appends them to the cache)."""
        q = self.q_proj(x).reshape([0, 0, self.num_heads, self.head_dim]).transpose([0, 2, 1, 3])
        k = self.k_proj(x).reshape([0, 0, self.num_kv_heads, self.head_dim]).transpose([0, 2, 1, 3])
        v = self.v_proj(x).reshape([0, 0, self.num_kv_heads, self.head_dim]).transpose([0, 2, 1, 3])
        q = apply_rope(q, cos, sin)
        if self.num_kv_heads != self.num_heads:
            cos, sin = cos[:, :self.num_kv_heads], sin[:, :self.num_kv_heads]
        k = apply_rope(k, cos, sin)
        # Scaling q ([B,H,S,d]) rather than the scores ([B,H,S,T]) touches d/T as many values.
        q = q * (self.head_dim ** -0.5)
        keys, values = self._repeat_kv(k), self._repeat_kv(v)
        if past_k is None:
            scores = paddle.matmul(q, keys, transpose_y=True) + bias
            probs = fused.softmax(scores.astype("float32")).astype(q.dtype)
            if self.keep_probs:  # the demo's training losses shape this layer's attention (paddle_rc.train)
                self.probs = probs
            out = paddle.matmul(probs, values)
        else:
            # The cache is never concatenated with the new keys/values here: the scores against the
            # past and against the step's own tokens are computed apart and joined (a few values per
            # head in decode), and the output sums both parts. Concatenating would copy this layer's
            # whole cache once per token on top of the one copy that appends the step to the cache.
            past_keys, past_values = self._repeat_kv(past_k), self._repeat_kv(past_v)
            scores = paddle.concat([paddle.matmul(q, past_keys, transpose_y=True),
                                    paddle.matmul(q, keys, transpose_y=True)], axis=-1) + bias
            probs = fused.softmax(scores.astype("float32")).astype(q.dtype)
            past_len = paddle.shape(past_k)[2]
            out = paddle.matmul(probs[:, :, :, :past_len], past_values) + \
                paddle.matmul(probs[:, :, :, past_len:], values)
        out = out.transpose([0, 2, 1, 3]).reshape([0, 0, self.num_heads * self.head_dim])
        return self.o_proj(out), k, v


class LlamaMLP(nn.Layer):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias_attr=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias_attr=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias_attr=False)

    def forward(self, x):
        return self.down_proj(fused.swiglu(self.gate_proj(x), self.up_proj(x)))


class LlamaDecoderLayer(nn.Layer):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.self_attn = LlamaAttention(cfg)
        self.mlp = LlamaMLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, bias, past_k=None, past_v=None):
        h, k, v = self.self_attn(self.input_layernorm(x), cos, sin, bias, past_k, past_v)
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, k, v


class LlamaModel(nn.Layer):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.LayerList([LlamaDecoderLayer(cfg) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        inv_freq = 1.0 / (cfg.rope_theta ** (paddle.arange(0, cfg.head_dim, 2, dtype="float32") / cfg.head_dim))
        self.register_buffer("inv_freq", inv_freq, persistable=False)

    def _rope(self, position_ids, dtype):
        """(cos, signed sin) [B,1,S,d] for apply_rope: sin's first half negated, rotate_half's sign."""
        freqs = position_ids.astype("float32").unsqueeze(-1) * self.inv_freq  # [B,S,d/2]
        cos, sin = freqs.cos(), freqs.sin()
        return (paddle.concat([cos, cos], axis=-1).unsqueeze(1).astype(dtype),
                paddle.concat([-sin, sin], axis=-1).unsqueeze(1).astype(dtype))

    @staticmethod
    def attention_bias(attention_mask, query_len, dtype):
        """Additive bias [B,1,S,T]: causal over absolute positions, padding keys hidden.

        attention_mask [B,T] covers past + current tokens; the queries are the last S of them.
        """
        total = paddle.shape(attention_mask)[1]
        k_pos = paddle.arange(total).unsqueeze(0)  # [1,T]
        q_pos = (paddle.arange(query_len) + (total - query_len)).unsqueeze(1)  # [S,1]
        causal = (k_pos <= q_pos).unsqueeze(0)  # [1,S,T]
        keep = paddle.logical_and(causal, (attention_mask > 0).unsqueeze(1))  # [B,S,T]
        zero = paddle.zeros([1], dtype=dtype)
        neg = paddle.full([1], _NEG, dtype=dtype)
        return paddle.where(keep, zero, neg).unsqueeze(1)

    def forward(self, inputs_embeds, attention_mask, position_ids, past_k=None, past_v=None, append=True):
        """-> (hidden [B,S,H] after the final norm, k_cache, v_cache [L,B,kvH,T,d]); append=False: this
        call's keys/values [L,B,kvH,S,d] only, which the caller appends (the exported program: the
        deployed runner appends on the host, so that no output of the program is kept across runs)."""
        x = inputs_embeds
        cos, sin = self._rope(position_ids, x.dtype)
        bias = self.attention_bias(attention_mask, paddle.shape(x)[1], x.dtype)
        # Paddle's CPU kernels broadcast over an inner axis several times slower than they combine
        # equal shapes (a [B,1,S,T] bias added to [B,H,S,T] scores: 4.2 ms vs 0.7 ms to expand once
        # plus 1.0 ms per add), so the head axis is expanded here once rather than in every layer.
        heads = [-1, self.config.num_attention_heads, -1, -1]
        bias = bias.expand(heads)
        if not fused.active(x):  # the fused rotary op broadcasts over the heads itself
            cos, sin = cos.expand(heads), sin.expand(heads)
        if append and paddle.in_dynamic_mode() and not paddle.is_grad_enabled():
            return self._forward_in_place(x, cos, sin, bias, past_k, past_v)
        ks, vs = [], []
        for i, layer in enumerate(self.layers):
            pk = past_k[i] if past_k is not None else None
            pv = past_v[i] if past_v is not None else None
            x, k, v = layer(x, cos, sin, bias, pk, pv)
            ks.append(k)
            vs.append(v)
        k_new, v_new = paddle.stack(ks), paddle.stack(vs)
        if past_k is None or not append:
            return self.norm(x), k_new, v_new
        # The one copy of the cache per step: append this step's keys/values along the time axis.
        return self.norm(x), paddle.concat([past_k, k_new], axis=3), paddle.concat([past_v, v_new], axis=3)

    def _forward_in_place(self, x, cos, sin, bias, past_k, past_v):
        """Inference (dynamic mode, no gradients): the same computation, but each layer's keys and
        values are written into the returned cache as the layer finishes, and the cache has room
        for CACHE_ROOM more tokens, so decode appends in place. The stacked path above holds a
        prefill's per-layer keys/values next to their stacked copy, and copies the whole cache
        into a new one at every decode step: twice the cache at once, 2 x 0.67 GB at 7B with 636
        tokens, and 1.3 GB of memory traffic per token. Traced graphs and training use the
        stacked path (same values)."""
        n = len(self.layers)
        past_len = 0 if past_k is None else int(past_k.shape[3])
        length = past_len + int(x.shape[1])
        room = appendable(past_k, length) and appendable(past_v, length)
        full_k = full_v = None
        if room:
            # The layers attend over the past's whole buffers (written in place, never copied), room
            # included, not over the cache view of its first past_len tokens: that view is strided,
            # and Paddle copied a layer's slice of it whole for every op reading it (shape, both
            # matmuls: 4.5 ms per 7B-width layer and token at 636 tokens, the cost of the attention
            # 30 times over). The room holds zeros and the bias masks it.
            full_k, full_v = whole_buffer(past_k), whole_buffer(past_v)
            fill = paddle.full(list(bias.shape[:3]) + [int(full_k.shape[3]) - past_len], _NEG, dtype=bias.dtype)
            bias = paddle.concat([bias[:, :, :, :past_len], fill, bias[:, :, :, past_len:]], axis=-1)
        for i, layer in enumerate(self.layers):
            if room:
                pk, pv = full_k[i], full_v[i]
            else:
                pk = past_k[i] if past_k is not None else None
                pv = past_v[i] if past_v is not None else None
            x, k, v = layer(x, cos, sin, bias, pk, pv)
            if full_k is None:
                full_k, full_v = new_buffer(past_k, k, n, length), new_buffer(past_v, v, n, length)
            at = (i, slice(None), slice(None), slice(past_len, length))
            write(full_k, at, k)
            write(full_v, at, v)
        for old in (past_k, past_v):
            forget(old)  # appended to: another decode from it must copy, not overwrite
        return self.norm(x), remember(full_k, length), remember(full_v, length)


# Decode steps an inference cache takes in place before it is copied into a larger one
# (at 7B, 1 MiB per token for keys and values together). The helpers below serve the dynamic model
# and the deployed runner (paddle_rc.export.runner.run_step) alike.
CACHE_ROOM = 64
_capacity = {}  # id(cache view) -> (weak reference to it, tokens its buffer holds)


def new_buffer(past, new, n_layers: int, length: int):
    """A contiguous [L, B, kvH, length + CACHE_ROOM, d] buffer, `past` copied to its start and the
    room zeroed (decode attends over it, masked: its values must be finite)."""
    shape = [n_layers] + list(new.shape)
    shape[3] = length + CACHE_ROOM
    buf = paddle.empty(shape, dtype=new.dtype)
    advise_huge_pages(buf)
    everything = (slice(None),) * 3
    if past is not None:
        write(buf, everything + (slice(0, int(past.shape[3])),), past)
    write(buf, everything + (slice(length, None),), 0)
    return buf


def appendable(cache, length: int) -> bool:
    if cache is None:
        return False
    entry = _capacity.get(id(cache))
    return entry is not None and entry[0]() is cache and length <= entry[1]


def whole_buffer(cache):
    """The contiguous tensor over all of `cache`'s buffer (same storage). Writing through a
    slice view instead would copy the whole cache per write (Paddle makes it contiguous)."""
    shape = list(cache.shape)
    shape[3] = _capacity[id(cache)][1]
    return paddle.as_strided(cache, shape, list(cache.strides))


def remember(buf, length: int):
    """The first `length` tokens of `buf` as the cache view handed out, appendable in place."""
    view = buf[:, :, :, :length]
    key = id(view)

    def drop(ref):
        if _capacity.get(key, (None,))[0] is ref:
            del _capacity[key]

    _capacity[key] = (weakref.ref(view, drop), int(buf.shape[3]))
    return view


def forget(cache) -> None:
    if cache is not None and appendable(cache, 0):
        del _capacity[id(cache)]


def positions_from_mask(attention_mask):
    """Left-padded batches: each sample's first real token is position 0."""
    pos = paddle.cumsum(attention_mask.astype("int64"), axis=-1) - 1
    return paddle.clip(pos, min=0)
