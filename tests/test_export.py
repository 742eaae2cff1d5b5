"""Static export (PIR .json + .pdiparams) and the Paddle Inference runner against the dynamic model."""
import io
import json
import os
import shutil
import sys
from contextlib import redirect_stdout

import numpy as np
import paddle
import pytest

from paddle_rc.data.padding import left_pad
from paddle_rc.errors import UserError
from paddle_rc.compression import available_methods, get_method
from paddle_rc.export import exporter
from paddle_rc.export.runner import DeployedLlava, append_step
from paddle_rc.predictor import build_predictor

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
ALL_METHODS = available_methods()  # every method exports, fastv (pruning inside the LLM) included
# (method, budget, options): every method adaptively, plus budget / option cases whose traced
# control flow differs (budget branches in rc and prumerge+, a non-default option).
VISION_CASES = [(m, None, {}) for m in ALL_METHODS] + [
    ("rc", 9, {}), ("prumerge+", 7, {}), ("rc-reference", 12, {}), ("visionzip", 10, {}),
    ("prumerge", None, {"topk": 3}), ("rc", None, {"text_sign": -1, "p_source": "feature-postln"}),
]


def _tiny_model(image_size=56):
    from conftest import tiny_llava_config

    from paddle_rc.models import LlavaForConditionalGeneration

    paddle.seed(1)
    model = LlavaForConditionalGeneration(tiny_llava_config(image_size=image_size))
    model.eval()
    return model


@pytest.fixture(scope="module")
def model():
    return _tiny_model()


@pytest.fixture(scope="module")
def vision_model():
    """112 px (64 patches): at 56 px (16 patches) rc's LOF finds no text outliers, so the question
    would not influence the output and a wrong text path would go unnoticed."""
    return _tiny_model(image_size=112)


@pytest.fixture(scope="module")
def llm_dir(model, tmp_path_factory):
    """An export of the tiny model's LLM graph, shared by the generation tests."""
    out = str(tmp_path_factory.mktemp("llm"))
    exporter.export_llm(model, out)
    return out


def _predictor(prefix, onednn=False):
    cfg = paddle.inference.Config(prefix + ".json", prefix + ".pdiparams")
    cfg.disable_gpu()
    cfg.disable_glog_info()
    cfg.enable_mkldnn() if onednn else cfg.disable_mkldnn()
    return paddle.inference.create_predictor(cfg)


def _clip_ids(model, batch, length, rng):
    eos = model.config.text.eos_token_id
    ids = rng.integers(0, eos - 2, size=(batch, length))
    # Different question lengths: each row's first EOS is where rc pools.
    for b in range(batch):
        ids[b, max(1, length - 1 - 3 * b):] = eos
    return paddle.to_tensor(ids.astype(np.int64))


def _dynamic_vision(model, method, budget, options, pixels, ids, has_text):
    model.set_compression(method, budget, **options)
    mode = get_method(method).text_mode
    t = None if mode is None else model.question_features(ids, mode)
    return model.encode_images(pixels, t, has_text)


def _text_length(model, method):
    """CLIP ids per sample the method's text mode takes (two segments for the segmented mode)."""
    return {"prompt-first-line": 20, "question-segments": 2 * model.config.text.max_position_embeddings
            }.get(get_method(method).text_mode, 7)


def test_vision_graph_equals_dynamic_for_every_method(vision_model, tmp_path):
    """One loop over methods (an export is a couple of seconds): exported outputs equal the dynamic
    ones to 1e-5, at two batch sizes through the same program, with per-sample lengths."""
    model = vision_model
    rng = np.random.default_rng(0)
    size = model.config.vision.image_size
    checked, varied, text_used = [], False, False
    for i, (method, budget, options) in enumerate(VISION_CASES):
        name = f"vision{i}"
        exporter.export_vision(model, str(tmp_path), method, budget, options, name=name)
        pred = _predictor(os.path.join(tmp_path, name))
        for batch in (3, 1):
            pixels = paddle.to_tensor(rng.standard_normal((batch, 3, size, size)).astype(np.float32))
            ids = _clip_ids(model, batch, _text_length(model, method), rng)
            has_text = paddle.ones([batch], dtype="bool")
            ref = _dynamic_vision(model, method, budget, options, pixels, ids, has_text)
            inputs = [pixels] + ([ids, has_text] if get_method(method).uses_text else [])
            outs = pred.run(inputs)
            lengths = outs[1].numpy()
            np.testing.assert_array_equal(lengths, ref.lengths, err_msg=f"{method} lengths")
            varied |= len(set(lengths.tolist())) > 1
            assert outs[0].shape[1] == lengths.max()
            got, want = outs[0].numpy(), ref.embeds.numpy()
            assert got.shape == want.shape, (method, got.shape, want.shape)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=method)
            if method == "none" or get_method(method).stage == "llm":
                assert len(outs) == 2
            else:
                r = ref.result
                text_used |= method.startswith("rc") and bool((r.stage.numpy() == 2).any())
                for j, field in enumerate(("kinds", "sources", "stage", "members", "extra_members")):
                    np.testing.assert_array_equal(outs[2 + j].numpy(), getattr(r, field).numpy(),
                                                  err_msg=f"{method} {field}")
        checked.append(method)
    assert set(checked) == set(ALL_METHODS)
    # Some adaptive method must really produce different lengths within a batch, or the padding
    # and per-sample length path above went unexercised.
    assert varied
    assert text_used  # the question really steered rc here


