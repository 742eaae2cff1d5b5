"""The C++ weight-only matmul (paddle_rc/csrc) against dequantize-then-matmul.

Reference: x @ dequantize_weight(q, s) in float64 (numpy). "Within float32 rounding" is checked per
element against the classic bound for a float32 dot product of length K, |err| <= K * eps * (|x| @
|W|): any decoding mistake (nibble order, sign, group index, a missed tail) is orders of magnitude
above it, and on average the kernels sit ~100x below it.
"""
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from paddle_rc.quant import WeightOnlyLinear, dequantize_weight, kernel, quantize_weight

SCHEMES = [(8, -1), (4, -1), (4, 64), (4, 128), (8, 128)]
EPS32 = np.finfo(np.float32).eps
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _op():
    f = kernel.op()
    assert f is not None, f"the operator did not build: {kernel.status()['reason']}"
    return f


def _case(bits, group, x_shape, n_out, seed=0):
    rng = np.random.default_rng(seed)
    k = x_shape[-1]
    w = rng.standard_normal((k, n_out)).astype(np.float32)
    w[:, :3] *= 20.0  # columns of very different ranges
    q, s = quantize_weight(w, bits, group)
    x = rng.standard_normal(x_shape).astype(np.float32)
    wd = dequantize_weight(q, s, bits, group, k).astype(np.float64)
    ref = x.astype(np.float64) @ wd
    bound = k * EPS32 * (np.abs(x).astype(np.float64) @ np.abs(wd))
    return x, q, s, ref, bound


def _check(y, ref, bound):
    assert y.shape == ref.shape and y.dtype == np.float32
    err = np.abs(y.astype(np.float64) - ref)
    assert np.all(err <= bound), f"max err {err.max():.3g} vs bound {bound[err > bound].min():.3g}"
    # and the bound is not vacuous: a real mistake would be of the size of the values themselves
    assert bound.max() < 1e-2 * np.abs(ref).max()


# Shapes: odd in/out features, tails below one vector (16 / 8 columns) and below one column chunk
# (256), K not a multiple of the group, one row, a few rows (4-row tiles + leftovers), many rows.
SHAPES = [((1, 64), 48), ((1, 131), 45), ((3, 257), 300), ((5, 130), 17), ((1, 1), 1),
          ((40, 193), 529), ((2, 3, 127), 33), ((2, 7, 256), 272)]


@pytest.mark.parametrize("bits,group", SCHEMES)
@pytest.mark.parametrize("path", ["stream", "gemm"])
def test_equals_dequantize_then_matmul(bits, group, path, monkeypatch):
    # The operator runs the streaming kernels up to a row count and dequantize-a-panel + sgemm from
    # there; moving the switch runs both on every shape. A small panel and K block exercise the tile
    # loops and their tails (K = 193: blocks of 64, 64, 64, 1 rows).
    monkeypatch.setenv("PADDLE_RC_WO_GEMM_ROWS", "1" if path == "gemm" else "100000")
    monkeypatch.setenv("PADDLE_RC_WO_PANEL", "96")
    monkeypatch.setenv("PADDLE_RC_WO_KBLOCK", "64")
    f = _op()
    for i, (x_shape, n_out) in enumerate(SHAPES):
        x, q, s, ref, bound = _case(bits, group, x_shape, n_out, seed=i)
        y = f(paddle.to_tensor(x), paddle.to_tensor(q), paddle.to_tensor(s), bits, group).numpy()
        _check(y, ref, bound)


@pytest.mark.parametrize("isa", ["avx2", "scalar"])
def test_narrower_instruction_sets(isa, monkeypatch):
    """The AVX2 and scalar builds (CPUs without AVX-512) give the same answers."""
    monkeypatch.setenv("PADDLE_RC_WO_ISA", isa)
    monkeypatch.setenv("PADDLE_RC_WO_GEMM_ROWS", "100000")
    f = _op()
    for bits, group in SCHEMES:
        for i, (x_shape, n_out) in enumerate(SHAPES[:6]):
            x, q, s, ref, bound = _case(bits, group, x_shape, n_out, seed=10 + i)
            _check(f(paddle.to_tensor(x), paddle.to_tensor(q), paddle.to_tensor(s), bits, group).numpy(),
                   ref, bound)


