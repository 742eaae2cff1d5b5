"""The rc / rc-reference core exports with paddle.jit.to_static (dynamic batch) and the Paddle
Inference predictor reproduces dygraph exactly."""
import numpy as np
import paddle
import pytest
from paddle import inference
from paddle.static import InputSpec

from paddle_rc.compression import CORE_FIELDS, compress_tensors

N, C, D = 49, 16, 8  # 7 x 7: pooling needs a square grid


def rc_core(F, Q, K, P, t, has_text):
    return compress_tensors("rc", F, Q, K, P, t, has_text, None, None)


def rc_reference_core(F, Q, K, P, t, has_text):
    return compress_tensors("rc-reference", F, Q, K, P, t, has_text, None, None)


def inputs(b, seed):
    rng = np.random.default_rng(seed)
    F = rng.normal(0, 1, (b, N, C)).astype(np.float32)
    Q = rng.normal(0, 1, (b, N + 1, C)).astype(np.float32)
    K = rng.normal(0, 1, (b, N + 1, C)).astype(np.float32)
    for i in range(b):
        hot = rng.choice(np.arange(1, N + 1), size=2 + 2 * i, replace=False)
        K[i, hot] += Q[i, 0] / np.linalg.norm(Q[i, 0]) * rng.uniform(8, 14, (len(hot), 1))
    P = rng.normal(0, 1, (b, N, D)).astype(np.float32)
    t = rng.normal(0, 1, (b, D)).astype(np.float32)
    has_text = np.array([i % 3 != 2 for i in range(b)])
    return [F, Q, K, P, t, has_text]


def predictor(prefix):
    cfg = inference.Config(prefix + ".json", prefix + ".pdiparams")
    cfg.disable_gpu()
    cfg.disable_glog_info()
    return inference.create_predictor(cfg)


def predict(pred, arrays):
    for name, arr in zip(pred.get_input_names(), arrays):
        h = pred.get_input_handle(name)
        h.reshape(arr.shape)
        h.copy_from_cpu(arr)
    pred.run()
    return [pred.get_output_handle(o).copy_to_cpu() for o in pred.get_output_names()]


@pytest.mark.parametrize("fn", [rc_core, rc_reference_core])
def test_export_matches_dygraph(fn, tmp_path):
    spec = [InputSpec([None, N, C], "float32", "F"), InputSpec([None, N + 1, C], "float32", "Q"),
            InputSpec([None, N + 1, C], "float32", "K"), InputSpec([None, N, D], "float32", "P"),
            InputSpec([None, D], "float32", "t"), InputSpec([None], "bool", "has_text")]
    static_fn = paddle.jit.to_static(fn, input_spec=spec, full_graph=True)
    prefix = str(tmp_path / "rc_core")
    paddle.jit.save(static_fn, prefix)
    pred = predictor(prefix)
    for b, seed in ((3, 0), (1, 1), (5, 2)):
        arrays = inputs(b, seed)
        want = fn(*[paddle.to_tensor(a) for a in arrays])
        got = predict(pred, arrays)
        assert len(got) == len(CORE_FIELDS)
        lengths = want[1].numpy()
        assert len(set(lengths.tolist())) > 1 or b == 1
        _assert_core_equal(want, got)


def _assert_core_equal(want, got):
    """The predictor's outputs equal the dygraph core's: tokens to float tolerance, indices exactly."""
    for name, w, g in zip(CORE_FIELDS, want, got):
        w = w.numpy()
        assert g.shape == w.shape, (name, g.shape, w.shape)
        if name == "tokens":
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(g, w, err_msg=name)


USES = {"none": "F", "random": "F", "divprune": "F", "cls-topk": "F Q K", "prumerge": "F Q K",
        "prumerge+": "F Q K", "visionzip": "F cls_attn metric", "rc": "F Q K P t has_text",
        "rc-reference": "F Q K P t has_text", "pooling": "F", "trim": "F P t has_text",
        "cdpruner": "F P t has_text"}


def make_core(method, budget):
    names = USES[method].split()

    def call(xs):
        v = dict(zip(names, xs))
        opts = {"cls_attn": v.get("cls_attn"), "metric": v.get("metric")} if method == "visionzip" else None
        return compress_tensors(method, v["F"], v.get("Q"), v.get("K"), v.get("P"), v.get("t"),
                                v.get("has_text"), budget, opts)

    # to_static needs a fixed signature (no *args), one per input count
    def core1(a):
        return call([a])

    def core3(a, b, c):
        return call([a, b, c])

    def core4(a, b, c, d):
        return call([a, b, c, d])

    def core6(a, b, c, d, e, f):
        return call([a, b, c, d, e, f])
    return {1: core1, 3: core3, 4: core4, 6: core6}[len(names)], names


@pytest.mark.parametrize("method,budget", [
    ("none", None), ("random", None), ("cls-topk", 9), ("prumerge", None), ("prumerge+", None),
    ("prumerge+", 12), ("visionzip", 16), ("divprune", 6), ("rc", 10), ("rc-reference", 10),
    ("pooling", None), ("pooling", 16), ("trim", None), ("trim", 7), ("cdpruner", 8)])
def test_every_method_exports(method, budget, tmp_path):
    fn, names = make_core(method, budget)
    specs = {"F": InputSpec([None, N, C], "float32", "F"), "Q": InputSpec([None, N + 1, C], "float32", "Q"),
             "K": InputSpec([None, N + 1, C], "float32", "K"), "P": InputSpec([None, N, D], "float32", "P"),
             "t": InputSpec([None, D], "float32", "t"), "has_text": InputSpec([None], "bool", "has_text"),
             "cls_attn": InputSpec([None, N], "float32", "cls_attn"),
             "metric": InputSpec([None, N, 4], "float32", "metric")}
    prefix = str(tmp_path / "core")
    paddle.jit.save(paddle.jit.to_static(fn, input_spec=[specs[k] for k in names], full_graph=True), prefix)
    pred = predictor(prefix)
    rng = np.random.default_rng(9)
    base = dict(zip(["F", "Q", "K", "P", "t", "has_text"], inputs(3, 4)))
    base["cls_attn"] = rng.random((3, N)).astype(np.float32)
    base["metric"] = rng.normal(0, 1, (3, N, 4)).astype(np.float32)
    arrays = [base[k] for k in names]
    want = fn(*[paddle.to_tensor(a) for a in arrays])
    got = predict(pred, arrays)
    if budget is not None:
        assert want[1].numpy().tolist() == [budget] * 3
    _assert_core_equal(want, got)