def test_rc_without_question_equals_dynamic_without_text(vision_model, tmp_path):
    """has_text=False in the graph gives what the dynamic model computes with no text at all (t=None)."""
    model = vision_model
    exporter.export_vision(model, str(tmp_path), "rc")
    pred = _predictor(os.path.join(tmp_path, "vision"))
    rng = np.random.default_rng(3)
    pixels = paddle.to_tensor(rng.standard_normal((2, 3, 112, 112)).astype(np.float32))
    ids = _clip_ids(model, 2, 5, rng)
    outs = pred.run([pixels, ids, paddle.zeros([2], dtype="bool")])
    # The reference is compress() with no text at all (P and t None), as docs/algorithm.md defines it.
    from paddle_rc.compression import compress

    feats = model.vision_tower(pixels, model.config.vision_feature_layer, need_qkp=True)
    ref = compress("rc", feats.F, feats.Q, feats.K)
    np.testing.assert_array_equal(outs[1].numpy(), ref.lengths.numpy())
    np.testing.assert_allclose(outs[0].numpy(), model.projector(ref.tokens).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(outs[4].numpy(), ref.stage.numpy())
    assert (outs[4].numpy() == 2).sum() == 0  # no patch recovered by text


def _prompt_batch(model, rng):
    """Two left-padded prompts of different lengths, each holding the image placeholder once."""
    image = model.config.image_token_index
    vocab = model.config.llm.vocab_size
    rows = [[1] + list(rng.integers(3, vocab, 4)) + [image] + list(rng.integers(3, vocab, 6)),
            [1, image] + list(rng.integers(3, vocab, 3))]
    ids, mask = left_pad(rows, 0)
    return paddle.to_tensor(ids), paddle.to_tensor(mask)


@pytest.mark.parametrize("method", ["none", "rc", "fastv"])
def test_greedy_generation_through_graphs_gives_dynamic_tokens(model, llm_dir, tmp_path, method):
    out = str(tmp_path / "deploy")
    shutil.copytree(llm_dir, out)
    model.set_compression(method)
    manifest = exporter.export_loaded_model(model, out, method, None, {})
    os.makedirs(os.path.join(out, "tokenizer"))
    os.makedirs(os.path.join(out, "clip_tokenizer"))
    for d in ("tokenizer", "clip_tokenizer"):
        open(os.path.join(out, d, "placeholder"), "w").close()
    exporter.finish_manifest(out, manifest)
    deployed = DeployedLlava(out)

    rng = np.random.default_rng(5)
    ids, mask = _prompt_batch(model, rng)
    pixels = paddle.to_tensor(rng.standard_normal((2, 3, 56, 56)).astype(np.float32))
    clip = _clip_ids(model, 2, 6, rng)
    has_text = paddle.to_tensor(np.array([True, True]))
    kw = dict(max_new_tokens=10, eos_token_id=-1, pad_token_id=0)  # eos -1: run every step
    t_dyn = model.get_text_features(clip) if method == "rc" else None
    want = model.generate(ids, pixels, mask, t_dyn, has_text, **kw)
    t_dep = deployed.question_features(clip, "question") if method == "rc" else None
    got = deployed.generate(ids, pixels, mask, t_dep, has_text, **kw)
    assert got.tokens.shape == (2, 10)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(got.visual.lengths, want.visual.lengths)
    if method == "rc":
        assert got.visual.result.stats == want.visual.result.stats
    if method == "fastv":  # the same patches kept inside the LLM
        assert got.visual.result.stats == want.visual.result.stats
        assert got.visual.kept_in_llm == want.visual.kept_in_llm == 8
        # the deployed prefill records the same kept patch indices (--deploy --save-vis draws them)
        assert [k.tolist() for k in got.visual.result.llm_kept] == [k.tolist() for k in want.visual.result.llm_kept]
        assert got.visual.result.llm_layer == want.visual.result.llm_layer


def _export_in_memory(model, out, method, budget=None, options=None):
    os.makedirs(out, exist_ok=True)
    manifest = exporter.export_loaded_model(model, out, method, budget, dict(options or {}))
    for d in ("tokenizer", "clip_tokenizer"):
        os.makedirs(os.path.join(out, d), exist_ok=True)
        open(os.path.join(out, d, "placeholder"), "w").close()
    return exporter.finish_manifest(out, manifest)


@pytest.fixture(scope="module")
def fastv_deploy(tmp_path_factory):
    """A 4-layer LLM pruned after layer 2 to 6 of 16 visual tokens, and its export."""
    from conftest import tiny_llava_model

    model = tiny_llava_model(llm_layers=4, seed=4)
    model.set_compression("fastv", 6, layer=2)
    out = str(tmp_path_factory.mktemp("fastv") / "deploy")
    return model, out, _export_in_memory(model, out, "fastv", 6, {"layer": 2})


@pytest.mark.parametrize("rows", [[[1, 5, 6, -200, 7, 8]],
                                  [[1, 5, 6, -200, 7, 8], [1, 9, 4, 4, 5, 6, -200, 7, 3, 3, 2], [-200, 4]]],
                         ids=["batch1", "batch3"])
def test_fastv_llm_graph_prefill_and_decode_equal_the_dynamic_model(fastv_deploy, rows):
    """The one llm program of a FastV export, as the runner calls it: the same kept positions, last
    logits and split caches (past the runner's masked slot) as the dynamic model, in the prefill and
    over decode steps; batch 1 and a left-padded batch of different prompt lengths."""
    model, out, manifest = fastv_deploy
    assert manifest["compression"]["llm_layer"] == 2
    assert manifest["graphs"]["llm"]["outputs"] == ["logits", "k", "v", "k_late", "v_late", "kept_mask",
                                                    "keep_index"]
    deployed = DeployedLlava(out)
    rng = np.random.default_rng(len(rows))
    ids, mask = left_pad(rows, 0)
    ids, mask = paddle.to_tensor(ids), paddle.to_tensor(mask)
    px = paddle.to_tensor(rng.standard_normal((len(rows), 3, 56, 56)).astype("float32"))
    with paddle.no_grad():
        visual = model.encode_images(px)
        embeds, m, pos, vm = model.splice(ids, mask, visual, with_visual_mask=True)
        want = model.prefill_pruned(embeds, m, pos, vm)
    got = deployed.prefill_pruned(embeds, m, pos, vm)
    np.testing.assert_array_equal(got[2].numpy(), want[2].numpy())  # keep_index
    assert want[2].shape[1] == embeds.shape[1] - 16 + 6

    def check(got, want, early_mask):
        np.testing.assert_allclose(got[0].numpy(), want[0].numpy(), rtol=1e-5, atol=1e-5)
        g, w = got[1].tensors(), want[1].tensors()
        np.testing.assert_array_equal(g[4].numpy()[:, 1:], w[4].numpy())
        assert (g[4].numpy()[:, 0] == 0).all()
        # The export's caches start with the masked slot; left-padding positions (masked, their
        # queries attend uniformly to whatever is there) may differ, the rest must not.
        for a, b, mk in zip(g[:4], w[:4], [early_mask.numpy()] * 2 + [w[4].numpy()] * 2):
            keep = mk.astype(bool)[None, :, None, :, None]
            np.testing.assert_allclose(a.numpy()[:, :, :, 1:] * keep, b.numpy() * keep, rtol=1e-5, atol=1e-5)
    check(got, want, m)
    for step in range(4):
        tok = paddle.to_tensor(want[0].numpy().argmax(-1).reshape(-1, 1))
        np.testing.assert_array_equal(got[0].numpy().argmax(-1), want[0].numpy().argmax(-1))
        m = paddle.concat([m, paddle.ones([len(rows), 1], dtype="int64")], axis=1)
        pos = pos[:, -1:] + 1
        with paddle.no_grad():
            want = model.decode_pruned(tok, m, pos, want[1])
        got = deployed.decode_pruned(tok, m, pos, got[1])
        check(got, want, m)
        assert want[1].k_late.shape[3] == embeds.shape[1] - 10 + step + 1


def _fastv_batch(backend, rows, px, keys):
    from paddle_rc.models.generation import DecodeBatch

    ids, mask = left_pad(rows, 0)
    with paddle.no_grad():
        visual = backend.encode_images(px)
        embeds, m, pos, vm = backend.splice(paddle.to_tensor(ids), paddle.to_tensor(mask), visual,
                                            with_visual_mask=True)
        prefill, decode, _ = backend.llm_steps(vm)
        return DecodeBatch.prefill(prefill, decode, embeds, m, pos, keys)


def _greedy_logits(batch, steps, leave=None):
    """{key: [logits per step]}, greedy; row `leave` leaves the batch after the first step."""
    out = {k: [batch.logits[i]] for i, k in enumerate(batch.keys)}
    with paddle.no_grad():
        for step in range(steps):
            if step == 1 and leave is not None:
                batch.keep([i for i, k in enumerate(batch.keys) if k != leave])
            batch.step(batch.logits.argmax(-1))
            for i, k in enumerate(batch.keys):
                out[k].append(batch.logits[i])
    return out


@pytest.mark.parametrize("backend", ["dynamic", "exported"])
def test_fastv_split_cache_rows_leave_and_join_like_alone(fastv_deploy, backend):
    """DecodeBatch over FastV's split cache: a row leaving the batch (keep) and two batches of
    different prompt lengths joining (join pads both parts of the cache) leave every row's logits
    as when it runs alone (what answer_batch and the server do)."""
    model, out, _ = fastv_deploy
    runner = model if backend == "dynamic" else DeployedLlava(out)
    rows = [[1, 5, 6, -200, 7, 8], [1, 9, 4, 4, 5, 6, -200, 7, 3, 3, 2], [-200, 4]]
    rng = np.random.default_rng(9)
    px = paddle.to_tensor(rng.standard_normal((3, 3, 56, 56)).astype("float32"))
    alone = {r: _greedy_logits(_fastv_batch(runner, [rows[r]], px[r:r + 1], [r]), 4)[r] for r in range(3)}
    together = _greedy_logits(_fastv_batch(runner, rows, px, [0, 1, 2]), 4, leave=1)
    joined = _fastv_batch(runner, rows[:1], px[:1], [0])
    joined.join(_fastv_batch(runner, rows[1:], px[1:], [1, 2]))
    joined = _greedy_logits(joined, 4)
    for r in range(3):
        for got in (together[r], joined[r]):
            assert len(got) == (2 if (got is together[r] and r == 1) else 5)
            for g, w in zip(got, alone[r]):
                np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
                assert g.argmax() == w.argmax()


def test_fastv_export_stores_the_llm_weights_once(fastv_deploy, tmp_path):
    """The FastV llm program holds the same parameters as any other method's (no second copy), and
    an export for another method of the same model is plain (no pruning inputs, no cost)."""
    model, out, manifest = fastv_deploy
    assert not any(n.startswith(("prefill.", "decode.")) for n in manifest["files"])
    model.set_compression("none")
    try:
        plain = _export_in_memory(model, str(tmp_path / "none"), "none")
    finally:
        model.set_compression("fastv", 6, layer=2)
    assert manifest["files"]["llm.pdiparams"] == plain["files"]["llm.pdiparams"]
    assert [i["name"] for i in plain["graphs"]["llm"]["inputs"]] == [
        "inputs_embeds", "attention_mask", "position_ids", "past_k", "past_v"]
    assert plain["compression"]["llm_layer"] is None


def test_one_llm_graph_does_prefill_and_decode_like_the_dynamic_model(model, llm_dir):
    rng = np.random.default_rng(7)
    llm = _predictor(os.path.join(llm_dir, "llm"))
    assert sorted(os.listdir(llm_dir)) == ["llm.json", "llm.pdiparams"]
    embeds = paddle.to_tensor(rng.standard_normal((3, 9, 64)).astype(np.float32))
    mask = paddle.to_tensor(np.array([[0] * 4 + [1] * 5, [1] * 9, [0, 0] + [1] * 7], np.int64))
    from paddle_rc.models.llama import positions_from_mask

    pos = positions_from_mask(mask)
    want = model.prefill(embeds, mask, pos)
    no_past = paddle.zeros([2, 3, 2, 0, 16])  # [layers, batch, kv heads, 0, head dim]
    got = append_step(llm.run([embeds, mask, pos, no_past, no_past]), no_past, no_past)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-5)
    ids = paddle.to_tensor(np.array([[5], [7], [9]], np.int64))
    mask2 = paddle.concat([mask, paddle.ones([3, 1], "int64")], axis=1)
    pos2 = pos[:, -1:] + 1
    want = model.decode(ids, mask2, pos2, want[1], want[2])
    out = llm.run([model.language_model.embed_tokens(ids), mask2, pos2, got[1], got[2]])
    assert out[1].shape == [2, 3, 2, 1, 16]  # the step's keys/values; the runner appends them
    got = append_step(out, got[1], got[2])
    assert got[1].shape == [2, 3, 2, 10, 16]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-5)


