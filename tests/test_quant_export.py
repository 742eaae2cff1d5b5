"""WeightOnlyLinear must survive paddle.jit.to_static + jit.save (PIR) with dynamic batch and
sequence length, and the Paddle Inference predictor must agree with dygraph."""
import os

import numpy as np
import paddle
import paddle.nn as nn

from paddle_rc.quant import QuantConfig, WeightOnlyLinear, quantize_model


class _MLP(nn.Layer):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(37, 96)                     # int4, group 64, odd in-dim
        self.fc2 = nn.Linear(96, 20, bias_attr=False)    # int4, group 64, padded last group
        self.head = nn.Linear(20, 5)                     # stays float (skipped)

    def forward(self, x):
        return self.head(nn.functional.gelu(self.fc2(nn.functional.gelu(self.fc1(x)))))


def _predictor(prefix):
    cfg = paddle.inference.Config(prefix + ".json", prefix + ".pdiparams")
    cfg.disable_gpu()
    cfg.disable_glog_info()
    cfg.disable_mkldnn()
    return paddle.inference.create_predictor(cfg)


def test_export_and_predictor_match_dygraph(tmp_path):
    paddle.seed(0)
    model = _MLP()
    model.eval()
    rep = quantize_model(model, QuantConfig(weight_bits=4, weight_quantize_type="group_wise_abs_max",
                                            group_size=64, skip=["head"]))
    assert rep.quantized == ["fc1", "fc2"]
    spec = [paddle.static.InputSpec([None, None, 37], "float32", "x")]
    prefix = os.path.join(tmp_path, "mlp")
    paddle.jit.save(paddle.jit.to_static(model, input_spec=spec, full_graph=True), prefix)
    assert os.path.isfile(prefix + ".json") and os.path.isfile(prefix + ".pdiparams")

    pred = _predictor(prefix)
    for shape in [(1, 3, 37), (4, 11, 37)]:  # two batch sizes and lengths through one program
        x = paddle.randn(shape)
        out = pred.run([x])[0]
        ref = model(x).numpy()
        assert tuple(out.shape) == shape[:2] + (5,)
        np.testing.assert_allclose(np.asarray(out.numpy()), ref, rtol=1e-5, atol=1e-6)


def test_exported_params_hold_int8_bytes(tmp_path):
    """The saved parameters are the int8 buffers, not a float copy of the weight."""
    paddle.seed(1)
    spec = [paddle.static.InputSpec([None, 512], "float32", "x")]
    sizes = {}
    for name, bits in (("float", None), ("int8", 8), ("int4", 4)):
        lin = nn.Linear(512, 512, bias_attr=False)
        layer = lin if bits is None else WeightOnlyLinear.from_linear(lin, bits)
        layer.eval()
        prefix = os.path.join(tmp_path, name)
        paddle.jit.save(paddle.jit.to_static(layer, input_spec=spec, full_graph=True), prefix)
        sizes[name] = os.path.getsize(prefix + ".pdiparams")
    # float: 1 MiB; int8: 256 KiB + 2 KiB scales; int4: 128 KiB + 2 KiB (plus small headers).
    assert sizes["int8"] < sizes["float"] * 0.27
    assert sizes["int4"] < sizes["float"] * 0.14
