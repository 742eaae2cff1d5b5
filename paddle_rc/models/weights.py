"""Loading a converted checkpoint's weights (Paddle layout safetensors) into a model."""
from __future__ import annotations

import json
import os

import numpy as np
import paddle
from safetensors import SafetensorError, safe_open

from paddle_rc.errors import UserError

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


def weight_files(directory: str) -> dict:
    """key -> file path for every tensor of the checkpoint."""
    index = os.path.join(directory, INDEX)
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"cannot read {index} ({type(e).__name__}: {e}); {_FIX}") from None
        files = {k: os.path.join(directory, v) for k, v in weight_map.items()}
        for path in sorted(set(files.values())):
            if not os.path.isfile(path):
                raise UserError(f"checkpoint shard missing: {path} (named in {index})")
        return files
    single = os.path.join(directory, SINGLE)
    if not os.path.isfile(single):
        raise UserError(f"{directory} has no weights ({SINGLE} or {INDEX}); "
                        "convert the model with tools/convert.py")
    with _open(single, "np") as f:
        return {k: single for k in f.keys()}


_FIX = "the checkpoint is damaged or incomplete: write it again (tools/convert.py or tools/quantize.py)"


def _open(path: str, framework: str):
    """safe_open, with a damaged file (truncated, empty, not safetensors) as one UserError line."""
    try:
        return safe_open(path, framework=framework)
    except (SafetensorError, OSError) as e:
        raise UserError(f"cannot read {path} ({' '.join(str(e).split())}); {_FIX}") from None


def load_weights(model: paddle.nn.Layer, directory: str) -> None:
    """Copy every tensor into the model's parameters and buffers, casting to their dtype."""
    files = weight_files(directory)
    targets = model.state_dict()
    missing = sorted(set(targets) - set(files))
    unexpected = sorted(set(files) - set(targets))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensors (e.g. {', '.join(unexpected[:3])})")
        raise UserError(f"checkpoint {directory} does not match the model: {'; '.join(parts)}")
    by_file: dict = {}
    for key, path in files.items():
        by_file.setdefault(path, []).append(key)
    for path, keys in by_file.items():
        # framework="paddle" is the one reader that also handles bf16 files.
        with _open(path, "paddle") as f:
            for key in keys:
                value = f.get_tensor(key)
                target = targets[key]
                if list(value.shape) != list(target.shape):
                    raise UserError(f"{key}: checkpoint shape {list(value.shape)} != model shape "
                                    f"{list(target.shape)}")
                target.set_value(value.astype(target.dtype))


def save_weights(model: paddle.nn.Layer, directory: str) -> None:
    """Single-file save of a model built in memory (the demo model, quantized models)."""
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    tensors = {k: np.ascontiguousarray(v.numpy()) for k, v in model.state_dict().items()}
    path = os.path.join(directory, SINGLE)
    save_file(tensors, path + ".tmp")
    os.replace(path + ".tmp", path)