def test_runner_keeps_no_program_output_across_runs(model, llm_dir):
    """Paddle Inference outputs share the predictor's memory, which a later run overwrites when its
    output fits (a smaller batch after a larger one). The runner's caches must not: a batch-1
    sequence decoded after a larger prefill, and a cache held while another batch is prefilled,
    give what a fresh predictor gives."""
    from paddle_rc.export.runner import Graph, RunnerOptions

    spec = {"inputs": exporter._spec_json(exporter._llm_inputs(model.config)),
            "outputs": exporter.output_names("none")["llm"]}
    rng = np.random.default_rng(11)

    def call(graph, b, s, past=None):
        e = paddle.to_tensor(rng.standard_normal((b, s, 64)).astype(np.float32))
        if past is None:
            past = paddle.zeros([2, b, 2, 1, 16])
            past = (past, past)
        m = paddle.ones([b, past[0].shape[3] + s], dtype="int64")
        p = paddle.arange(s).unsqueeze(0).expand([b, s]).astype("int64") + past[0].shape[3]
        return append_step(graph(e, m, p, *past), *past)

    runs = {}
    for name in ("fresh", "used"):
        rng = np.random.default_rng(11)
        graph = Graph(llm_dir, "llm", spec, RunnerOptions(threads=1))
        big = call(graph, 3, 30) if name == "used" else None  # noqa: F841 (held, as a running batch)
        rng = np.random.default_rng(11)
        a = call(graph, 1, 10)
        b = call(graph, 1, 12)  # another sequence prefilled while `a` is kept
        steps = [a]
        for _ in range(3):
            steps.append(call(graph, 1, 1, past=steps[-1][1:]))
        runs[name] = [x.numpy() for st in steps + [b] for x in st]
    for f, u in zip(runs["fresh"], runs["used"]):
        np.testing.assert_array_equal(f, u)


