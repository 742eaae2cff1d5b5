"""Softmax, rotary embedding, SwiGLU and quick_gelu: paddle_rc's fused C++ operators at inference,
Paddle's own ops everywhere else.

Paddle 3.3's CPU kernels for these run on one thread without a vectorised exp; on a 2-core Intel
Xeon a [16, 577, 577] softmax (one ViT-L attention) took 13.1 ms against torch's 2.5, and at 7B
widths softmax, the rotary roll and SiLU cost ~3.5 s of a 653-token prefill. The fused operators
(paddle_rc/csrc/fused_ops.cc, built with the weight-only matmul by paddle_rc.native) are used in
dynamic mode without gradients on float32 CPU tensors, on CPUs with AVX2 + FMA or AVX-512 (their
scalar build is no faster than Paddle's), when the library is available, and in the graphs an export traces;
training and other devices keep Paddle's ops, which the tests hold the operators to.
"""
from __future__ import annotations

import functools

import paddle
import paddle.nn.functional as F

from paddle_rc import native


@functools.lru_cache(maxsize=None)
def _vector_cpu() -> bool:
    # The operators' scalar build (CPUs without AVX2) is no faster than Paddle's kernels: not there.
    from paddle_rc.runtime import cpu_flags

    return {"avx2", "fma"} <= cpu_flags()


def active(x) -> bool:
    """Whether the fused operator serves `x` here (checked per call: cheap next to the op). While an
    export traces the model the program gets the operator, as it gets the weight-only matmul (the
    deployed runner loads the library; `tools/export.py --portable` traces inside native.disabled())."""
    if not paddle.in_dynamic_mode():
        return x.dtype == paddle.float32 and _vector_cpu() and native.library()
    return (not paddle.is_grad_enabled() and x.dtype == paddle.float32 and x.place.is_cpu_place()
            and _vector_cpu() and native.library())


def _dense(x):
    return x if not paddle.in_dynamic_mode() or x.is_contiguous() else x.contiguous()


def softmax(x):
    """Softmax over the last axis."""
    if active(x):
        return native.run("rc_softmax", _dense(x))
    return F.softmax(x, axis=-1)


def rope(x, cos, sin):
    """x * cos + roll(x, d/2) * sin on [B, H, S, d], with rotate_half's sign folded into `sin`;
    cos/sin [B, 1 or H, S, d] (Paddle's path broadcasts them)."""
    if active(x):
        return native.run("rc_rope", _dense(x), _dense(cos), _dense(sin))
    return x * cos + paddle.roll(x, x.shape[-1] // 2, axis=-1) * sin


def swiglu(gate, up):
    """silu(gate) * up."""
    if active(gate):
        return native.run("rc_swiglu", _dense(gate), _dense(up))
    return F.silu(gate) * up


def quick_gelu(x):
    """x * sigmoid(1.702 x) (CLIP's activation)."""
    if active(x):
        return native.run("rc_quick_gelu", _dense(x))
    return x * F.sigmoid(1.702 * x)
