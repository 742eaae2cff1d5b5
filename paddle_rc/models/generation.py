"""The decoding loop, shared by the dynamic model and the exported (Paddle Inference) graphs.

Both backends provide the same two functions over paddle tensors:
    prefill(inputs_embeds [B,S,H], attention_mask [B,S], position_ids [B,S]) -> (logits [B,V], k, v)
    decode(input_ids [B,1], attention_mask [B,T+1], position_ids [B,1], k, v) -> (logits [B,V], k, v)
so prompt handling, stopping and sampling are one piece of code whichever runs the network.
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


def generate_loop(prefill: Callable, decode: Callable, inputs_embeds, attention_mask, position_ids, *,
                  max_new_tokens: int, eos_token_id: int, pad_token_id: int, temperature: float = 0.0,
                  top_p: float = 1.0, seed=0):
    """-> (tokens int64 [B, n] with pad after each sample's EOS, timings dict). `seed`: one int for
    every sample, or one per sample."""
    check_sampling(max_new_tokens, temperature, top_p)
    batch = inputs_embeds.shape[0]
    rngs = seed_generators(seed, batch)
    t0 = time.perf_counter()
    logits, k, v = prefill(inputs_embeds, attention_mask, position_ids)
    logits = _np(logits)
    t1 = time.perf_counter()
    finished = np.zeros(batch, dtype=bool)
    out = []
    mask = attention_mask.astype("int64")
    pos = position_ids[:, -1:]
    for step in range(max_new_tokens):
        nxt = sample_next(logits, temperature, top_p, rngs)
        nxt = np.where(finished, pad_token_id, nxt)
        out.append(nxt)
        finished |= nxt == eos_token_id
        if finished.all() or step == max_new_tokens - 1:
            break
        mask = paddle.concat([mask, paddle.ones([batch, 1], dtype="int64")], axis=1)
        pos = pos + 1
        ids = paddle.to_tensor(nxt.reshape(batch, 1).astype(np.int64))
        logits, k, v = decode(ids, mask, pos, k, v)
        logits = _np(logits)
    t2 = time.perf_counter()
    tokens = np.stack(out, axis=1) if out else np.zeros((batch, 0), dtype=np.int64)
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