def test_run_step_writes_the_cache_in_place_like_appending(model, llm_dir, monkeypatch):
    """The runner's cache: the step's keys/values written into a buffer with room, the program
    attending over the whole buffer (room masked). Every step, across two regrowths of the room,
    gives append_step's logits and cache; a step from a cache that was already appended to copies
    it instead of overwriting what the later cache holds."""
    from paddle_rc.export.runner import Graph, RunnerOptions, run_step
    from paddle_rc.models import llama

    monkeypatch.setattr(llama, "CACHE_ROOM", 2)
    graph = Graph(llm_dir, "llm", {"inputs": exporter._spec_json(exporter._llm_inputs(model.config)),
                                   "outputs": exporter.output_names("none")["llm"]}, RunnerOptions(threads=1))
    rng = np.random.default_rng(3)
    mask = paddle.to_tensor(np.array([[0, 0] + [1] * 5, [1] * 7], np.int64))
    mask = paddle.concat([paddle.zeros([2, 1], "int64"), mask], axis=1)  # the masked slot in front
    pos = llama.positions_from_mask(mask[:, 1:])
    slot = paddle.zeros([2, 2, 2, 1, 16])
    e = paddle.to_tensor(rng.standard_normal((2, 7, 64)).astype(np.float32))
    got = run_step(graph, e, mask, pos, slot, slot)
    want = append_step(graph(e, mask, pos, slot, slot), slot, slot)

    def same(g, w):
        assert g[1].shape == w[1].shape
        for a, b in zip(g, w):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)

    same(got, want)
    history = []
    for _ in range(5):  # room 2: the buffer is regrown twice
        history.append((got, want, mask, pos))
        t = paddle.to_tensor(rng.standard_normal((2, 1, 64)).astype(np.float32))
        mask = paddle.concat([mask, paddle.ones([2, 1], "int64")], axis=1)
        pos = pos[:, -1:] + 1
        got = run_step(graph, t, mask, pos, got[1], got[2])
        want = append_step(graph(t, mask, pos, want[1], want[2]), want[1], want[2])
        same(got, want)
    latest = [x.numpy().copy() for x in got[1:]]
    old_got, old_want, m, p = history[3]  # appended to already: a second step from it must copy
    t = paddle.to_tensor(rng.standard_normal((2, 1, 64)).astype(np.float32))
    m, p = paddle.concat([m, paddle.ones([2, 1], "int64")], axis=1), p[:, -1:] + 1
    same(run_step(graph, t, m, p, old_got[1], old_got[2]),
         append_step(graph(t, m, p, old_want[1], old_want[2]), old_want[1], old_want[2]))
    for a, b in zip(got[1:], latest):
        np.testing.assert_array_equal(a.numpy(), b)


