"""Weight-only quantization as pure functions.

Layout (Paddle Linear layout, weight W is [in, out]):

* int8: ``q`` int8 [in, out], values in [-127, 127].
* int4: values in [-7, 7] packed two per byte along the ``in`` axis: byte ``r`` of column ``c``
  holds row ``2r`` in its low nibble and row ``2r+1`` in its high nibble, each as a 4-bit two's
  complement number; ``q`` is int8 [ceil(in/2), out]. An odd ``in`` pads one zero row.
* scale: float32 [out] (per output channel) or [ceil(in/group_size), out] (group-wise).
  ``in`` that is not a multiple of ``group_size`` is zero-padded for the absmax only; the last
  group is simply shorter.

The symmetric ranges are [-127, 127] and [-7, 7]: -128 / -8 are never produced, so that the grid
is symmetric around zero, ``-q`` is always representable and ``scale = absmax / qmax`` maps the
largest magnitude exactly onto the grid (as paddle.nn.quant.weight_quantize and PaddleSlim's
abs_max do).

The numpy functions here are the offline path (quantize once, store); the paddle functions at the
bottom are what WeightOnlyLinear runs in forward, written with elementwise/bitwise ops only so that
they trace into a static graph.
"""
from __future__ import annotations

import math

import numpy as np
import paddle

QMAX = {8: 127, 4: 7}


def _qmax(bits: int) -> int:
    if bits not in QMAX:
        raise ValueError(f"weight bits must be 8 or 4, got {bits}")
    return QMAX[bits]


def _to_numpy(w) -> np.ndarray:
    if isinstance(w, np.ndarray):
        return w
    if isinstance(w, paddle.Tensor):
        # bf16 has no numpy dtype: go through float32 on the device first.
        if w.dtype in (paddle.bfloat16, paddle.float16):
            w = w.astype("float32")
        return w.numpy()
    return np.asarray(w)


def num_groups(in_features: int, group_size: int) -> int:
    return 1 if group_size == -1 else math.ceil(in_features / group_size)


# Clipping ratios tried by the clip search, largest first (1.0 = plain absmax, kept on ties).
CLIP_RATIOS = tuple(float(r) for r in np.round(np.linspace(1.0, 0.5, 11), 2))


def quantize_weight(w, bits: int = 8, group_size: int = -1, clip_search: bool = False):
    """Quantize a [in, out] weight. Returns (q, scale) as numpy arrays (see module docstring).

    ``clip_search``: instead of mapping each column's (group's) absmax onto the grid, pick per
    column (group) the scale ``ratio * absmax / qmax``, ratio in CLIP_RATIOS, with the least squared
    rounding error. Heavy-tailed weights gain most: a few large values no longer stretch the grid
    that every other value is rounded to. Costs len(CLIP_RATIOS) quantization passes."""
    qmax = _qmax(bits)
    w = _to_numpy(w).astype(np.float32)
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D [in, out] weight, got shape {w.shape}")
    n_in, n_out = w.shape
    if group_size == -1:
        grouped = w[None]
    else:
        if group_size <= 0:
            raise ValueError(f"group_size must be -1 or positive, got {group_size}")
        g = num_groups(n_in, group_size)
        padded = np.zeros((g * group_size, n_out), np.float32)
        padded[:n_in] = w
        grouped = padded.reshape(g, group_size, n_out)
    scale = np.abs(grouped).max(axis=1) / qmax  # [groups, out]
    if clip_search:
        scale = _search_scale(grouped, scale, qmax)
    expanded = scale if group_size == -1 else np.repeat(scale, group_size, axis=0)[:n_in]
    # An all-zero column/group quantizes to zeros whatever the scale; 1.0 avoids 0/0.
    safe = np.where(expanded > 0, expanded, np.float32(1.0))
    q = np.clip(np.rint(w / safe), -qmax, qmax).astype(np.int8)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    if group_size == -1:
        scale = scale[0]
    if bits == 4:
        q = pack_int4(q)
    return q, scale


def _search_scale(grouped: np.ndarray, scale: np.ndarray, qmax: int, block: int = 1024) -> np.ndarray:
    """Per (group, column) the CLIP_RATIOS scale with the least squared error; blocks of columns
    bound the temporaries."""
    best = scale.copy()
    for c in range(0, grouped.shape[2], block):
        cols = grouped[:, :, c:c + block]
        base = scale[:, c:c + block]
        best_err = np.full(base.shape, np.inf, np.float64)
        for ratio in CLIP_RATIOS:
            s = (base * np.float32(ratio)).astype(np.float32)
            safe = np.where(s > 0, s, np.float32(1.0))[:, None, :]
            err = np.square(np.clip(np.rint(cols / safe), -qmax, qmax) * safe - cols).sum(axis=1, dtype=np.float64)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best[:, c:c + block] = np.where(better, s, best[:, c:c + block])
    return best


