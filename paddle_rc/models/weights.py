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


def load_weights(model: paddle.nn.Layer, directory: str, mapped=(), skip=(), only=()) -> None:
    """Copy every tensor into the model's parameters and buffers, casting to their dtype. Parameters
    whose names start with a prefix in `skip` are left alone (and so, under paddle.LazyGuard, take no
    memory); with `only`, just the parameters under those prefixes are loaded.

    Memory: each tensor is read from the file's memory map straight into its parameter (one copy;
    a dtype change adds one temporary of the parameter's size), and its mapped pages leave the
    process's resident set right after, so loading never shows a whole shard (2 GB) as resident
    on top of the model. Tensors that change dtype are loaded first, largest first, while little
    else is resident: their temporaries (up to 2x the float32 lm_head at 7B) then set the peak
    below the loaded model's, and the heap space they free is reused by the tensors after them."""
    from paddle_rc.convert.readers import NP_DTYPES, SafetensorsFile, bf16_bits_to_f32

    files = weight_files(directory)
    everything = model.state_dict()
    targets = {k: v for k, v in everything.items()
               if not any(k.startswith(p) for p in skip) and (not only or any(k.startswith(p) for p in only))}
    missing = sorted(set(targets) - set(files))
    # a partial load (only) leaves the rest of the file to the load that made the model
    unexpected = [] if only else sorted(set(files) - set(everything) - set(mapped))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensors (e.g. {', '.join(unexpected[:3])})")
        raise UserError(f"checkpoint {directory} does not match the model: {'; '.join(parts)}")
    opened = {}
    try:
        for path in sorted(set(files.values())):
            try:
                opened[path] = SafetensorsFile(path)
            except UserError as e:
                raise UserError(f"cannot read {path} ({' '.join(str(e).split())}); {_FIX}") from None
        for key in targets:
            info = opened[files[key]].infos.get(key)
            if info is None:
                raise UserError(f"{key} is not in {files[key]} (named there by {INDEX}); {_FIX}")
            if list(info.shape) != list(targets[key].shape):
                raise UserError(f"{key}: checkpoint shape {list(info.shape)} != model shape "
                                f"{list(targets[key].shape)}")
        order = sorted(targets, key=lambda k: (NP_DTYPES[opened[files[k]].infos[k].dtype] == _np_dtype(targets[k]),
                                               -opened[files[k]].infos[k].nbytes))
        for key in order:
            f, target = opened[files[key]], targets[key]
            want = _np_dtype(target)
            if want is None:  # bfloat16/float16 parameters (GPU loads): Paddle reads and casts
                with _open(files[key], "paddle") as sf:
                    target.set_value(sf.get_tensor(key).astype(target.dtype))
                continue
            try:
                value = f.view(key)
                if f.infos[key].dtype == "BF16":
                    value = bf16_bits_to_f32(value)
                if value.dtype != want:
                    value = value.astype(want)
            except (OSError, ValueError) as e:  # e.g. the file shrank after its header was read
                raise UserError(f"cannot read {key} from {files[key]} ({e}); {_FIX}") from None
            target.set_value(value)
            del value
            f.release(key)
    finally:
        for f in opened.values():
            f.close()


def _np_dtype(target):
    """The numpy dtype of a parameter's storage, or None where numpy has none (bfloat16) or the
    parameter is half precision (left to Paddle's own cast)."""
    name = str(target.dtype).replace("paddle.", "")
    return {"float32": np.dtype("<f4"), "float64": np.dtype("<f8"), "int8": np.dtype("i1"),
            "int32": np.dtype("<i4"), "int64": np.dtype("<i8"), "uint8": np.dtype("u1"),
            "bool": np.dtype("?")}.get(name)


class MappedEmbedding(paddle.nn.Layer):
    """nn.Embedding's lookup for inference over a table left in its checkpoint file: the file is
    memory-mapped read-only, a lookup reads (pages in) only the rows asked for and returns them in
    float32. LLaVA-7B's token-embedding table is 0.5 GB in float32 and a prompt reads ~100 rows of
    it, so a quantized model (inference only) keeps it here rather than in a parameter, as the
    exported runner does with embed_tokens.npy. It has no parameters: nothing to train or save.
    `weight` builds the whole float32 table on demand (export writes it out)."""

    def __init__(self, path: str, key: str):
        super().__init__()
        from paddle_rc.convert.readers import NP_DTYPES, SafetensorsFile

        f = SafetensorsFile(path)
        info = f.infos[key]
        if len(info.shape) != 2 or info.dtype not in ("F32", "F16", "BF16"):
            raise UserError(f"{key} in {path}: expected a 2-D float table, got {info.dtype} {list(info.shape)}")
        self.path, self.key, self.stored_dtype = path, key, info.dtype
        self.num_embeddings, self.embedding_dim = (int(d) for d in info.shape)
        self._table = np.memmap(path, dtype=NP_DTYPES[info.dtype], mode="r", offset=f.file_offset(key),
                                shape=tuple(info.shape))

    def rows(self, index) -> np.ndarray:
        from paddle_rc.convert.readers import bf16_bits_to_f32

        index = np.asarray(index, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= self.num_embeddings):
            raise ValueError(f"token ids must be in [0, {self.num_embeddings}), got "
                             f"{int(index.min())}..{int(index.max())}")
        rows = self._table[index]
        if self.stored_dtype == "BF16":
            rows = bf16_bits_to_f32(rows)
        return np.ascontiguousarray(rows, dtype=np.float32)

    def forward(self, ids):
        return paddle.to_tensor(self.rows(ids.numpy() if isinstance(ids, paddle.Tensor) else ids))

    def table(self) -> np.ndarray:
        """The whole table in float32 (a copy)."""
        return self.rows(np.arange(self.num_embeddings))

    @property
    def weight(self) -> paddle.Tensor:
        return paddle.to_tensor(self.table())

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, mapped from {os.path.basename(self.path)} ({self.stored_dtype})"


def save_weights(model: paddle.nn.Layer, directory: str) -> None:
    """Single-file save of a model built in memory (the demo model, quantized models)."""
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    tensors = {k: np.ascontiguousarray(v.numpy()) for k, v in model.state_dict().items()}
    path = os.path.join(directory, SINGLE)
    save_file(tensors, path + ".tmp")
    os.replace(path + ".tmp", path)