def _mkl_threads() -> int:
    import ctypes

    libs = {line.split()[-1] for line in open("/proc/self/maps") if "libmklml" in line}
    assert libs, "Paddle's MKL is not loaded in this process"
    return ctypes.CDLL(libs.pop()).MKL_Get_Max_Threads()


def test_graph_run_leaves_the_dynamic_thread_count_alone(model, llm_dir):
    """A Paddle Inference run ends by setting the calling thread's math threads to 1; the dynamic ops
    that follow in the same process (the tower after an exported LLM run, a benchmark) must keep the
    process's own count."""
    from paddle_rc import runtime
    from paddle_rc.export.runner import Graph, RunnerOptions

    spec = {"inputs": exporter._spec_json(exporter._llm_inputs(model.config)),
            "outputs": exporter.output_names("none")["llm"]}
    before = runtime._configured_threads
    want = min(2, os.cpu_count() or 1)  # MKL caps its count at the cores there are
    runtime.configure(threads=want)
    try:
        paddle.ones([4]).numpy()
        assert _mkl_threads() == want
        graph = Graph(llm_dir, "llm", spec, RunnerOptions(threads=want))
        past = paddle.zeros([2, 1, 2, 1, 16])
        graph(paddle.ones([1, 4, 64]), paddle.ones([1, 5], dtype="int64"),
              paddle.arange(4).unsqueeze(0).astype("int64") + 1, past, past)
        assert _mkl_threads() == want
    finally:
        runtime._configured_threads = before
        runtime.restore_threads()


# ---- end to end through the tools, on a checkpoint with real (tiny) tokenizers ----------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from conftest import tiny_llava_config

    from paddle_rc.data.clip_tokenizer import CLIPTokenizer
    from paddle_rc.data.llama_tokenizer import LlamaTokenizer
    from paddle_rc.data.tiny_tokenizers import build_tiny_clip_bpe, build_tiny_sentencepiece
    from paddle_rc.models import LlavaForConditionalGeneration
    from paddle_rc.models.weights import save_weights

    d = str(tmp_path_factory.mktemp("ckpt"))
    build_tiny_sentencepiece(os.path.join(d, "tokenizer"))
    build_tiny_clip_bpe(os.path.join(d, "clip_tokenizer"))
    llm_tok = LlamaTokenizer.from_dir(os.path.join(d, "tokenizer"))
    clip_tok = CLIPTokenizer.from_dir(os.path.join(d, "clip_tokenizer"))
    cfg = tiny_llava_config(vocab=llm_tok.vocab_size)
    cfg.text.vocab_size = clip_tok.vocab_size
    cfg.text.bos_token_id, cfg.text.eos_token_id = clip_tok.bos_token_id, clip_tok.eos_token_id
    cfg.text.pad_token_id = clip_tok.pad_token_id
    cfg.llm.bos_token_id, cfg.llm.eos_token_id = llm_tok.bos_token_id, llm_tok.eos_token_id
    cfg.llm.pad_token_id = llm_tok.pad_token_id
    paddle.seed(2)
    model = LlavaForConditionalGeneration(cfg)
    cfg.save(d)
    save_weights(model, d)
    return d


@pytest.fixture(scope="module")
def deploy_rc(checkpoint, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("deploy") / "rc")
    # A budget: adaptive rc keeps no token at all on this 16-patch random model.
    _tool("export", ["--model", checkpoint, "--out", out, "--method", "rc", "--budget", "6", "--json"])
    return out


def _tool(name, argv):
    sys.path.insert(0, TOOLS)
    try:
        module = __import__(name)
    finally:
        sys.path.remove(TOOLS)
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert module.main(argv) == 0
    return buf.getvalue()


def test_export_tool_writes_the_documented_layout(deploy_rc, checkpoint):
    manifest = json.load(open(os.path.join(deploy_rc, "manifest.json")))
    for name in ("vision", "llm"):
        for ext in (".json", ".pdiparams"):
            assert manifest["files"][name + ext] == os.path.getsize(os.path.join(deploy_rc, name + ext)) > 0
    assert manifest["compression"]["method"] == "rc" and manifest["compression"]["budget"] == 6
    assert [i["name"] for i in manifest["graphs"]["vision"]["inputs"]] == ["pixel_values", "clip_ids", "has_text"]
    assert manifest["graphs"]["llm"]["outputs"] == ["logits", "k", "v"]
    assert [i["name"] for i in manifest["graphs"]["llm"]["inputs"]] == [
        "inputs_embeds", "attention_mask", "position_ids", "past_k", "past_v"]
    assert not any(n.startswith(("prefill.", "decode.")) for n in manifest["files"])
    assert manifest["versions"]["paddle"] == paddle.__version__
    assert "tokenizer/tokenizer.model" in manifest["files"] and "clip_tokenizer/vocab.json" in manifest["files"]
    assert not any(n.endswith(".pdmodel") for n in manifest["files"])  # PIR, not the old IR


def test_infer_deploy_gives_the_dynamic_answer(deploy_rc, checkpoint):
    args = ["--question", "What color is the car?", "--max-new-tokens", "8", "--json"]  # the built-in scene
    dyn = json.loads(_tool("infer", ["--model", checkpoint, "--method", "rc", "--budget", "6"] + args))
    dep = json.loads(_tool("infer", ["--deploy", deploy_rc] + args))
    for key in ("answer", "method", "visual_tokens_before", "visual_tokens_after", "stage_counts"):
        assert dep[key] == dyn[key], key
    assert dep["visual_tokens_after"] < dep["visual_tokens_before"]
    assert dep["model"] == "deploy:rc"