def dequantize_weight(q, scale, bits: int, group_size: int, in_features: int) -> np.ndarray:
    """Inverse of quantize_weight (up to rounding): float32 [in_features, out]."""
    _qmax(bits)
    q = _to_numpy(q)
    scale = _to_numpy(scale).astype(np.float32)
    if bits == 4:
        q = unpack_int4(q, in_features)
    q = q[:in_features].astype(np.float32)
    if group_size == -1:
        return q * scale.reshape(1, -1)
    return q * np.repeat(scale, group_size, axis=0)[:in_features]


def pack_int4(q) -> np.ndarray:
    """[in, out] int values in [-8, 7] -> int8 [ceil(in/2), out], two nibbles per byte."""
    q = _to_numpy(q).astype(np.int16)
    if q.min(initial=0) < -8 or q.max(initial=0) > 7:
        raise ValueError("int4 values must lie in [-8, 7]")
    n_in, n_out = q.shape
    if n_in % 2:
        q = np.concatenate([q, np.zeros((1, n_out), np.int16)], axis=0)
    lo = q[0::2] & 0xF
    hi = q[1::2] & 0xF
    return ((hi << 4) | lo).astype(np.uint8).view(np.int8)


def unpack_int4(packed, in_features: int | None = None) -> np.ndarray:
    """int8 [ceil(in/2), out] -> int8 [in, out] (in = 2 * rows when in_features is None)."""
    p = _to_numpy(packed).astype(np.int8).astype(np.int16)
    lo = ((p & 0xF) ^ 8) - 8
    hi = p >> 4  # arithmetic shift of the sign-extended byte gives the signed high nibble
    out = np.empty((2 * p.shape[0], p.shape[1]), np.int8)
    out[0::2] = lo
    out[1::2] = hi
    return out if in_features is None else out[:in_features]


# ---------------------------------------------------------------------------------------------
# Paddle versions used inside WeightOnlyLinear.forward (static-graph friendly).


def int4_halves_tensor(packed: paddle.Tensor, dtype) -> tuple:
    """The signed nibbles of packed int4 bytes as ``dtype`` [rows, out]: (low, high), i.e. the even
    and the odd input rows.

    Decoded by gathering from 256-entry tables indexed by the byte value: on CPU each pass over a
    weight-sized tensor costs about the same whatever it computes, and this takes four passes (cast,
    offset, two gathers) where a bitwise decode takes eight or more."""
    v = paddle.arange(256, dtype="float32") - paddle.full([1], 128.0, "float32")
    sixteen = paddle.full([1], 16.0, "float32")
    high = paddle.floor(v / sixteen)
    low = v - sixteen * high  # the low nibble as an unsigned 0..15
    low = paddle.where(low >= paddle.full([1], 8.0, "float32"), low - sixteen, low)
    index = (packed.astype("int32") + paddle.full([1], 128, "int32")).reshape([-1])
    shape = packed.shape
    return (paddle.gather(low.astype(dtype), index).reshape(shape),
            paddle.gather(high.astype(dtype), index).reshape(shape))


def unpack_int4_tensor(packed: paddle.Tensor, in_features: int) -> paddle.Tensor:
    """Paddle version of unpack_int4, returning int32 [in_features, out]."""
    low, high = int4_halves_tensor(packed, "float32")
    rows, cols = packed.shape[0], packed.shape[1]
    # Interleave: [rows, 2, out] -> [2*rows, out] puts the low nibble of byte r at 2r, the high at 2r+1.
    both = paddle.stack([low, high], axis=1).reshape([2 * rows, cols]).astype("int32")
    return both[:in_features] if 2 * rows != in_features else both


def dequantize_tensor(qweight: paddle.Tensor, scale: paddle.Tensor, bits: int, group_size: int,
                      in_features: int, dtype) -> paddle.Tensor:
    """Paddle version of dequantize_weight: [in_features, out] in ``dtype``."""
    q = unpack_int4_tensor(qweight, in_features) if bits == 4 else qweight
    w = q.astype(dtype)
    s = scale.astype(dtype)
    if group_size == -1:
        return w * s.unsqueeze(0)
    s = paddle.repeat_interleave(s, group_size, axis=0)
    if s.shape[0] != in_features:
        s = s[:in_features]
    return w * s
