import os

import numpy as np
import paddle
import paddle.nn as nn
import pytest

from paddle_rc.errors import UserError
from paddle_rc.quant import (QuantConfig, WeightOnlyLinear, dequantize_tensor, dequantize_weight,
                             pack_int4, prepare_quantized_model, quantize_model, quantize_weight,
                             state_dict_bytes, unpack_int4, unpack_int4_tensor)

QMAX = {8: 127, 4: 7}


def _w(n_in, n_out, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n_in, n_out)).astype(np.float32)
    w[:, 0] *= 10.0  # columns with very different ranges: a shared scale would fail the bounds
    return w


# --- pure functions ----------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [8, 4])
def test_per_channel_round_trip_error_bound(bits):
    w = _w(33, 6)
    q, scale = quantize_weight(w, bits, -1)
    assert scale.shape == (6,) and scale.dtype == np.float32
    assert q.dtype == np.int8 and q.shape == ((33, 6) if bits == 8 else (17, 6))
    np.testing.assert_allclose(scale, np.abs(w).max(axis=0) / QMAX[bits], rtol=1e-6)
    ints = q if bits == 8 else unpack_int4(q, 33)
    assert ints.min() >= -QMAX[bits] and ints.max() <= QMAX[bits]
    # The largest magnitude of every column lands exactly on +-qmax.
    assert np.all(np.abs(ints).max(axis=0) == QMAX[bits])
    err = np.abs(dequantize_weight(q, scale, bits, -1, 33) - w)
    assert np.all(err.max(axis=0) <= scale / 2 * (1 + 1e-5))
    assert err.max() > 0  # it really is lossy: the bound is being exercised


@pytest.mark.parametrize("bits", [8, 4])
def test_group_wise_round_trip_error_bound_and_shapes(bits):
    n_in, n_out, g = 150, 5, 64  # 150 = 64 + 64 + 22: the last group is padded
    w = _w(n_in, n_out, seed=1)
    w[128:, 2] *= 100.0  # only the last group of column 2 is large
    q, scale = quantize_weight(w, bits, g)
    assert scale.shape == (3, n_out)
    assert q.shape == ((n_in, n_out) if bits == 8 else (75, n_out))
    for k in range(3):
        np.testing.assert_allclose(scale[k], np.abs(w[k * g:(k + 1) * g]).max(axis=0) / QMAX[bits],
                                   rtol=1e-6)
    err = np.abs(dequantize_weight(q, scale, bits, g, n_in) - w)
    for k in range(3):
        assert np.all(err[k * g:(k + 1) * g].max(axis=0) <= scale[k] / 2 * (1 + 1e-5))
    # Group-wise keeps the small groups of column 2 precise; per-channel would not.
    qc, sc = quantize_weight(w, bits, -1)
    err_c = np.abs(dequantize_weight(qc, sc, bits, -1, n_in) - w)
    assert err[:128, 2].max() < err_c[:128, 2].max() / 10


def test_zero_column_quantizes_to_zero():
    w = _w(8, 3)
    w[:, 1] = 0.0
    q, s = quantize_weight(w, 8, -1)
    assert np.all(q[:, 1] == 0) and np.isfinite(s).all()
    assert np.all(dequantize_weight(q, s, 8, -1, 8)[:, 1] == 0)


def test_int4_pack_unpack_exact_incl_negative_and_odd_rows():
    rng = np.random.default_rng(2)
    q = rng.integers(-8, 8, size=(7, 5)).astype(np.int8)
    q[0, 0], q[1, 0] = -8, 7
    q[2, 1], q[3, 1] = -1, 2
    packed = pack_int4(q)
    assert packed.shape == (4, 5) and packed.dtype == np.int8
    # Hand-checked bytes: low nibble = even row, high nibble = odd row.
    assert packed[0, 0] == np.uint8(0x78).view(np.int8)   # hi 7, lo -8 (0x8)
    assert packed[1, 1] == 0x2F                           # hi 2, lo -1 (0xF)
    np.testing.assert_array_equal(unpack_int4(packed, 7), q)
    assert np.all(unpack_int4(packed)[7] == 0)            # the padding row
    t = unpack_int4_tensor(paddle.to_tensor(packed), 7).numpy()
    np.testing.assert_array_equal(t, q)
    with pytest.raises(ValueError):
        pack_int4(np.array([[8]], np.int8))


