"""The decoding loop, shared by the dynamic model and the exported (Paddle Inference) graphs.

Both backends provide the same two functions over paddle tensors:
    prefill(inputs_embeds [B,S,H], attention_mask [B,S], position_ids [B,S]) -> (logits [B,V], k, v)
    decode(input_ids [B,1], attention_mask [B,T+1], position_ids [B,1], k, v) -> (logits [B,V], k, v)
so prompt handling, stopping and sampling are one piece of code whichever runs the network.
k and v are stacked caches [layers, B, kv_heads, T, head_dim]; a method that prunes inside the LLM
(FastV) passes one SplitCache as k and None as v instead.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import paddle

from paddle_rc.errors import UserError


def check_sampling(max_new_tokens, temperature, top_p) -> None:
    """Refuse settings that would otherwise be silently reinterpreted (a negative temperature as
    greedy, top_p > 1 as no nucleus, a negative token count as one token)."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be a whole number of at least 1, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature < 0:
        raise UserError(f"temperature must be 0 (greedy) or a positive number, got {temperature!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise UserError(f"top_p must be in (0, 1], got {top_p!r}")


def sample_next(logits: np.ndarray, temperature: float, top_p: float, rngs) -> np.ndarray:
    """Greedy when temperature <= 0; otherwise temperature + nucleus (top-p) sampling, row b drawing
    from rngs[b] (one generator per sample, so a sample's draws do not depend on its batch)."""
    logits = logits.astype(np.float64)
    if temperature <= 0:
        return logits.argmax(axis=-1)
    z = logits / temperature
    z -= z.max(axis=-1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(axis=-1, keepdims=True)
    out = np.empty(len(probs), dtype=np.int64)
    for b, p in enumerate(probs):
        if top_p < 1.0:
            order = np.argsort(-p, kind="stable")
            cum = np.cumsum(p[order])
            # Keep the smallest prefix whose mass reaches top_p (at least one token).
            keep = order[: int(np.searchsorted(cum, top_p) + 1)]
            q = np.zeros_like(p)
            q[keep] = p[keep]
            p = q / q.sum()
        out[b] = rngs[b].choice(len(p), p=p)
    return out


class SplitCache:
    """The KV cache of in-LLM pruning (FastV): the first K layers cache every position (k, v
    [K,B,kvH,T,d], masked by the decoding loop's attention mask), the later ones only the kept
    positions (k_late, v_late [L-K,B,kvH,T',d]) under their own mask late_mask [B,T'].
    DecodeBatch selects, pads and joins its rows as it does a plain cache's."""

    def __init__(self, k, v, k_late, v_late, late_mask):
        self.k, self.v, self.k_late, self.v_late, self.late_mask = k, v, k_late, v_late, late_mask

    def tensors(self) -> tuple:
        return self.k, self.v, self.k_late, self.v_late, self.late_mask

    def rows(self, idx) -> "SplitCache":
        sel = [paddle.index_select(t, idx, axis=1) for t in (self.k, self.v, self.k_late, self.v_late)]
        return SplitCache(*sel, paddle.index_select(self.late_mask, idx, axis=0))

    def pad_front(self, extra: int) -> "SplitCache":
        """The early caches `extra` positions longer at the front (the loop pads its mask alike)."""
        return SplitCache(_pad_front(self.k, extra), _pad_front(self.v, extra), self.k_late, self.v_late,
                          self.late_mask)

    @staticmethod
    def concat_rows(caches) -> "SplitCache":
        """Rows of several caches with equally long early parts; the later layers' parts are
        left-padded (masked) to the longest."""
        width = max(int(c.late_mask.shape[1]) for c in caches)
        parts = []
        for c in caches:
            extra = width - int(c.late_mask.shape[1])
            mask = c.late_mask
            if extra:
                mask = paddle.concat([paddle.zeros([mask.shape[0], extra], dtype=mask.dtype), mask], axis=1)
            parts.append((c.k, c.v, _pad_front(c.k_late, extra), _pad_front(c.v_late, extra), mask))
        return SplitCache(*[paddle.concat([p[i] for p in parts], axis=0 if i == 4 else 1) for i in range(5)])


def _pad_front(cache, extra: int):
    """A stacked cache [L,B,kvH,T,d] with `extra` zero positions in front of T."""
    if extra == 0:
        return cache
    shape = list(cache.shape)
    shape[3] = extra
    return paddle.concat([paddle.zeros(shape, dtype=cache.dtype), cache], axis=3)


def _cache_rows(cache, idx):
    if cache is None:
        return None
    return paddle.index_select(cache, idx, axis=1) if isinstance(cache, paddle.Tensor) else cache.rows(idx)


def _cache_pad(cache, extra: int):
    if cache is None:
        return None
    return _pad_front(cache, extra) if isinstance(cache, paddle.Tensor) else cache.pad_front(extra)


def _cache_concat(caches):
    if caches[0] is None:
        return None
    if isinstance(caches[0], paddle.Tensor):
        return paddle.concat(caches, axis=1)
    return type(caches[0]).concat_rows(caches)


class DecodeBatch:
    """Sequences decoded together, one row each. Rows join after their own prefill (`join`) and
    leave when they finish (`keep`), so no step computes for a finished sequence and a new sequence
    need not wait for the others to end. Rows are independent: a row's logits do not depend on which
    other rows share its batch (left padding is masked out)."""

    def __init__(self, decode: Callable, logits: np.ndarray, k, v, mask, pos, keys):
        self.decode_fn = decode
        self.logits = logits  # [B, V] host copy: the next token of each row is sampled from it
        self.k, self.v = k, v  # [L, B, kvH, T, d], or a SplitCache and None
        self.mask = mask  # int64 [B, T], 0 on left padding
        self.pos = pos  # int64 [B, 1], position of each row's last token
        self.keys = list(keys)  # the caller's name for each row

    @classmethod
    def prefill(cls, prefill: Callable, decode: Callable, inputs_embeds, attention_mask, position_ids,
                keys=None) -> "DecodeBatch":
        logits, k, v = prefill(inputs_embeds, attention_mask, position_ids)
        keys = range(inputs_embeds.shape[0]) if keys is None else keys
        return cls(decode, _np(logits), k, v, attention_mask.astype("int64"), position_ids[:, -1:], keys)

    def __len__(self) -> int:
        return len(self.keys)

    def keep(self, rows) -> None:
        """Keep only these rows (indices into the current order), in this order."""
        rows = [int(r) for r in rows]
        if rows == list(range(len(self.keys))):
            return
        if not rows:
            raise ValueError("a DecodeBatch cannot be empty; drop the batch instead")
        idx = paddle.to_tensor(np.asarray(rows, dtype=np.int64))
        self.k, self.v = _cache_rows(self.k, idx), _cache_rows(self.v, idx)
        self.mask = paddle.index_select(self.mask, idx, axis=0)
        self.pos = paddle.index_select(self.pos, idx, axis=0)
        self.logits = self.logits[rows]
        self.keys = [self.keys[r] for r in rows]

    def join(self, other: "DecodeBatch") -> None:
        """Append other's rows, left-padding the shorter cache (padding is masked, positions are kept)."""
        t_self, t_other = int(self.mask.shape[1]), int(other.mask.shape[1])
        width = max(t_self, t_other)
        parts = [_left_pad_rows(b, width - t) for b, t in ((self, t_self), (other, t_other))]
        self.k = _cache_concat([p[0] for p in parts])
        self.v = _cache_concat([p[1] for p in parts])
        self.mask = paddle.concat([p[2] for p in parts], axis=0)
        self.pos = paddle.concat([self.pos, other.pos], axis=0)
        self.logits = np.concatenate([self.logits, other.logits], axis=0)
        self.keys += other.keys

    def step(self, tokens: np.ndarray) -> None:
        """Feed one token per row; afterwards `logits` predict the token after it."""
        batch = len(self.keys)
        self.mask = paddle.concat([self.mask, paddle.ones([batch, 1], dtype="int64")], axis=1)
        self.pos = self.pos + 1
        ids = paddle.to_tensor(np.asarray(tokens, dtype=np.int64).reshape(batch, 1))
        logits, self.k, self.v = self.decode_fn(ids, self.mask, self.pos, self.k, self.v)
        self.logits = _np(logits)


def _left_pad_rows(batch: DecodeBatch, extra: int):
    if extra == 0:
        return batch.k, batch.v, batch.mask
    mask = paddle.zeros([len(batch), extra], dtype="int64")
    return _cache_pad(batch.k, extra), _cache_pad(batch.v, extra), paddle.concat([mask, batch.mask], axis=1)


def decode_to_end(batch: DecodeBatch, rngs: list, *, max_new_tokens: int, eos_token_id: int,
                  pad_token_id: int, temperature: float = 0.0, top_p: float = 1.0) -> np.ndarray:
    """Sample until every row has produced EOS or max_new_tokens; finished rows leave the batch.
    rngs[key] is row key's generator. -> int64 [B, n] (rows in key order 0..B-1), pad after EOS."""
    out = {key: [] for key in batch.keys}
    for step in range(max_new_tokens):
        nxt = sample_next(batch.logits, temperature, top_p, [rngs[key] for key in batch.keys])
        live = []
        for i, (key, tok) in enumerate(zip(batch.keys, nxt)):
            out[key].append(int(tok))
            if tok != eos_token_id:
                live.append(i)
        if not live or step == max_new_tokens - 1:
            break
        batch.keep(live)
        batch.step(nxt[live])
    width = max((len(v) for v in out.values()), default=0)
    tokens = np.full((len(out), width), pad_token_id, dtype=np.int64)
    for key, ids in out.items():
        tokens[key, :len(ids)] = ids
    return tokens


def generate_loop(prefill: Callable, decode: Callable, inputs_embeds, attention_mask, position_ids, *,
                  max_new_tokens: int, eos_token_id: int, pad_token_id: int, temperature: float = 0.0,
                  top_p: float = 1.0, seed=0):
    """-> (tokens int64 [B, n] with pad after each sample's EOS, timings dict). `seed`: one int for
    every sample, or one per sample."""
    check_sampling(max_new_tokens, temperature, top_p)
    rngs = seed_generators(seed, inputs_embeds.shape[0])
    t0 = time.perf_counter()
    batch = DecodeBatch.prefill(prefill, decode, inputs_embeds, attention_mask, position_ids)
    t1 = time.perf_counter()
    tokens = decode_to_end(batch, rngs, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                           pad_token_id=pad_token_id, temperature=temperature, top_p=top_p)
    t2 = time.perf_counter()
    return tokens, {"prefill": t1 - t0, "decode": t2 - t1, "new_tokens": int(tokens.shape[1])}


def seed_generators(seed, batch: int) -> list:
    seeds = [seed] * batch if isinstance(seed, (int, np.integer)) else list(seed)
    if len(seeds) != batch:
        raise ValueError(f"{len(seeds)} seeds for a batch of {batch}")
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0]
    if bad:
        raise UserError(f"a seed must be a whole number of 0 or more, got {bad[0]!r}")
    return [np.random.default_rng(int(s)) for s in seeds]


def _np(x) -> np.ndarray:
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)