@pytest.fixture(scope="module")
def deploy_fastv(checkpoint, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("deploy") / "fastv")
    _tool("export", ["--model", checkpoint, "--out", out, "--method", "fastv", "--budget", "5", "--json"])
    return out


def test_infer_deploy_fastv_gives_the_dynamic_answer(deploy_fastv, deploy_rc, checkpoint):
    """tools/export.py --method fastv, then tools/infer.py --deploy: the dynamic model's answer, with
    the pruning inside the exported LLM program (5 of 16 visual tokens after its layer)."""
    manifest = json.load(open(os.path.join(deploy_fastv, "manifest.json")))
    assert sorted(n for n in manifest["files"] if n.endswith((".json", ".pdiparams")) and "/" not in n) == [
        "config.json", "llm.json", "llm.pdiparams", "vision.json", "vision.pdiparams"]
    # one copy of the LLM's weights, as large as another method's export of the same checkpoint
    assert manifest["files"]["llm.pdiparams"] == os.path.getsize(os.path.join(deploy_rc, "llm.pdiparams"))
    args = ["--question", "What color is the car?", "--max-new-tokens", "8", "--json"]
    dyn = json.loads(_tool("infer", ["--model", checkpoint, "--method", "fastv", "--budget", "5"] + args))
    dep = json.loads(_tool("infer", ["--deploy", deploy_fastv] + args))
    for key in ("answer", "method", "budget", "visual_tokens_before", "visual_tokens_after", "stage_counts"):
        assert dep[key] == dyn[key], key
    assert (dep["visual_tokens_before"], dep["visual_tokens_after"]) == (16, 5)
    assert dep["model"] == "deploy:fastv"


def test_deployed_fastv_batches_equal_the_dynamic_model(deploy_fastv, checkpoint):
    """A batch of different prompt lengths whose rows end at different steps (rows leave the split
    cache) gives the dynamic model's answers and kept patches, and each row its answer alone."""
    from conftest import drawn_scene

    images = [drawn_scene(), drawn_scene().rotate(90).resize((80, 200)), drawn_scene().convert("L")]
    questions = ["What is this?", "Describe the picture in detail, please.", "Color?"]
    dep = build_predictor(deploy_dir=deploy_fastv)
    dyn = build_predictor(checkpoint, method="fastv", budget=5)
    a = dep.answer_batch(images, questions, max_new_tokens=12)
    b = dyn.answer_batch(images, questions, max_new_tokens=12)
    kept = [dep.last_visual.result.samples[i].visual for i in range(3)]
    assert kept == [dyn.last_visual.result.samples[i].visual for i in range(3)]
    for x, y, (im, q) in zip(a, b, zip(images, questions)):
        assert (x["text"], x["visual_tokens"], x["stage_counts"]) == (y["text"], y["visual_tokens"], y["stage_counts"])
        assert x["visual_tokens"] == 5
        assert dep.answer(im, q, max_new_tokens=12)["text"] == x["text"]


def test_deployed_predictor_batch_with_and_without_question(deploy_rc, checkpoint):
    """The runner uses the pipeline's prompt and CLIP-text handling: in a batch where one sample has
    no question, that sample's text stage is skipped, and both samples match the dynamic model."""
    from conftest import drawn_scene

    images = [drawn_scene(), drawn_scene().rotate(90)]
    args = (images, ["What is this?", "Describe it."], ["What is the red sign?", ""])
    dep = build_predictor(deploy_dir=deploy_rc).answer_batch(*args, max_new_tokens=4)
    dyn = build_predictor(checkpoint, method="rc", budget=6).answer_batch(*args, max_new_tokens=4)
    assert dep[0]["stage_counts"]["text"] > 0 and dep[1]["stage_counts"]["text"] == 0
    for a, b in zip(dep, dyn):
        assert a["text"] == b["text"] and a["stage_counts"] == b["stage_counts"]


def test_deployed_long_answers_one_at_a_time_equal_the_dynamic_model(deploy_rc, checkpoint):
    """Batch 1 over many decode steps: a graph whose cached-attention path differed from the dynamic
    model's only showed after the first few tokens."""
    from conftest import drawn_scene

    dep, dyn = build_predictor(deploy_dir=deploy_rc), build_predictor(checkpoint, method="rc", budget=6)
    for im, q in ((drawn_scene(), "What is this?"), (drawn_scene().rotate(90), "Describe it in detail.")):
        assert dep.answer(im, q, max_new_tokens=32)["text"] == dyn.answer(im, q, max_new_tokens=32)["text"]


def test_deployed_answers_alone_after_a_batch_equal_the_dynamic_model(deploy_rc, checkpoint):
    """A sequence decoded alone after a larger batch: the predictor's buffers are larger than its
    outputs then, and a runner that fed the program's cache output back had it overwritten while
    the next step read it (docs/serving.md's batch-1 differences; 0 of 4 answers equal before)."""
    from conftest import drawn_scene

    images = [drawn_scene(), drawn_scene().rotate(90), drawn_scene().convert("L")]
    questions = ["What is this?", "Describe it.", "What color is the car?"]
    dep, dyn = build_predictor(deploy_dir=deploy_rc), build_predictor(checkpoint, method="rc", budget=6)
    want = [dyn.answer(im, q, max_new_tokens=32)["text"] for im, q in zip(images, questions)]
    assert [r["text"] for r in dep.answer_batch(images, questions, max_new_tokens=32)] == want
    assert [dep.answer(im, q, max_new_tokens=32)["text"] for im, q in zip(images, questions)] == want