@pytest.mark.parametrize("bits,g", [(8, -1), (4, -1), (8, 64), (4, 64)])
def test_paddle_dequantize_matches_numpy(bits, g):
    w = _w(101, 7, seed=3)
    q, s = quantize_weight(w, bits, g)
    ref = dequantize_weight(q, s, bits, g, 101)
    got = dequantize_tensor(paddle.to_tensor(q), paddle.to_tensor(s), bits, g, 101, "float32")
    np.testing.assert_array_equal(got.numpy(), ref)


def test_quantize_accepts_float16_paddle_tensor():
    w = _w(16, 4).astype(np.float16)
    q, s = quantize_weight(paddle.to_tensor(w), 8, -1)
    q2, s2 = quantize_weight(w.astype(np.float32), 8, -1)
    np.testing.assert_array_equal(q, q2)
    np.testing.assert_array_equal(s, s2)


# --- the layer -----------------------------------------------------------------------------------

@pytest.mark.parametrize("bits,g,bias", [(8, -1, True), (4, -1, False), (8, 64, False), (4, 64, True)])
def test_weight_only_linear_forward_equals_dequantized_matmul(bits, g, bias):
    paddle.seed(0)
    lin = nn.Linear(77, 9, bias_attr=None if bias else False)
    if bias:
        lin.bias.set_value(paddle.randn([9]))
    layer = WeightOnlyLinear.from_linear(lin, bits, g)
    assert layer.qweight.dtype == paddle.int8 and layer.scale.dtype == paddle.float32
    x = paddle.randn([2, 3, 77])
    q, s = quantize_weight(lin.weight, bits, g)
    w = dequantize_weight(q, s, bits, g, 77)
    ref = x.numpy() @ w + (lin.bias.numpy() if bias else 0.0)
    np.testing.assert_allclose(layer(x).numpy(), ref, rtol=1e-5, atol=1e-5)
    # And it stays close to the float layer (int8 much closer than int4).
    diff = np.abs(layer(x).numpy() - lin(x).numpy()).max()
    assert diff < (0.05 if bits == 8 else 0.6)
    assert set(layer.state_dict()) == ({"qweight", "scale", "bias"} if bias else {"qweight", "scale"})


# --- config ------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits,g", [(8, -1), (4, -1), (4, 64)])
def test_clip_search_picks_the_least_error_ratio_per_column(bits, g):
    from paddle_rc.quant.functional import CLIP_RATIOS

    rng = np.random.default_rng(3)
    n_in, n_out = 150, 7
    w = (rng.standard_t(3, size=(n_in, n_out)) * 0.02).astype(np.float32)  # heavy tails
    w[:, 6] = 0.0  # an all-zero column stays exact
    q0, s0 = quantize_weight(w, bits, g)
    q1, s1 = quantize_weight(w, bits, g, clip_search=True)
    assert s1.shape == s0.shape and q1.shape == q0.shape
    rows = n_in if g == -1 else g
    groups = 1 if g == -1 else s0.shape[0]
    err0 = np.square(dequantize_weight(q0, s0, bits, g, n_in) - w)
    err1 = np.square(dequantize_weight(q1, s1, bits, g, n_in) - w)
    s0_, s1_ = s0.reshape(groups, n_out), s1.reshape(groups, n_out)
    for k in range(groups):
        blk = slice(k * rows, (k + 1) * rows)
        for c in range(n_out):
            if c == 6:
                assert err1[blk, c].max() == 0.0
                continue
            ratio = s1_[k, c] / s0_[k, c]
            assert min(abs(ratio - r) for r in CLIP_RATIOS) < 1e-5
            # Brute force over the same ratios: the search's pick has the least error.
            col = w[blk, c]
            errs = [np.square(np.clip(np.rint(col / (s0_[k, c] * r)), -QMAX[bits], QMAX[bits]) * (s0_[k, c] * r)
                              - col).sum() for r in CLIP_RATIOS]
            assert err1[blk, c].sum() <= min(errs) * (1 + 1e-5) + 1e-12
            assert err1[blk, c].sum() <= err0[blk, c].sum() * (1 + 1e-5) + 1e-12
    if bits == 4:
        assert err1.sum() < 0.9 * err0.sum()  # heavy tails: int4 gains clearly
    # The grid's end points are still exact grid values: what the GPU path's re-quantization needs.
    ints = q1 if bits == 8 else unpack_int4(q1, n_in)
    for k in range(groups):
        assert np.all(np.abs(ints[k * rows:(k + 1) * rows, :6]).max(axis=0) == QMAX[bits])


