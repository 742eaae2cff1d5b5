"""Lazy, torch-free readers for the checkpoint files we convert from.

Both readers look at the file once to learn names, dtypes and shapes, and only touch a tensor's bytes
when it is asked for, so converting a 7B model never holds more than one tensor of the source in memory.

Dtypes are named as in the safetensors header ("F32", "F16", "BF16", ...). `raw()` gives a tensor as
stored (BF16 as its uint16 bit pattern, because numpy has no bfloat16); `get()` gives a float array
(F32/F16 unchanged, BF16 widened to float32, which is exact).
"""
from __future__ import annotations

import json
import mmap
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from paddle_rc.errors import UserError

# Storage dtype of each safetensors dtype name. BF16 is kept as raw bits.
NP_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"
# PaddleNLP / PaddleMIX save_pretrained names for paddle.save state dicts.
PD_INDEX = "model_state.pdparams.index.json"
PD_SINGLE = "model_state.pdparams"


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even, as torch's float32 -> bfloat16 cast does; NaNs stay (quiet) NaNs."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    nan = np.isnan(x)
    if nan.any():
        rounded = np.where(nan, (u >> np.uint32(16)) | np.uint32(0x0040), rounded)
    return rounded.astype(np.uint16)


def cast_raw(arr: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Convert a raw array (BF16 as bits) between float dtypes, returning raw (BF16 as bits)."""
    if src == dst:
        return arr
    if src not in FLOAT_DTYPES or dst not in FLOAT_DTYPES:
        raise ValueError(f"cannot cast {src} to {dst}")
    f = bf16_bits_to_f32(arr) if src == "BF16" else arr
    if dst == "BF16":
        return f32_to_bf16_bits(f.astype(np.float32))
    return f.astype(NP_DTYPES[dst])


def to_float(arr: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return bf16_bits_to_f32(arr)
    return arr


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * NP_DTYPES[self.dtype].itemsize


class _File:
    """One weights file: names -> TensorInfo, and a way to read a tensor's raw array."""

    path: str
    infos: dict

    def raw(self, key: str) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass


class SafetensorsFile(_File):
    def __init__(self, path: str):
        self.path = path
        self._mm = None
        try:
            with open(path, "rb") as f:
                head = f.read(8)
                if len(head) != 8:
                    raise ValueError("file shorter than the 8-byte header length")
                (n,) = struct.unpack("<Q", head)
                size = os.fstat(f.fileno()).st_size
                if n > size - 8 or n > 100_000_000:
                    raise ValueError(f"header length {n} does not fit the file ({size} bytes)")
                header = json.loads(f.read(n).decode("utf-8"))
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise UserError(f"{path} is not a readable safetensors file: {e}") from None
        self._data_start = 8 + n
        self._data_len = size - self._data_start
        self.metadata = header.pop("__metadata__", None) or {}
        self.infos = {}
        self._offsets = {}
        for name, h in header.items():
            try:
                dt, shape, (b, e) = h["dtype"], tuple(int(s) for s in h["shape"]), h["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise UserError(f"{path}: malformed header entry for {name!r}") from None
            if dt not in NP_DTYPES:
                raise UserError(f"{path}: tensor {name!r} has unsupported dtype {dt}")
            info = TensorInfo(dt, shape)
            if e - b != info.nbytes or e > self._data_len or b < 0:
                raise UserError(f"{path}: tensor {name!r} has inconsistent data offsets {b}..{e}")
            self.infos[name] = info
            self._offsets[name] = b

    def raw(self, key: str) -> np.ndarray:
        # A copy, so the caller's array outlives the mapping and is writable.
        value = self.view(key).copy()
        self.release(key)
        return value

    def file_offset(self, key: str) -> int:
        """Where `key`'s bytes start in the file (for a memory map of that tensor alone)."""
        return self._data_start + self._offsets[key]

    def view(self, key: str) -> np.ndarray:
        """The tensor as stored, read-only, on the file's memory map (no copy). Its pages count
        in this process's resident memory once read, until release(key) or close()."""
        info = self.infos[key]
        if info.nbytes == 0:
            return np.zeros(info.shape, NP_DTYPES[info.dtype])
        if self._mm is None:
            with open(self.path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        dt = NP_DTYPES[info.dtype]
        count = info.nbytes // dt.itemsize
        view = np.frombuffer(self._mm, dtype=dt, count=count, offset=self._data_start + self._offsets[key])
        return view.reshape(info.shape)

    def release(self, key: str) -> None:
        """Unmap the pages of `key` that were read (madvise DONTNEED): they stay in the page cache
        but leave this process's RSS, so streaming a 14 GB checkpoint does not show as 14 GB
        resident. A later view() reads them again. No-op where madvise is unavailable."""
        info = self.infos[key]
        if self._mm is None or info.nbytes == 0 or not hasattr(self._mm, "madvise"):
            return
        start = self._data_start + self._offsets[key]
        aligned = start - start % mmap.PAGESIZE
        try:
            self._mm.madvise(mmap.MADV_DONTNEED, aligned, start + info.nbytes - aligned)
        except (OSError, ValueError, AttributeError):
            pass

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None


# ---------------------------------------------------------------- torch .bin (zip pickle) without torch

_TORCH_STORAGES = {
    "FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16", "DoubleStorage": "F64",
    "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16", "CharStorage": "I8",
    "ByteStorage": "U8", "BoolStorage": "BOOL",
}


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: str
    numel: int


@dataclass(frozen=True)
class _LazyTensor:
    storage: _StorageRef
    offset: int
    shape: tuple
    stride: tuple


class _StorageType:
    def __init__(self, dtype: str):
        self.dtype = dtype


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _LazyTensor(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *args):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Only rebuilds what a state dict needs; anything else in the pickle is refused rather than run."""

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return _rebuild_parameter
        if module == "torch" and name in _TORCH_STORAGES:
            return _StorageType(_TORCH_STORAGES[name])
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        stype, key, _location, numel = pid[1], pid[2], pid[3], pid[4]
        if not isinstance(stype, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {stype!r}")
        return _StorageRef(str(key), stype.dtype, int(numel))


class TorchBinFile(_File):
    def __init__(self, path: str):
        self.path = path
        self._mm = None
        try:
            zf = zipfile.ZipFile(path)
        except zipfile.BadZipFile:
            raise UserError(f"{path} is not a zip-format torch checkpoint (the legacy pre-1.6 torch.save "
                            "format is not supported; re-save it with a recent torch)") from None
        except OSError as e:
            raise UserError(f"cannot read {path}: {e}") from None
        with zf:
            pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pkl) != 1:
                raise UserError(f"{path} is a zip file but not a torch checkpoint (no <name>/data.pkl)")
            self._prefix = pkl[0][: -len("data.pkl")]
            try:
                obj = _RestrictedUnpickler(zf.open(pkl[0])).load()
            except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as e:
                raise UserError(f"{path}: cannot read the pickled state dict: {e}") from None
            self._members = {i.filename: i for i in zf.infolist()}
        if not isinstance(obj, dict):
            raise UserError(f"{path} does not hold a state dict (found {type(obj).__name__})")
        if "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        self._tensors = {}
        self.infos = {}
        for k, v in obj.items():
            if isinstance(v, _LazyTensor):
                self._tensors[k] = v
                self.infos[k] = TensorInfo(v.storage.dtype, v.shape)

    def _storage_array(self, ref: _StorageRef) -> np.ndarray:
        name = f"{self._prefix}data/{ref.key}"
        zi = self._members.get(name)
        if zi is None:
            raise UserError(f"{self.path}: storage {name} is missing from the archive")
        dt = NP_DTYPES[ref.dtype]
        if zi.file_size < ref.numel * dt.itemsize:
            raise UserError(f"{self.path}: storage {name} is truncated")
        if zi.compress_type == zipfile.ZIP_STORED:
            if self._mm is None:
                with open(self.path, "rb") as f:
                    self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            # Local file header: 30 fixed bytes, then the name and an extra field whose lengths sit at 26/28.
            lh = self._mm[zi.header_offset: zi.header_offset + 30]
            if lh[:4] != b"PK\x03\x04":
                raise UserError(f"{self.path}: corrupt zip entry {name}")
            n_name, n_extra = struct.unpack("<HH", lh[26:30])
            start = zi.header_offset + 30 + n_name + n_extra
            return np.frombuffer(self._mm, dtype=dt, count=ref.numel, offset=start)
        with zipfile.ZipFile(self.path) as zf:
            return np.frombuffer(zf.read(name), dtype=dt, count=ref.numel)

    def raw(self, key: str) -> np.ndarray:
        t = self._tensors[key]
        dt = NP_DTYPES[t.storage.dtype]
        if 0 in t.shape:
            return np.zeros(t.shape, dt)
        last = t.offset + sum((n - 1) * s for n, s in zip(t.shape, t.stride))
        if t.offset < 0 or last >= t.storage.numel or min(t.stride, default=0) < 0:
            raise UserError(f"{self.path}: tensor {key!r} does not fit its storage")
        store = self._storage_array(t.storage)
        view = np.lib.stride_tricks.as_strided(
            store[t.offset:], shape=t.shape, strides=tuple(s * dt.itemsize for s in t.stride), writeable=False)
        return np.array(view, order="C")

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None


class PaddleParamsFile(_File):
    """A paddle.save state dict (.pdparams). Paddle's pickle has no lazy form, so the whole file is
    read at once: a 7B fp16 checkpoint needs its 14 GB in memory (safetensors sources stream)."""

    def __init__(self, path: str):
        import paddle

        self.path = path
        try:
            obj = paddle.load(path, return_numpy=True)
        except Exception as e:  # paddle.load raises whatever its unpickler meets in a damaged file
            raise UserError(f"cannot read {path} as a paddle.save state dict ({type(e).__name__}: {e})") from None
        if not isinstance(obj, dict):
            raise UserError(f"{path} does not hold a state dict (found {type(obj).__name__})")
        self._arrays, self.infos = {}, {}
        for k, v in obj.items():
            if isinstance(v, np.ndarray):
                # Paddle keeps bfloat16 as its uint16 bit pattern, which is our raw BF16 form.
                dtype = "BF16" if v.dtype == np.uint16 else _NP_NAMES.get(v.dtype.newbyteorder("<"))
                if dtype is None:
                    raise UserError(f"{path}: tensor {k!r} has unsupported dtype {v.dtype}")
                self._arrays[k] = v
                self.infos[k] = TensorInfo(dtype, tuple(v.shape))

    def raw(self, key: str) -> np.ndarray:
        return self._arrays[key]

    def close(self) -> None:
        self._arrays = {}


_NP_NAMES = {dt: name for name, dt in NP_DTYPES.items() if name != "BF16"}


def open_weights_file(path: str) -> _File:
    if path.endswith(".safetensors"):
        return SafetensorsFile(path)
    if path.endswith(".pdparams"):
        return PaddleParamsFile(path)
    return TorchBinFile(path)


# ---------------------------------------------------------------- a directory of (possibly sharded) files

class CheckpointReader:
    """All tensors of a checkpoint directory, read one at a time on demand."""

    def __init__(self, directory: str, files: list, key_to_file: dict):
        self.directory = directory
        self.files = files
        self._where = key_to_file

    def keys(self) -> list:
        return list(self._where)

    def __contains__(self, key) -> bool:
        return key in self._where

    def __len__(self) -> int:
        return len(self._where)

    def info(self, key: str) -> TensorInfo:
        return self._where[key].infos[key]

    def raw(self, key: str) -> np.ndarray:
        return self._where[key].raw(key)

    def get(self, key: str) -> np.ndarray:
        return to_float(self.raw(key), self.info(key).dtype)

    def close(self) -> None:
        for f in self.files:
            f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def find_weight_files(directory: str):
    """(index path or None, list of weight file paths) for the first layout present, or None."""
    for index, single in ((SAFE_INDEX, SAFE_SINGLE), (BIN_INDEX, BIN_SINGLE), (PD_INDEX, PD_SINGLE)):
        ip = os.path.join(directory, index)
        if os.path.isfile(ip):
            return ip, None
        sp = os.path.join(directory, single)
        if os.path.isfile(sp):
            return None, [sp]
    return None


def open_checkpoint(directory: str, what: str = "checkpoint") -> CheckpointReader:
    """Open the weights in `directory` (safetensors preferred over .bin; sharded via its index)."""
    if not os.path.isdir(directory):
        raise UserError(f"{what} directory not found: {directory}")
    found = find_weight_files(directory)
    if found is None:
        raise UserError(f"{what} directory {directory} has no weights (expected {SAFE_SINGLE}, {SAFE_INDEX}, "
                        f"{BIN_SINGLE}, {BIN_INDEX}, {PD_SINGLE} or {PD_INDEX})")
    index_path, paths = found
    if index_path is None:
        f = open_weights_file(paths[0])
        return CheckpointReader(directory, [f], {k: f for k in f.infos})
    try:
        with open(index_path, encoding="utf-8") as fh:
            weight_map = json.load(fh)["weight_map"]
        if not isinstance(weight_map, dict):
            raise ValueError("weight_map is not an object")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read {index_path}: {e}") from None
    shard_names = list(dict.fromkeys(weight_map.values()))
    missing = [n for n in shard_names if not os.path.isfile(os.path.join(directory, n))]
    if missing:
        raise UserError(f"{index_path} names shard(s) that are missing from {directory}: {', '.join(missing)}")
    opened = {n: open_weights_file(os.path.join(directory, n)) for n in shard_names}
    where = {}
    for key, n in weight_map.items():
        if key not in opened[n].infos:
            raise UserError(f"{index_path} says {key!r} is in {n}, but that file does not contain it")
        where[key] = opened[n]
    return CheckpointReader(directory, list(opened.values()), where)
