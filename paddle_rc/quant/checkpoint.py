"""Write a weight-only quantized copy of a converted checkpoint directory.

The source is streamed tensor by tensor (paddle_rc.convert's reader and sharded writer), so peak
memory is about one Linear weight and not the whole model: a float32 LLaVA-7B (~28 GB) does not
fit next to its quantized copy on a 24 GB machine. Which tensors are Linear weights is decided from
the model built under paddle.LazyGuard (no parameter storage), so the layer set is exactly the one
``prepare_quantized_model`` swaps when ``from_pretrained`` reads the result.

The destination is assembled in a sibling ``<dst>.tmp-XXXX`` directory and renamed into place at
the end, so an interrupted run never leaves something that looks like a finished checkpoint.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field

import numpy as np

from paddle_rc.errors import UserError
from paddle_rc.quant.config import QuantConfig
from paddle_rc.quant.functional import num_groups, quantize_weight
from paddle_rc.quant.model import ByteRatios

# Everything in a checkpoint directory that is not weights or config.json and must travel with it.
COPIED_DIRS = ("tokenizer", "clip_tokenizer")
WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json")


@dataclass
class QuantizeResult(ByteRatios):
    src: str
    dst: str
    config: dict
    quantized: list = field(default_factory=list)
    bytes_before: int = 0          # weight files on disk, source
    bytes_after: int = 0           # weight files on disk, destination
    linear_bytes_before: int = 0   # the quantized layers' float weights, as stored in the source
    linear_bytes_after: int = 0    # their qweight + scale

    def to_dict(self) -> dict:
        return {"src": self.src, "dst": self.dst, "quantization": self.config,
                "quantized_layers": len(self.quantized), "bytes_before": self.bytes_before,
                "bytes_after": self.bytes_after, "ratio": self.ratio,
                "linear_bytes_before": self.linear_bytes_before,
                "linear_bytes_after": self.linear_bytes_after, "linear_ratio": self.linear_ratio}

    def summary(self) -> str:
        mb = 1e6
        return (f"quantized {len(self.quantized)} Linear layers to int{self.config['weight_bits']} "
                f"({self.config['weight_quantize_type']}, group_size={self.config['group_size']})\n"
                f"checkpoint weights: {self.bytes_before / mb:.2f} MB -> {self.bytes_after / mb:.2f} MB "
                f"({100 * self.ratio:.1f}%)\n"
                f"quantized layers:   {self.linear_bytes_before / mb:.2f} MB -> "
                f"{self.linear_bytes_after / mb:.2f} MB ({100 * self.linear_ratio:.1f}%)\n"
                f"wrote {self.dst}")


def checkpoint_weight_bytes(directory: str) -> int:
    """Bytes of the weight files (safetensors shards + index) in a checkpoint directory."""
    return sum(os.path.getsize(os.path.join(directory, n)) for n in os.listdir(directory)
               if n.endswith(WEIGHT_SUFFIXES) and os.path.isfile(os.path.join(directory, n)))


def _linear_layers(llava_config, qconfig: QuantConfig):
    """({layer name: (in, out, has_bias)} to quantize, set of every state-dict key) from a
    parameter-less model."""
    import paddle

    from paddle_rc.models import LlavaForConditionalGeneration

    with paddle.LazyGuard():
        model = LlavaForConditionalGeneration(llava_config)
    picked = {}
    for name, layer in model.named_sublayers():
        if type(layer) is paddle.nn.Linear and qconfig.should_quantize(name):
            n_in, n_out = layer.weight.shape
            picked[name] = (int(n_in), int(n_out), layer.bias is not None)
    return picked, set(model.state_dict().keys())


class _OneLayerCache:
    """qweight and scale of a layer are planned as two tensors but come from one quantization;
    they are written back to back, so remembering the last layer suffices."""

    def __init__(self, reader, qconfig: QuantConfig):
        self.reader, self.qc = reader, qconfig
        self.name, self.value = None, None

    def get(self, name: str):
        if name != self.name:
            from paddle_rc.convert.readers import to_float

            key = name + ".weight"
            w = to_float(self.reader.raw(key), self.reader.info(key).dtype).astype(np.float32)
            self.value = quantize_weight(w, self.qc.weight_bits, self.qc.group_size, self.qc.clip_search)
            self.name = name
        return self.value


def _plan(reader, picked: dict, qc: QuantConfig, result: QuantizeResult) -> list:
    from paddle_rc.convert.writer import PlannedTensor

    cache = _OneLayerCache(reader, qc)
    plan = []
    for key in reader.keys():
        info = reader.info(key)
        layer, _, leaf = key.rpartition(".")
        if leaf == "weight" and layer in picked:
            n_in, n_out, _ = picked[layer]
            if tuple(info.shape) != (n_in, n_out):
                raise UserError(f"{key}: checkpoint shape {list(info.shape)} != model shape "
                                f"{[n_in, n_out]} (is config.json the one these weights belong to?)")
            rows = n_in if qc.weight_bits == 8 else (n_in + 1) // 2
            scale_shape = (n_out,) if qc.group_size == -1 else (num_groups(n_in, qc.group_size), n_out)
            qw = PlannedTensor(layer + ".qweight", "I8", (rows, n_out),
                               lambda n=layer: cache.get(n)[0])
            sc = PlannedTensor(layer + ".scale", "F32", scale_shape,
                               lambda n=layer: cache.get(n)[1])
            plan += [qw, sc]
            result.quantized.append(layer)
            result.linear_bytes_before += info.nbytes
            result.linear_bytes_after += qw.nbytes + sc.nbytes
        else:
            plan.append(PlannedTensor(key, info.dtype, tuple(info.shape),
                                      lambda k=key: reader.raw(k)))
            if leaf == "bias" and layer in picked:
                # The bias stays float, but it belongs to the layer's footprint on both sides.
                result.linear_bytes_before += info.nbytes
                result.linear_bytes_after += info.nbytes
    return plan


def _checkpoint_entry(name: str) -> bool:
    """Whether a directory entry is part of a checkpoint (replaced by --overwrite)."""
    from paddle_rc.convert.writer import is_weights_file

    return name in ("config.json",) + COPIED_DIRS or is_weights_file(name)


def quantize_checkpoint(src: str, dst: str, qconfig: QuantConfig, shard_size="2GB",
                        overwrite: bool = False, progress=None) -> QuantizeResult:
    """Quantize the checkpoint in ``src`` into a new checkpoint directory ``dst``.

    ``progress(done, total)`` is called after each tensor is written."""
    from paddle_rc.convert.readers import open_checkpoint
    from paddle_rc.convert.writer import parse_size, write_sharded
    from paddle_rc.models.config import LlavaConfig

    src, dst = os.path.abspath(src), os.path.abspath(dst)
    cfg = LlavaConfig.load(src)
    if cfg.quantization:
        q = cfg.quantization
        raise UserError(f"{src} is already quantized (int{q.get('weight_bits')}); quantize the "
                        "float checkpoint it was made from instead")
    if src == dst:
        raise UserError("--dst must differ from --model (the source is read while writing)")
    if os.path.exists(dst) and not overwrite:
        raise UserError(f"{dst} already exists; choose another --dst or pass --overwrite")
    if os.path.exists(dst) and not os.path.isfile(os.path.join(dst, "config.json")):
        raise UserError(f"{dst} exists and is not a checkpoint; refusing to replace it")
    max_shard = parse_size(shard_size)

    picked, model_keys = _linear_layers(cfg, qconfig)
    result = QuantizeResult(src=src, dst=dst, config=qconfig.to_dict())
    parent = os.path.dirname(dst) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(dst) + ".tmp-", dir=parent)
    # mkdtemp's 0700 would survive the rename; give the checkpoint ordinary directory permissions.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        with open_checkpoint(src, "model") as reader:
            keys = set(reader.keys())
            missing, unexpected = sorted(model_keys - keys), sorted(keys - model_keys)
            if missing or unexpected:
                raise UserError(f"{src} does not match its config.json: missing {len(missing)} "
                                f"tensors {missing[:3]}, unexpected {len(unexpected)} {unexpected[:3]}")
            plan = _plan(reader, picked, qconfig, result)
            done = iter(range(1, len(plan) + 1))
            on_tensor = (lambda t: progress(next(done), len(plan))) if progress else None
            write_sharded(tmp, plan, max_shard, on_tensor=on_tensor)
        for name in COPIED_DIRS:
            if os.path.isdir(os.path.join(src, name)):
                shutil.copytree(os.path.join(src, name), os.path.join(tmp, name))
        cfg.quantization = qconfig.to_dict()
        cfg.save(tmp)
        result.bytes_before = checkpoint_weight_bytes(src)
        result.bytes_after = checkpoint_weight_bytes(tmp)
        if os.path.exists(dst):
            # Swap via a rename so that dst is, at every moment, either the old or the new checkpoint.
            old = tempfile.mkdtemp(prefix=os.path.basename(dst) + ".old-", dir=parent)
            os.rename(dst, os.path.join(old, "ckpt"))
            os.rename(tmp, dst)
            # --overwrite replaces the checkpoint, not the user's other files in the folder (as
            # convert.py does). They move back only now, so no failure above can take them along.
            for name in os.listdir(os.path.join(old, "ckpt")):
                if not _checkpoint_entry(name) and not os.path.exists(os.path.join(dst, name)):
                    os.rename(os.path.join(old, "ckpt", name), os.path.join(dst, name))
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dst)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return result