def test_quant_config_dict_round_trip_and_validation():
    c = QuantConfig(weight_bits=4, weight_quantize_type="group_wise_abs_max", group_size=128,
                    skip=["lm_head", "foo.*"], quantize_vision=True)
    d = c.to_dict()
    assert d["format"] == "paddle_rc.weight_only.v1" and d["range"] == "[-7, 7]"
    assert QuantConfig.from_dict(d) == c
    assert QuantConfig.from_dict({}) == QuantConfig()
    for bad in [dict(weight_bits=3), dict(weight_quantize_type="abs_max"),
                dict(group_size=64), dict(weight_quantize_type="group_wise_abs_max", group_size=32),
                dict(weight_quantize_type="group_wise_abs_max", group_size=-1)]:
        with pytest.raises(UserError):
            QuantConfig(**bad)
    with pytest.raises(UserError, match="format"):
        QuantConfig.from_dict({"format": "other"})
    assert QuantConfig.preset("int4-g128").group_size == 128
    assert QuantConfig.preset("INT8").weight_bits == 8
    clip = QuantConfig.preset("int4-g64-clip")
    assert (clip.weight_bits, clip.group_size, clip.clip_search) == (4, 64, True)
    assert QuantConfig.from_dict(clip.to_dict()) == clip
    assert not QuantConfig.preset("int8").clip_search
    assert not QuantConfig.preset("int8").should_quantize("lm_head")
    both = QuantConfig.preset("int4-g64-head-clip")
    assert (both.group_size, both.clip_search, both.should_quantize("lm_head")) == (64, True, True)
    assert not both.should_quantize("vision_tower.encoder.layers.0.mlp.fc1")
    assert QuantConfig.from_dict(both.to_dict()) == both == QuantConfig.preset("int4-g64-clip-head")
    for bad in ("int3", "int8-headclip", "head"):
        with pytest.raises(UserError):
            QuantConfig.preset(bad)


def test_skip_patterns():
    c = QuantConfig()
    assert not c.should_quantize("lm_head")
    assert not c.should_quantize("projector.linear_1")
    assert not c.should_quantize("vision_tower.encoder.layers.0.mlp.fc1")
    assert not c.should_quantize("visual_projection")
    assert c.should_quantize("language_model.layers.3.mlp.down_proj")
    v = QuantConfig(quantize_vision=True)
    assert v.should_quantize("vision_tower.encoder.layers.0.mlp.fc1")
    assert not v.should_quantize("lm_head")


# --- whole models ----------------------------------------------------------------------------------

class _Attn(nn.Layer):
    def __init__(self, h):
        super().__init__()
        self.q_proj = nn.Linear(h, h, bias_attr=False)
        self.o_proj = nn.Linear(h, h, bias_attr=False)

    def forward(self, x):
        return self.o_proj(paddle.tanh(self.q_proj(x)))


class _Block(nn.Layer):
    def __init__(self, h):
        super().__init__()
        self.self_attn = _Attn(h)
        self.mlp = nn.Sequential(nn.Linear(h, 2 * h), nn.GELU(), nn.Linear(2 * h, h))

    def forward(self, x):
        return x + self.mlp(self.self_attn(x))


class _LM(nn.Layer):
    def __init__(self, h):
        super().__init__()
        self.embed_tokens = nn.Embedding(11, h)
        self.layers = nn.LayerList([_Block(h) for _ in range(2)])


