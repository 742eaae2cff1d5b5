"""Sharded safetensors writer.

The caller describes every output tensor up front (name, dtype, shape, and a function producing it), so
shard boundaries and each file's header are known before any data is read: each tensor is then produced,
written and dropped, and peak memory is about one tensor. Files are written under temporary names and only
renamed into place once every shard is complete, the index last, so an interrupted run never leaves a set
of files that looks like a finished checkpoint.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from paddle_rc.convert.readers import NP_DTYPES, SAFE_INDEX, SAFE_SINGLE, TensorInfo
from paddle_rc.errors import UserError

DEFAULT_SHARD_BYTES = 2 * 1000 ** 3
_SHARD_RE = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")


@dataclass
class PlannedTensor:
    name: str
    dtype: str          # safetensors dtype name of the stored data
    shape: tuple
    produce: Callable[[], np.ndarray]   # returns the raw array (BF16 as uint16 bits)

    @property
    def nbytes(self) -> int:
        return TensorInfo(self.dtype, tuple(self.shape)).nbytes


def parse_size(text) -> int:
    """'2GB' -> 2e9, '512MiB' -> 512*2**20, '1000' -> 1000 bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*", str(text), re.IGNORECASE)
    if not m:
        raise UserError(f"cannot parse size {text!r} (use e.g. 2GB, 500MB, 4GiB or a byte count)")
    unit = m.group(2).lower().rstrip("b")
    base = 1024 if unit.endswith("i") else 1000
    power = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}[unit.rstrip("i")]
    n = int(float(m.group(1)) * base ** power)
    if n <= 0:
        raise UserError(f"size must be positive: {text!r}")
    return n


def plan_shards(tensors: list, max_shard_bytes: int) -> list:
    """Greedy, order-preserving split; a tensor larger than the limit gets a shard of its own."""
    shards, cur, cur_bytes = [], [], 0
    for t in tensors:
        if cur and cur_bytes + t.nbytes > max_shard_bytes:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append(t)
        cur_bytes += t.nbytes
    if cur or not shards:
        shards.append(cur)
    return shards


def _header_bytes(tensors: list, metadata: dict) -> bytes:
    header = {"__metadata__": metadata}
    off = 0
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [off, off + t.nbytes]}
        off += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    # The data section should start 8-byte aligned; the format allows trailing spaces in the header.
    raw += b" " * (-(len(raw)) % 8)
    return len(raw).to_bytes(8, "little") + raw


def _write_one(path: str, tensors: list, on_tensor=None) -> None:
    with open(path, "wb") as f:
        f.write(_header_bytes(tensors, {"format": "paddle_rc"}))
        for t in tensors:
            arr = t.produce()
            want = NP_DTYPES[t.dtype]
            if arr.dtype != want or tuple(arr.shape) != tuple(t.shape):
                raise AssertionError(f"{t.name}: produced {arr.dtype}{list(arr.shape)}, "
                                     f"planned {want}{list(t.shape)}")
            f.write(np.ascontiguousarray(arr).data)
            if on_tensor is not None:
                on_tensor(t)
            del arr
        f.flush()
        os.fsync(f.fileno())


def is_weights_file(name: str) -> bool:
    """model.safetensors, a shard of it, or its index: the files a checkpoint's weights occupy."""
    return name in (SAFE_SINGLE, SAFE_INDEX) or bool(_SHARD_RE.match(name))


def write_sharded(directory: str, tensors: list, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                  on_tensor=None) -> list:
    """Write `tensors` as model.safetensors, or model-0000i-of-0000n.safetensors + index. Returns file names."""
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor names in the write plan")
    os.makedirs(directory, exist_ok=True)
    shards = plan_shards(tensors, max_shard_bytes)
    n = len(shards)
    finals = [SAFE_SINGLE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    tmps = [os.path.join(directory, f".tmp-{name}") for name in finals]
    try:
        for shard, tmp in zip(shards, tmps):
            _write_one(tmp, shard, on_tensor)
        # Weights of an earlier run into the same directory would otherwise mix with ours.
        for name in os.listdir(directory):
            if is_weights_file(name):
                os.remove(os.path.join(directory, name))
        for tmp, final in zip(tmps, finals):
            os.replace(tmp, os.path.join(directory, final))
        if n > 1:
            index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)},
                     "weight_map": {t.name: finals[i] for i, shard in enumerate(shards) for t in shard}}
            tmp = os.path.join(directory, f".tmp-{SAFE_INDEX}")
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(index, f, indent=2)
            os.replace(tmp, os.path.join(directory, SAFE_INDEX))
    finally:
        for tmp in tmps:
            if os.path.exists(tmp):
                os.remove(tmp)
    return finals