def test_deployed_batch_equals_one_at_a_time(deploy_rc):
    from conftest import drawn_scene

    pred = build_predictor(deploy_dir=deploy_rc)
    images = [drawn_scene(), drawn_scene().rotate(90).resize((80, 200)), drawn_scene().convert("L")]
    questions = ["What is this?", "Describe it.", ""]
    batch = pred.answer_batch(images, questions, max_new_tokens=6)
    for b, (im, q) in zip(batch, zip(images, questions)):
        s = pred.answer(im, q, max_new_tokens=6)
        assert (b["text"], b["visual_tokens"], b["stage_counts"]) == (s["text"], s["visual_tokens"], s["stage_counts"])


def test_build_predictor_holds_a_deployment_to_its_export(deploy_rc):
    assert build_predictor(deploy_dir=deploy_rc, method="rc").compression.budget == 6  # exported budget kept
    for kw in ({"method": "prumerge"}, {"budget": 7}, {"method": "rc", "budget": 7}):
        with pytest.raises(UserError, match="exported with method rc budget 6"):
            build_predictor(deploy_dir=deploy_rc, **kw)
    assert build_predictor(deploy_dir=deploy_rc).kind == "deploy"


def test_deployed_method_is_fixed(deploy_rc):
    pred = build_predictor(deploy_dir=deploy_rc)
    pred.set_method("rc", 6)  # the exported one: fine
    with pytest.raises(UserError, match="exported with method rc.*--method prumerge"):
        pred.set_method("prumerge")