def test_threads_split_columns_correctly():
    from paddle.base import core

    f = _op()
    before = core.get_num_threads() if hasattr(core, "get_num_threads") else 1
    core.set_num_threads(2)
    try:
        for bits, group in SCHEMES:
            x, q, s, ref, bound = _case(bits, group, (1, 300), 1100, seed=3)  # the streaming kernel's halves
            _check(f(paddle.to_tensor(x), paddle.to_tensor(q), paddle.to_tensor(s), bits, group).numpy(),
                   ref, bound)
            for seed, rows in ((4, 10), (5, 130)):  # the streaming kernels' 4-row blocks, the sgemm tiles
                x, q, s, ref, bound = _case(bits, group, (rows, 300), 1100, seed=seed)
                _check(f(paddle.to_tensor(x), paddle.to_tensor(q), paddle.to_tensor(s), bits, group).numpy(),
                       ref, bound)
    finally:
        core.set_num_threads(before)


def test_rejects_mismatched_shapes():
    f = _op()
    x, q, s, _, _ = _case(8, -1, (2, 64), 16)
    with pytest.raises(Exception, match="rows"):
        f(paddle.to_tensor(x[:, :60]), paddle.to_tensor(q), paddle.to_tensor(s), 8, -1)
    with pytest.raises(Exception, match="scale"):
        f(paddle.to_tensor(x), paddle.to_tensor(q), paddle.to_tensor(s[:8]), 8, -1)


@pytest.mark.parametrize("bits,group", SCHEMES)
def test_layer_uses_the_operator_and_equals_the_portable_path(bits, group):
    paddle.seed(0)
    lin = paddle.nn.Linear(200, 70)
    lin.bias.set_value(paddle.randn([70]))
    layer = WeightOnlyLinear.from_linear(lin, bits, group)
    x = paddle.randn([3, 5, 200])
    _op()
    assert kernel.status()["kernel"] == "cpp"
    y = layer(x).numpy()
    with kernel.disabled():
        assert kernel.op() is None
        y_portable = layer(x).numpy()
    wd = layer.dequantized_weight().numpy().astype(np.float64)
    ref = x.numpy().astype(np.float64) @ wd + lin.bias.numpy()
    bound = 200 * EPS32 * (np.abs(x.numpy()).astype(np.float64) @ np.abs(wd) + np.abs(lin.bias.numpy()))
    _check(y, ref, bound)
    _check(y_portable, ref, bound)


def test_fallback_is_announced_and_correct(tmp_path):
    """Without the operator the layer still works, on the pure-Paddle path, and says why once."""
    code = ("import numpy as np, paddle\n"
            "from paddle_rc.quant import WeightOnlyLinear, kernel\n"
            "lin = paddle.nn.Linear(40, 9)\n"
            "layer = WeightOnlyLinear.from_linear(lin, 4, -1)\n"
            "x = paddle.randn([2, 40])\n"
            "ref = x.numpy() @ layer.dequantized_weight().numpy() + lin.bias.numpy()\n"
            "np.testing.assert_allclose(layer(x).numpy(), ref, rtol=1e-5, atol=1e-5)\n"
            "layer(x)\n"
            "print(kernel.status()['kernel'])\n")
    env = dict(os.environ, PADDLE_RC_NO_KERNEL="1", PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "paddle"
    assert out.stderr.count("C++ operators are unavailable (PADDLE_RC_NO_KERNEL=1)") == 1


def test_build_is_cached_outside_the_repo():
    _op()
    path = kernel.status()["library"]
    assert os.path.isfile(path)
    assert path.startswith(os.path.join(os.environ["PADDLE_RC_HOME"], "ops"))
    # A second process finds the library and does not compile again.
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", "from paddle_rc.quant import kernel; print(kernel.status()['kernel'])"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "cpp" and "building" not in out.stderr, out.stderr
