"""WeightOnlyLinear: a drop-in replacement for paddle.nn.Linear with int8 / packed-int4 weights."""
from __future__ import annotations

import paddle
import paddle.nn as nn

from paddle_rc.quant.functional import dequantize_tensor, int4_halves_tensor, num_groups, quantize_weight
from paddle_rc.quant.kernel import op as kernel_op


class WeightOnlyLinear(nn.Layer):
    """y = x @ dequant(qweight, scale) + bias, with the weight stored quantized.

    State-dict keys: ``qweight`` (int8), ``scale`` (float32) and, if the original Linear had one,
    ``bias`` (unchanged). Layout as in paddle_rc.quant.functional.

    CPU, float32 input (dynamic mode and graphs traced by paddle.jit.to_static): the C++ operator
    ``rc_weight_only_matmul`` (paddle_rc.quant.kernel) multiplies with the int8 / packed int4
    weight directly, never building the float weight. Where that operator cannot be built, the
    portable path runs instead (and says so once): the weight is dequantized inside forward with
    elementwise ops and a plain matmul follows (per-channel scales applied to the output), which
    costs a float copy of the weight on every call.

    GPU dygraph (paddle compiled with CUDA, input on a GPU in float16/bfloat16): forward uses
    paddle.nn.quant.weight_only_linear. That kernel wants the CUTLASS-interleaved layout that
    paddle.nn.quant.weight_quantize produces, not ours, so the first GPU call converts once and
    caches the result (not persisted). This path has NOT been run here (CPU-only machines); it is
    guarded so that any failure falls back to the portable path.
    """

    def __init__(self, in_features: int, out_features: int, weight_bits: int = 8,
                 group_size: int = -1, has_bias: bool = True, bias_dtype="float32"):
        super().__init__()
        if weight_bits not in (8, 4):
            raise ValueError(f"weight_bits must be 8 or 4, got {weight_bits}")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.weight_bits = int(weight_bits)
        self.group_size = int(group_size)
        rows = self.in_features if weight_bits == 8 else (self.in_features + 1) // 2
        srows = num_groups(self.in_features, self.group_size)
        self.register_buffer("qweight", paddle.zeros([rows, self.out_features], dtype="int8"),
                             persistable=True)
        scale_shape = [self.out_features] if self.group_size == -1 else [srows, self.out_features]
        self.register_buffer("scale", paddle.ones(scale_shape, dtype="float32"), persistable=True)
        if has_bias:
            self.bias = self.create_parameter([self.out_features], dtype=bias_dtype, is_bias=True)
            self.bias.stop_gradient = True
        else:
            self.bias = None
        self._gpu_cache = None
        self._gpu_failed = False

    @classmethod
    def from_linear(cls, linear: nn.Linear, weight_bits: int = 8, group_size: int = -1,
                    clip_search: bool = False) -> "WeightOnlyLinear":
        n_in, n_out = linear.weight.shape
        bias = linear.bias
        layer = cls(n_in, n_out, weight_bits, group_size, has_bias=bias is not None,
                    bias_dtype=bias.dtype if bias is not None else "float32")
        layer.load_float_weight(linear.weight, clip_search)
        if bias is not None:
            layer.bias.set_value(bias.detach())
        return layer

    def load_float_weight(self, weight, clip_search: bool = False) -> None:
        q, s = quantize_weight(weight, self.weight_bits, self.group_size, clip_search)
        self.qweight.set_value(paddle.to_tensor(q))
        self.scale.set_value(paddle.to_tensor(s))
        self._gpu_cache = None

    @property
    def weight(self) -> paddle.Tensor:
        """The dequantized [in, out] weight in the bias dtype (float32 without bias), so code that
        reads ``linear.weight.shape`` / ``.dtype`` keeps working. Costs a dequantization; not a
        parameter, never saved."""
        return self.dequantized_weight(self.bias.dtype if self.bias is not None else "float32")

    def dequantized_weight(self, dtype="float32") -> paddle.Tensor:
        return dequantize_tensor(self.qweight, self.scale, self.weight_bits, self.group_size,
                                 self.in_features, dtype)

    def forward(self, x):
        if self._gpu_eligible(x):
            try:
                return self._gpu_forward(x)
            except Exception:  # pragma: no cover - GPU only; keep serving on the portable path
                self._gpu_failed = True
        kernel = self._kernel(x)
        if kernel is not None:
            y = kernel(x, self.qweight, self.scale, self.weight_bits, self.group_size)
        elif self.weight_bits == 4 and (self.group_size == -1 or self.group_size % 2 == 0):
            y = self._int4_matmul(x)
        elif self.group_size == -1:
            # One scale per output column commutes with the matmul: scaling the [.., out] result
            # instead of the [in, out] weight skips a full-weight multiply and its allocation.
            y = paddle.matmul(x, self.qweight.astype(x.dtype)) * self.scale.astype(x.dtype)
        else:
            y = paddle.matmul(x, self.dequantized_weight(x.dtype))
        if self.bias is not None:
            y = y + self.bias.astype(x.dtype)
        return y

    def _kernel(self, x):
        if x.dtype != paddle.float32 or (self.weight_bits == 4 and self.group_size > 0 and self.group_size % 2):
            return None
        if not paddle.in_dynamic_mode():  # tracing: the program gets the operator
            return kernel_op()
        return kernel_op() if x.place.is_cpu_place() else None

    def _int4_matmul(self, x):
        """x @ W without interleaving the nibbles: byte r holds input rows 2r (low) and 2r+1 (high),
        so x's even features meet the low nibbles and its odd features the high ones. Groups are
        even-sized, so both rows of a byte share a group's scale."""
        low, high = int4_halves_tensor(self.qweight, x.dtype)
        n_odd = self.in_features // 2
        if high.shape[0] != n_odd:  # odd in_features: the last byte's high nibble is padding
            high = high[:n_odd]
        if self.group_size != -1:
            s = paddle.repeat_interleave(self.scale.astype(x.dtype), self.group_size // 2, axis=0)
            low = low * (s if s.shape[0] == low.shape[0] else s[:low.shape[0]])
            high = high * (s if s.shape[0] == n_odd else s[:n_odd])
        y = paddle.matmul(x[..., 0::2], low) + paddle.matmul(x[..., 1::2], high)
        return y * self.scale.astype(x.dtype) if self.group_size == -1 else y

    # --- GPU path (not exercised on CPU machines) -------------------------------------------
    def _gpu_eligible(self, x) -> bool:
        if self._gpu_failed or not paddle.in_dynamic_mode():
            return False
        if not paddle.is_compiled_with_cuda():
            return False
        if x.dtype not in (paddle.float16, paddle.bfloat16):
            return False
        # weight_only_linear only implements per-channel and 64/128 groups.
        return x.place.is_gpu_place() and self.group_size in (-1, 64, 128)

    def _gpu_forward(self, x):  # pragma: no cover - GPU only
        from paddle.nn.quant import weight_only_linear, weight_quantize

        if self._gpu_cache is None:
            algo = "weight_only_int8" if self.weight_bits == 8 else "weight_only_int4"
            # Re-quantizing the dequantized weight reproduces our grid: each column/group's
            # absmax is an exact grid point, so weight_quantize finds the same scale.
            w = self.dequantized_weight(x.dtype)
            qw, s = weight_quantize(w, algo=algo, group_size=self.group_size)
            self._gpu_cache = (qw, s)
        qw, s = self._gpu_cache
        bias = None if self.bias is None else self.bias.astype(x.dtype)
        return weight_only_linear(x, qw, bias=bias, weight_scale=s,
                                  weight_dtype="int8" if self.weight_bits == 8 else "int4",
                                  group_size=self.group_size)

    def extra_repr(self) -> str:
        g = "per-channel" if self.group_size == -1 else f"group={self.group_size}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bits={self.weight_bits}, {g}, bias={self.bias is not None}")