def test_export_refuses_a_foreign_non_empty_directory(checkpoint, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        exporter.export_model(checkpoint, str(tmp_path), "none")
    with pytest.raises(UserError, match="refusing to overwrite"):
        exporter.export_model(checkpoint, str(tmp_path), "none", overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_export_rejects_unknown_method_and_option(checkpoint, tmp_path):
    with pytest.raises(UserError, match="unknown compression method"):
        exporter.export_model(checkpoint, str(tmp_path / "a"), "nope")
    with pytest.raises(UserError, match="no option"):
        exporter.export_model(checkpoint, str(tmp_path / "b"), "rc", options={"topkk": 3})


# ---- damaged or partial exports ----------------------------------------------------------------------

def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _scramble_same_size(path):
    size = os.path.getsize(path)
    with open(path, "wb") as f:
        f.write(b"\x00garbage" * (size // 8) + b"x" * (size % 8))


DAMAGES = {
    "no manifest (interrupted export)": (lambda d: os.remove(os.path.join(d, "manifest.json")), "manifest.json"),
    "manifest not JSON": (lambda d: open(os.path.join(d, "manifest.json"), "w").write("{oops"), "manifest.json"),
    "graph program missing": (lambda d: os.remove(os.path.join(d, "llm.json")), "llm.json"),
    "parameters truncated": (lambda d: _truncate(os.path.join(d, "llm.pdiparams")), "llm.pdiparams"),
    "program corrupt, same size": (lambda d: _scramble_same_size(os.path.join(d, "vision.json")), "vision"),
    "embedding table missing": (lambda d: os.remove(os.path.join(d, "embed_tokens.npy")), "embed_tokens.npy"),
    "tokenizer missing": (lambda d: shutil.rmtree(os.path.join(d, "clip_tokenizer")), "clip_tokenizer"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_export_ends_in_a_clear_message(deploy_rc, tmp_path, damage):
    d = str(tmp_path / "copy")
    shutil.copytree(deploy_rc, d)
    fn, names = DAMAGES[damage]
    fn(d)
    with pytest.raises(UserError) as err:
        build_predictor(deploy_dir=d)
    msg = str(err.value)
    assert names in msg and "re-run tools/export.py" in msg, msg


def test_missing_deploy_dir_and_gpu_request(tmp_path, deploy_rc):
    with pytest.raises(UserError, match="not found"):
        build_predictor(deploy_dir=str(tmp_path / "nothing"))
    if not paddle.is_compiled_with_cuda():
        with pytest.raises(UserError, match="CUDA build"):
            build_predictor(deploy_dir=deploy_rc, device="gpu")


def test_onednn_switch_on_our_graphs(deploy_rc):
    """oneDNN on: the 3.3.x PIR oneDNN bug does not fire on these graphs, and results are unchanged."""
    from conftest import drawn_scene

    off = build_predictor(deploy_dir=deploy_rc).answer(drawn_scene(), "What is this?", max_new_tokens=4)
    on = build_predictor(deploy_dir=deploy_rc, onednn=True, threads=1).answer(drawn_scene(), "What is this?",
                                                                           max_new_tokens=4)
    assert on["text"] == off["text"] and on["stage_counts"] == off["stage_counts"]



@pytest.mark.parametrize("bits", ["8", "4"])
def test_quantized_checkpoint_exports_and_serves_like_its_dynamic_model(checkpoint, deploy_rc, tmp_path, bits):
    qdir, out = str(tmp_path / f"int{bits}"), str(tmp_path / "deploy")
    extra = ["--group-size", "64"] if bits == "4" else []
    _tool("quantize", ["--model", checkpoint, "--dst", qdir, "--bits", bits] + extra)
    _tool("export", ["--model", qdir, "--out", out, "--method", "rc", "--budget", "6"])
    args = ["--question", "What color is the car?", "--max-new-tokens", "8", "--json"]
    dyn = json.loads(_tool("infer", ["--model", qdir, "--method", "rc", "--budget", "6"] + args))
    dep = json.loads(_tool("infer", ["--deploy", out] + args))
    assert dep["answer"] == dyn["answer"] and dep["stage_counts"] == dyn["stage_counts"]
    # The exported LLM keeps the integer weights (dequantized inside the graph), so it is smaller
    # than the float export of the same model.
    size = os.path.getsize(os.path.join(out, "llm.pdiparams"))
    assert size < 0.7 * os.path.getsize(os.path.join(deploy_rc, "llm.pdiparams"))


def test_export_quant_option_equals_quantize_then_export(checkpoint, tmp_path):
    """With lm_head quantized too (the -head preset), so that the exported LLM graph carries a
    weight-only lm_head."""
    qdir = str(tmp_path / "int4")
    _tool("quantize", ["--model", checkpoint, "--dst", qdir, "--bits", "4", "--group-size", "64",
                       "--quantize-lm-head"])
    two_step, one_step = str(tmp_path / "two"), str(tmp_path / "one")
    _tool("export", ["--model", qdir, "--out", two_step, "--method", "rc", "--budget", "6"])
    _tool("export", ["--model", checkpoint, "--out", one_step, "--method", "rc", "--budget", "6",
                     "--quant", "int4-g64-head"])
    q = json.load(open(os.path.join(one_step, "config.json")))["quantization"]
    assert q["weight_bits"] == 4 and "lm_head" not in q["skip"]
    args = ["--question", "What color is the car?", "--max-new-tokens", "8", "--json"]
    a = json.loads(_tool("infer", ["--deploy", two_step] + args))
    b = json.loads(_tool("infer", ["--deploy", one_step] + args))
    assert a["answer"] == b["answer"] and a["stage_counts"] == b["stage_counts"]
    # Same integer weights either way (parameter names, and so file order, differ between exports).
    for name in ("llm.pdiparams",):
        assert os.path.getsize(os.path.join(two_step, name)) == os.path.getsize(os.path.join(one_step, name))


def test_llm_weights_are_stored_once_and_the_embedding_table_only_as_npy(model, llm_dir):
    """One copy of the LLM's weights on disk: llm.pdiparams holds the decoder layers, final norm
    and lm_head (a few header bytes per tensor on top), not the embedding table, which lives in
    embed_tokens.npy alone."""
    lm = model.language_model
    layer_bytes = sum(int(np.prod(p.shape)) * 4 for n, p in lm.named_parameters() if not n.startswith("embed_tokens"))
    head_bytes = sum(int(np.prod(p.shape)) * 4 for p in model.lm_head.parameters())
    embed_bytes = int(np.prod(lm.embed_tokens.weight.shape)) * 4
    size = os.path.getsize(os.path.join(llm_dir, "llm.pdiparams"))
    assert layer_bytes + head_bytes <= size < layer_bytes + head_bytes + min(embed_bytes, 64 * 1024)


@pytest.mark.parametrize("layout", ["full", "source"])
def test_deployed_position_layouts_equal_the_dynamic_model(deploy_rc, checkpoint, layout):
    """The position layout is chosen at run time (the LLM graph takes position ids as an input; `source`
    reads the kept tokens' patches from the exported vision graph's outputs): a deployment answers with
    each layout as the dynamic model does, and not as it does with compact."""
    from conftest import drawn_scene

    images = [drawn_scene(), drawn_scene().rotate(90)]
    questions = ["What is this?", "Describe it in detail."]
    dep = build_predictor(deploy_dir=deploy_rc, positions=layout)
    assert (dep.compression.method, dep.compression.budget, dep.compression.positions) == ("rc", 6, layout)
    full = build_predictor(checkpoint, method="rc", budget=6, positions=layout)
    compact = build_predictor(checkpoint, method="rc", budget=6)
    want = [r["text"] for r in full.answer_batch(images, questions, max_new_tokens=24)]
    assert want != [r["text"] for r in compact.answer_batch(images, questions, max_new_tokens=24)]
    assert [r["text"] for r in dep.answer_batch(images, questions, max_new_tokens=24)] == want
    with pytest.raises(UserError, match="positions must be one of"):
        build_predictor(deploy_dir=deploy_rc, positions="middle")


def test_graphs_call_the_fused_ops_unless_portable(deploy_rc, checkpoint, tmp_path):
    """On a CPU the fused ops serve (AVX2 or AVX-512), an export's programs call them and its manifest
    says so; --portable traces Paddle's own ops only. Both answer like the dynamic model."""
    import re

    from paddle_rc.models import fused

    portable = str(tmp_path / "portable")
    _tool("export", ["--model", checkpoint, "--out", portable, "--method", "rc", "--budget", "6", "--portable"])
    args = ["--question", "What color is the car?", "--max-new-tokens", "8", "--json"]
    dyn = json.loads(_tool("infer", ["--model", checkpoint, "--method", "rc", "--budget", "6"] + args))

    def ops_in(directory):
        text = "".join(open(os.path.join(directory, g + ".json")).read() for g in ("vision", "llm"))
        return sorted(set(re.findall(r'"\d+\.(rc_[a-z_]+)"', text)))

    fused_cpu = fused._vector_cpu()
    want = sorted(["rc_softmax", "rc_rope", "rc_swiglu", "rc_quick_gelu"]) if fused_cpu else []
    assert ops_in(deploy_rc) == want
    assert sorted(json.load(open(os.path.join(deploy_rc, "manifest.json")))["custom_ops"]) == want
    assert ops_in(portable) == [] and json.load(open(os.path.join(portable, "manifest.json")))["custom_ops"] == []
    for d in (deploy_rc, portable):
        dep = json.loads(_tool("infer", ["--deploy", d] + args))
        assert dep["answer"] == dyn["answer"] and dep["stage_counts"] == dyn["stage_counts"], d