class _Vision(nn.Layer):
    def __init__(self, c):
        super().__init__()
        self.fc1 = nn.Linear(c, c)

    def forward(self, x):
        return self.fc1(x)


class _Proj(nn.Layer):
    def __init__(self, c, h):
        super().__init__()
        self.linear_1 = nn.Linear(c, h)

    def forward(self, x):
        return self.linear_1(x)


class _Toy(nn.Layer):
    def __init__(self, h=64, c=24):
        super().__init__()
        self.vision_tower = _Vision(c)
        self.projector = _Proj(c, h)
        self.language_model = _LM(h)
        self.lm_head = nn.Linear(h, 11, bias_attr=False)

    def forward(self, v, ids):
        x = self.language_model.embed_tokens(ids) + self.projector(self.vision_tower(v)).mean(1, keepdim=True)
        for blk in self.language_model.layers:
            x = blk(x)
        return self.lm_head(x)


LM_LINEARS = sorted(f"language_model.layers.{i}.{n}" for i in range(2)
                    for n in ("self_attn.q_proj", "self_attn.o_proj", "mlp.0", "mlp.2"))


def _inputs():
    paddle.seed(5)
    return paddle.randn([2, 3, 24]), paddle.to_tensor([[1, 2, 3, 4], [5, 6, 7, 8]])


def test_quantize_model_respects_skip_list_and_reports_bytes():
    paddle.seed(0)
    m = _Toy()
    m.eval()
    v, ids = _inputs()
    ref = m(v, ids).numpy()
    rep = quantize_model(m, QuantConfig(weight_bits=8))
    assert sorted(rep.quantized) == LM_LINEARS
    assert sorted(rep.skipped) == ["lm_head", "projector.linear_1", "vision_tower.fc1"]
    assert isinstance(m.language_model.layers[1].mlp[2], WeightOnlyLinear)
    assert type(m.lm_head) is nn.Linear and type(m.vision_tower.fc1) is nn.Linear
    assert isinstance(m.language_model.embed_tokens, nn.Embedding)
    # fp32 -> int8 weights + fp32 per-channel scales (+ unchanged fp32 biases).
    assert 0.25 < rep.linear_ratio < 0.30
    assert rep.bytes_before - rep.bytes_after == rep.linear_bytes_before - rep.linear_bytes_after
    assert rep.bytes_after == state_dict_bytes(m)
    out = m(v, ids).numpy()
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()

    m2 = _Toy()
    rep2 = quantize_model(m2, QuantConfig(weight_bits=4, quantize_vision=True))
    assert sorted(rep2.quantized) == sorted(LM_LINEARS + ["projector.linear_1", "vision_tower.fc1"])
    assert rep2.skipped == ["lm_head"]
    assert rep2.linear_ratio < rep.linear_ratio


@pytest.mark.parametrize("cfg", [QuantConfig(weight_bits=8),
                                 QuantConfig(weight_bits=4, weight_quantize_type="group_wise_abs_max",
                                             group_size=64)])
def test_state_dict_round_trip_through_prepare(tmp_path, cfg):
    paddle.seed(0)
    a = _Toy(h=100)  # 100 rows: odd-sized int4 groups, 200 -> groups of 64 with padding
    a.eval()
    quantize_model(a, cfg)
    path = os.path.join(tmp_path, "q.pdparams")
    paddle.save(a.state_dict(), path)
    sd = paddle.load(path)
    assert any(k.endswith(".qweight") for k in sd)
    assert not any(k.startswith("language_model.layers.") and k.endswith("q_proj.weight") for k in sd)

    for keys in (None, sd.keys()):
        paddle.seed(123)  # different float weights: everything must come from the file
        b = _Toy(h=100)
        b.eval()
        rep = prepare_quantized_model(b, cfg, state_dict_keys=keys)
        assert sorted(rep.quantized) == LM_LINEARS
        missing, unexpected = b.set_state_dict(sd)
        assert not missing and not unexpected
        assert b.language_model.layers[0].mlp[0].qweight.dtype == paddle.int8
        v, ids = _inputs()
        np.testing.assert_array_equal(b(v, ids).numpy(), a(v, ids).numpy())
