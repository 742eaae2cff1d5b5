"""The fused inference operators (paddle_rc/csrc/fused_ops.cc) against Paddle's own ops, in both
builds the machine runs (AVX-512, AVX2, scalar), and a model with them against the same model on Paddle's ops."""
import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from paddle_rc import native
from paddle_rc.models import fused
from paddle_rc.runtime import cpu_flags

BUILDS = ((["avx512"] if {"avx512f", "avx512dq"} <= cpu_flags() else [])
          + (["avx2"] if {"avx2", "fma"} <= cpu_flags() else []) + ["scalar"])


@pytest.fixture(autouse=True)
def _library():
    assert native.library(), f"the operators did not build: {native.status()['reason']}"
    with paddle.no_grad():
        yield


def _close(got, want, rtol=2e-6, atol=1e-6):
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("shape", [[2, 3, 7, 37], [4, 577], [1, 1], [5, 16], [3, 33]])
def test_softmax(build, shape, monkeypatch):
    monkeypatch.setenv("PADDLE_RC_WO_ISA", build)
    paddle.seed(1)
    x = paddle.randn(shape) * 6
    if shape[-1] > 4:  # a masked tail, as the attention bias makes it (-1e30, not -inf)
        x[..., shape[-1] // 2:] = -1e30
    got = native.run("rc_softmax", x)
    _close(got, F.softmax(x, axis=-1))
    assert float(got.sum(axis=-1).min()) > 1 - 1e-5


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("d,cos_heads", [(128, 1), (128, 4), (40, 1), (6, 4)])
def test_rope(build, d, cos_heads, monkeypatch):
    monkeypatch.setenv("PADDLE_RC_WO_ISA", build)
    paddle.seed(2)
    x = paddle.randn([2, 4, 9, d])
    cos, sin = paddle.randn([2, cos_heads, 9, d]), paddle.randn([2, cos_heads, 9, d])
    want = x * cos.expand([-1, 4, -1, -1]) + paddle.roll(x, d // 2, axis=-1) * sin.expand([-1, 4, -1, -1])
    _close(native.run("rc_rope", x, cos, sin), want)


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("n", [1, 15, 16, 4097, 3 * 4096 + 5])
def test_swiglu_and_quick_gelu(build, n, monkeypatch):
    monkeypatch.setenv("PADDLE_RC_WO_ISA", build)
    paddle.seed(3)
    g, u = paddle.randn([n]) * 8, paddle.randn([n])
    g[0] = -200.0  # exp overflow side: silu -> -0, not NaN
    _close(native.run("rc_swiglu", g, u), F.silu(g) * u, rtol=1e-5, atol=1e-6)
    _close(native.run("rc_quick_gelu", g), g * F.sigmoid(1.702 * g), rtol=1e-5, atol=1e-6)


def test_bad_inputs_are_refused():
    with pytest.raises(Exception, match="float32"):
        native.run("rc_softmax", paddle.ones([2, 3], dtype="float64"))
    with pytest.raises(Exception, match="cos/sin"):
        native.run("rc_rope", paddle.ones([1, 2, 3, 4]), paddle.ones([1, 3, 3, 4]), paddle.ones([1, 3, 3, 4]))


def test_wrappers_use_paddle_when_gradients_are_on():
    x = paddle.randn([3, 10])
    x.stop_gradient = False
    with paddle.enable_grad():
        assert not fused.active(x)
        y = fused.softmax(x)
        y[:, 0].sum().backward()  # Paddle's op: differentiable
    assert x.grad is not None
    assert fused.active(paddle.randn([3, 10])) == (BUILDS[0] != "scalar")


def test_model_with_fused_ops_equals_paddles_ops(random_model):
    """Tower (softmax, quick_gelu) and LLM (softmax, rotary, SwiGLU, KV cache) end to end."""
    from paddle_rc.models import LlavaForConditionalGeneration
    from paddle_rc.models.llama import positions_from_mask

    model = LlavaForConditionalGeneration.from_pretrained(random_model)
    model.eval()
    cfg = model.config
    paddle.seed(4)
    pixels = paddle.randn([2, 3, cfg.vision.image_size, cfg.vision.image_size])
    embeds = paddle.randn([2, 11, cfg.llm.hidden_size])
    mask = paddle.to_tensor([[0, 0] + [1] * 9, [1] * 11], dtype="int64")  # a left-padded row
    pos = positions_from_mask(mask)

    def run():
        feats = model.vision_tower(pixels, need_qkp=True).P
        logits, k, v = model.prefill(embeds, mask, pos)
        step_mask = paddle.concat([mask, paddle.ones([2, 1], dtype="int64")], axis=1)
        nxt, _, _ = model.decode(paddle.to_tensor([[3], [5]]), step_mask, pos[:, -1:] + 1, k, v)
        return feats, logits, nxt

    fused_out = run()
    with native.disabled():
        plain = run()
    for a, b in zip(fused_out, plain):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)


def test_ops_benchmark_times_every_case_both_ways():
    """tools/benchmark.py ops: one row per case with both timings, the build this CPU runs named."""
    from paddle_rc.benchmark.ops import CASES, format_ops_table, run_ops

    result = run_ops(repeats=1)
    assert result["build"] == BUILDS[0] and len(result["rows"]) == len(CASES)
    for row in result["rows"]:
        assert row["fused_ms"] > 0 and row["paddle_ms"] > 0
        assert abs(row["ratio"] - row["fused_ms"] / row["paddle_ms"]) < 1e-9
    assert format_ops_table(result).count("\n| ") == len(CASES) + 1
