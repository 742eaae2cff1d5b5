"""Whole-model weight-only quantization: swap nn.Linear layers for WeightOnlyLinear in place."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import paddle.nn as nn

from paddle_rc.quant.config import QuantConfig
from paddle_rc.quant.layers import WeightOnlyLinear


class ByteRatios:
    """Sizes after / before, for the whole model and for the quantized layers alone."""

    @property
    def ratio(self) -> float:
        return self.bytes_after / self.bytes_before if self.bytes_before else 1.0

    @property
    def linear_ratio(self) -> float:
        return self.linear_bytes_after / self.linear_bytes_before if self.linear_bytes_before else 1.0


@dataclass
class QuantReport(ByteRatios):
    quantized: list = field(default_factory=list)   # layer names now WeightOnlyLinear
    skipped: list = field(default_factory=list)     # Linear layers left in float by the skip list
    bytes_before: int = 0                           # whole state dict, before the swap
    bytes_after: int = 0                            # whole state dict, after the swap
    linear_bytes_before: int = 0                    # just the swapped layers' weights (+bias)
    linear_bytes_after: int = 0                     # their qweight + scale (+bias)

    def to_dict(self) -> dict:
        return {"quantized": len(self.quantized), "skipped": len(self.skipped),
                "bytes_before": self.bytes_before, "bytes_after": self.bytes_after,
                "ratio": self.ratio, "linear_bytes_before": self.linear_bytes_before,
                "linear_bytes_after": self.linear_bytes_after, "linear_ratio": self.linear_ratio}


def tensor_bytes(t) -> int:
    if isinstance(t, np.ndarray):
        return int(t.nbytes)
    return int(np.prod(t.shape, dtype=np.int64)) * int(t.element_size())


def state_dict_bytes(model_or_state_dict) -> int:
    """Bytes of every tensor in a state dict (parameters and persistable buffers)."""
    sd = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Layer) \
        else model_or_state_dict
    return sum(tensor_bytes(v) for v in sd.values())


def _layer_bytes(layer: nn.Layer) -> int:
    return sum(tensor_bytes(v) for v in layer.state_dict().values())


def _set_sublayer(root: nn.Layer, name: str, new: nn.Layer) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root
    for part in parent_name.split(".") if parent_name else []:
        parent = parent._sub_layers[part]
    # Writing _sub_layers directly works for Sequential/LayerList children ("0", "1", ...) too,
    # where setattr with a numeric name is not an attribute path.
    parent._sub_layers[child] = new


def _matching_linears(model: nn.Layer, config: QuantConfig, keys=None):
    picked, skipped = [], []
    for name, layer in model.named_sublayers():
        if type(layer) is not nn.Linear:
            continue
        if keys is not None:
            want = f"{name}.qweight" in keys
        else:
            want = config.should_quantize(name)
        (picked if want else skipped).append((name, layer))
    return picked, skipped


def _swap_linears(model: nn.Layer, config: QuantConfig, make, keys=None) -> QuantReport:
    """Replace every picked nn.Linear by make(linear) (a WeightOnlyLinear), keeping train/eval mode."""
    report = QuantReport(bytes_before=state_dict_bytes(model))
    picked, skipped = _matching_linears(model, config, keys)
    for name, linear in picked:
        report.linear_bytes_before += _layer_bytes(linear)
        q = make(linear)
        q.train(linear.training)
        report.linear_bytes_after += _layer_bytes(q)
        _set_sublayer(model, name, q)
        report.quantized.append(name)
    report.skipped = [n for n, _ in skipped]
    report.bytes_after = state_dict_bytes(model)
    return report


def quantize_model(model: nn.Layer, config: QuantConfig) -> QuantReport:
    """Quantize, in place, every nn.Linear whose name the config does not skip."""
    return _swap_linears(model, config,
                         lambda linear: WeightOnlyLinear.from_linear(linear, config.weight_bits, config.group_size,
                                                                config.clip_search))


def prepare_quantized_model(model: nn.Layer, config: QuantConfig,
                            state_dict_keys=None) -> QuantReport:
    """Swap matching nn.Linear layers for empty WeightOnlyLinear shells (right shapes/dtypes) so
    that a quantized state dict can be loaded with set_state_dict.

    With ``state_dict_keys`` (the checkpoint's keys), exactly the layers that have a
    ``<name>.qweight`` key are swapped, whatever the skip list says; otherwise the config decides.
    """
    def shell(linear):
        n_in, n_out = linear.weight.shape
        bias = linear.bias
        return WeightOnlyLinear(n_in, n_out, config.weight_bits, config.group_size, has_bias=bias is not None,
                                bias_dtype=bias.dtype if bias is not None else "float32")

    keys = set(state_dict_keys) if state_dict_keys is not None else None
    return _swap_linears(model, config, shell, keys)
