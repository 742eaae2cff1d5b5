"""The LLaVA wrapper on a tiny random model: splice positions, KV cache, batching, errors."""
import numpy as np
import paddle
import pytest

from paddle_rc.data.padding import left_pad

IMG = -200


def _prompt(rng, before, after, vocab=96):
    ids = list(rng.integers(3, vocab, size=before)) + [IMG] + list(rng.integers(3, vocab, size=after))
    return [1] + ids


def _batch(rows, pad=0):
    ids, mask = left_pad(rows, pad)
    return paddle.to_tensor(ids), paddle.to_tensor(mask)


def _pixels(rng, n, size=56):
    return paddle.to_tensor(rng.standard_normal((n, 3, size, size)).astype("float32"))


def test_logits_shape_and_visual_positions(tiny_model, rng):
    ids = _prompt(rng, 4, 3)
    px = _pixels(rng, 1)
    with paddle.no_grad():
        out = tiny_model(paddle.to_tensor([ids]), px)
    n = tiny_model.config.vision.num_patches
    assert out.logits.shape == [1, len(ids) - 1 + n, 96]
    # The positions after the image equal a run where the visual tokens are given explicitly.
    with paddle.no_grad():
        vis = tiny_model.encode_images(px)
        emb_text = tiny_model.language_model.embed_tokens(paddle.to_tensor([[i for i in ids if i != IMG]]))
        p = ids.index(IMG)
        manual = paddle.concat([emb_text[:, :p], vis.embeds, emb_text[:, p:]], axis=1)
        mask = paddle.ones([1, manual.shape[1]], dtype="int64")
        from paddle_rc.models.llama import positions_from_mask

        hidden, _, _ = tiny_model.language_model(manual, mask, positions_from_mask(mask))
        ref = tiny_model.lm_head(hidden)
    np.testing.assert_allclose(out.logits.numpy(), ref.numpy(), atol=1e-5)


def test_kv_cache_decoding_equals_full_recomputation(tiny_model, rng):
    ids = _prompt(rng, 5, 4)
    px = _pixels(rng, 1)
    gen = tiny_model.generate(paddle.to_tensor([ids]), px, max_new_tokens=8, eos_token_id=-1)
    tokens = gen.tokens[0].tolist()
    assert len(tokens) == 8
    full = ids + tokens
    with paddle.no_grad():
        logits = tiny_model(paddle.to_tensor([full]), px).logits.numpy()[0]
    n = tiny_model.config.vision.num_patches
    # Logits at position j predict token j+1; the prompt occupies len(ids)-1+n positions.
    start = len(ids) - 1 + n - 1
    recomputed = logits[start:start + len(tokens)].argmax(-1).tolist()
    assert recomputed == tokens


def test_batch_of_different_lengths_equals_each_alone(tiny_model, rng):
    rows = [_prompt(rng, 2, 3), _prompt(rng, 7, 6)]
    px = _pixels(rng, 2)
    ids, mask = _batch(rows)
    with paddle.no_grad():
        batched = tiny_model(ids, px, mask).logits.numpy()
    gen = tiny_model.generate(ids, px, mask, max_new_tokens=6, eos_token_id=-1)
    for b, r in enumerate(rows):
        with paddle.no_grad():
            alone = tiny_model(paddle.to_tensor([r]), px[b:b + 1]).logits.numpy()[0]
        n = alone.shape[0]
        np.testing.assert_allclose(batched[b, -n:], alone, atol=1e-4)
        single = tiny_model.generate(paddle.to_tensor([r]), px[b:b + 1], max_new_tokens=6, eos_token_id=-1)
        assert gen.tokens[b].tolist() == single.tokens[0].tolist()


def test_generation_stops_at_eos_and_pads(tiny_model, rng):
    ids = _prompt(rng, 3, 2)
    px = _pixels(rng, 1)
    free = tiny_model.generate(paddle.to_tensor([ids]), px, max_new_tokens=6, eos_token_id=-1).tokens[0]
    eos = int(free[2])
    stopped = tiny_model.generate(paddle.to_tensor([ids]), px, max_new_tokens=6, eos_token_id=eos).tokens[0]
    first = free.tolist().index(eos)
    assert stopped.tolist() == free.tolist()[: first + 1]


def test_sampling_is_seeded_and_top_p_restricts(tiny_model, rng):
    ids = paddle.to_tensor([_prompt(rng, 3, 2)])
    px = _pixels(rng, 1)
    a = tiny_model.generate(ids, px, max_new_tokens=5, temperature=1.0, top_p=0.9, seed=3, eos_token_id=-1)
    b = tiny_model.generate(ids, px, max_new_tokens=5, temperature=1.0, top_p=0.9, seed=3, eos_token_id=-1)
    assert a.tokens.tolist() == b.tokens.tolist()
    from paddle_rc.models.generation import sample_next

    logits = np.array([[5.0, 4.0, 0.0, -1.0, -2.0]])
    picks = {int(sample_next(logits, 1.0, 0.5, [np.random.default_rng(s)])[0]) for s in range(50)}
    assert picks == {0}  # token 0 alone holds > 50% of the mass
    picks = {int(sample_next(logits, 1.0, 0.9, [np.random.default_rng(s)])[0]) for s in range(200)}
    assert picks == {0, 1}


def test_placeholder_must_appear_once(tiny_model, rng):
    px = _pixels(rng, 1)
    with pytest.raises(ValueError, match="exactly once"):
        tiny_model(paddle.to_tensor([[1, 5, 6]]), px)
    with pytest.raises(ValueError, match="exactly once"):
        tiny_model(paddle.to_tensor([[1, IMG, 5, IMG]]), px)


def test_zero_visual_tokens_splice_to_the_text_alone(tiny_model, rng):
    from paddle_rc.models.llava import VisualTokens

    ids = _prompt(rng, 3, 2)
    empty = VisualTokens(paddle.zeros([1, 0, 64]), np.zeros([1], dtype=np.int64), 4)
    embeds, mask, _ = tiny_model.splice(paddle.to_tensor([ids]), None, empty)
    text_only = [i for i in ids if i != IMG]
    ref = tiny_model.language_model.embed_tokens(paddle.to_tensor([text_only]))
    assert embeds.shape == [1, len(text_only), 64]
    np.testing.assert_array_equal(embeds.numpy(), ref.numpy())


@pytest.mark.parametrize("method", ["rc", "rc-reference", "prumerge+"])
def test_compressed_batch_equals_each_alone(tiny_model, method):
    rng = np.random.default_rng(5)
    rows = [_prompt(rng, 2, 3), _prompt(rng, 6, 2), _prompt(rng, 4, 4)]
    px = _pixels(rng, 3)
    clip_ids = paddle.to_tensor(rng.integers(0, 78, size=(3, 6)).astype("int64"))
    has_text = paddle.to_tensor([True, False, True])
    tiny_model.set_compression(method)
    text = tiny_model.get_text_features(clip_ids)
    ids, mask = _batch(rows)
    with paddle.no_grad():
        out = tiny_model(ids, px, mask, text, has_text)
    lengths = out.visual.lengths.tolist()
    assert len(set(lengths)) > 1, f"the inputs should give different token counts, got {lengths}"
    for b, r in enumerate(rows):
        with paddle.no_grad():
            alone = tiny_model(paddle.to_tensor([r]), px[b:b + 1], None, text[b:b + 1], has_text[b:b + 1])
        assert alone.visual.lengths.tolist() == [lengths[b]]
        n = alone.logits.shape[1]
        np.testing.assert_allclose(out.logits.numpy()[b, -n:], alone.logits.numpy()[0], atol=1e-4)
        t = lengths[b]
        np.testing.assert_allclose(out.visual.embeds.numpy()[b, :t], alone.visual.embeds.numpy()[0, :t], atol=1e-5)


def test_left_pad_right_aligns_rows():
    ids, mask = left_pad([[5, 6, 7], [8], []], pad=-1)
    assert ids.tolist() == [[5, 6, 7], [-1, -1, 8], [-1, -1, -1]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert ids.dtype == mask.dtype == np.int64


def test_segment_text_features_average_the_unit_segment_embeddings(tiny_model):
    """CDPruner's text mode: a question longer than the tower is cut into zero-padded segments;
    t is the mean of the unit-length segment embeddings; zero segments of a shorter row are padding."""
    rng = np.random.default_rng(3)
    L = tiny_model.config.text.max_position_embeddings
    long_q = rng.integers(1, 78, size=L + 30)
    short_q = rng.integers(1, 78, size=12)
    ids = np.zeros((2, 2 * L), dtype=np.int64)
    ids[0, :len(long_q)] = long_q
    ids[1, :len(short_q)] = short_q
    with paddle.no_grad():
        got = tiny_model.segment_text_features(paddle.to_tensor(ids)).numpy()
        seg = tiny_model.get_text_features(paddle.to_tensor(ids.reshape(4, L))).numpy()
    seg = seg / np.linalg.norm(seg, axis=-1, keepdims=True)
    np.testing.assert_allclose(got[0], seg[:2].mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(got[1], seg[2], atol=1e-5)


@pytest.mark.parametrize("method", ["trim", "cdpruner", "rc"])
def test_methods_get_the_inputs_they_declare(tiny_model, method):
    """P = visual_projection(post_layernorm(F)) for TRIM/CDPruner (and rc with p_source
    feature-postln); CDPruner works on projected features and is not projected twice."""
    from paddle_rc.compression import compress

    rng = np.random.default_rng(8)
    px = _pixels(rng, 2)
    t = paddle.to_tensor(rng.standard_normal((2, 16)).astype("float32"))
    opts = {"p_source": "feature-postln"} if method == "rc" else {}
    tiny_model.set_compression(method, 5, **opts)
    with paddle.no_grad():
        vis = tiny_model.encode_images(px, t, paddle.to_tensor([True, True]))
        tower = tiny_model.vision_tower
        feats = tower(px, tiny_model.config.vision_feature_layer, need_qkp=True)
        P = tiny_model.visual_projection(tower.post_layernorm(feats.F))
        F = tiny_model.projector(feats.F) if method == "cdpruner" else feats.F
        res = compress(method, F, feats.Q, feats.K, P=P, t=t, budget=5, **opts)
        want = res.tokens if method == "cdpruner" else tiny_model.projector(res.tokens)
    np.testing.assert_allclose(vis.embeds.numpy(), want.numpy(), atol=1e-5)
    assert vis.result.samples == res.samples


def test_full_positions_give_the_text_its_uncompressed_positions(tiny_model):
    """positions=full: each row's text keeps the position ids it has when all N visual tokens are
    spliced in, the kept visual tokens stay consecutive from the image's start; compact numbers the
    sequence as it is. Left padding and per-row token counts differ across the batch."""
    from paddle_rc.models.llava import VisualTokens

    rng = np.random.default_rng(11)
    rows = [_prompt(rng, 2, 3), _prompt(rng, 5, 2)]
    ids, mask = _batch(rows)
    n, width = tiny_model.config.vision.num_patches, tiny_model.config.llm.hidden_size
    embeds = paddle.to_tensor(rng.standard_normal((2, n, width)).astype("float32"))
    every = VisualTokens(embeds, np.array([n, n]), n)
    kept = VisualTokens(embeds[:, :5], np.array([3, 5]), n)

    def layout(visual, positions):
        tiny_model.set_compression("rc", positions=positions)
        e, m, pos, vis = tiny_model.splice(ids, mask, visual, with_visual_mask=True)
        return e, m.numpy().astype(bool), pos.numpy(), vis.numpy()

    try:
        _, m_all, pos_all, vis_all = layout(every, "compact")
        e_c, m_c, pos_c, vis_c = layout(kept, "compact")
        e_f, m_f, pos_f, vis_f = layout(kept, "full")
        with paddle.no_grad():
            logits = [tiny_model.language_model(e_c, paddle.to_tensor(m_c.astype("int64")), paddle.to_tensor(p))[0]
                      for p in (pos_c, pos_f)]
    finally:
        tiny_model.set_compression("none")
    np.testing.assert_array_equal(m_c, m_f)
    np.testing.assert_array_equal(vis_c, vis_f)
    np.testing.assert_array_equal(e_c.numpy(), e_f.numpy())
    for b, r in enumerate(rows):
        k, start = int(kept.lengths[b]), r.index(IMG)
        np.testing.assert_array_equal(pos_c[b][m_c[b]], np.arange(len(r) - 1 + k))
        text_all = pos_all[b][m_all[b] & ~vis_all[b]]
        np.testing.assert_array_equal(pos_f[b][m_f[b] & ~vis_f[b]], text_all)
        np.testing.assert_array_equal(pos_f[b][vis_f[b]], start + np.arange(k))
        after = len(r) - 1 - start
        assert text_all[-after:].tolist() == list(range(start + n, start + n + after))
    # the layout reaches the LLM: the last position's hidden state differs
    assert np.abs(logits[0].numpy()[:, -1] - logits[1].numpy()[:, -1]).max() > 1e-4


@pytest.mark.parametrize("method", ["rc", "pooling", "random"])
def test_source_positions_put_each_kept_token_at_its_own_patch(tiny_model, method):
    """positions=source: each visual token at the position its patch has with all N tokens (its slot's
    source patch; the extra token of merged patches at the last patch's), the text as with full; the
    same tokens and mask as compact. For `none` every layout is the same sequence."""
    from paddle_rc.positions import POSITIONS

    rng = np.random.default_rng(12)
    rows = [_prompt(rng, 2, 3), _prompt(rng, 5, 2)]
    ids, mask = _batch(rows)
    px = _pixels(rng, 2)
    t = paddle.to_tensor(rng.standard_normal((2, 16)).astype("float32"))
    n = tiny_model.config.vision.num_patches
    out = {}
    try:
        for positions in ("compact", "full", "source"):
            tiny_model.set_compression(method, 6, positions=positions)
            with paddle.no_grad():
                vis = tiny_model.encode_images(px, t, paddle.to_tensor([True, True]))
                e, m, pos, v = tiny_model.splice(ids, mask, vis, with_visual_mask=True)
            out[positions] = (e.numpy(), m.numpy().astype(bool), pos.numpy(), v.numpy(), vis)
        tiny_model.set_compression("none")
        with paddle.no_grad():
            every = tiny_model.encode_images(px)
        nones = []
        for positions in POSITIONS:
            tiny_model.compression.positions = positions
            nones.append(tiny_model.splice(ids, mask, every)[2].numpy())
    finally:
        tiny_model.set_compression("none")
    e_c, m_c, _, v_c, _ = out["compact"]
    e_s, m_s, pos_s, v_s, vis = out["source"]
    np.testing.assert_array_equal(e_c, e_s)
    np.testing.assert_array_equal(m_c, m_s)
    np.testing.assert_array_equal(v_c, v_s)
    np.testing.assert_array_equal(pos_s[~v_s], out["full"][2][~v_s])
    sources = vis.result.sources.numpy()
    assert (sources >= 0).any()
    for b, r in enumerate(rows):
        k, start = int(vis.lengths[b]), r.index(IMG)
        want = np.where(sources[b, :k] < 0, n - 1, sources[b, :k])
        np.testing.assert_array_equal(pos_s[b][v_s[b]], start + want)
    for other in nones[1:]:
        np.testing.assert_array_equal(other, nones[0])


def test_positions_setting_is_checked(tiny_model):
    from paddle_rc.errors import UserError

    with pytest.raises(UserError, match="positions must be one of compact, full, source"):
        tiny_model.set_compression("rc", positions="shifted")
    assert tiny_model.compression.positions == "compact"


def test_text_tower_is_loaded_only_when_a_method_reads_the_question():
    """build_predictor defers the CLIP text tower (0.5 GB at 7B) until a method that reads the question is
    set; then it holds exactly the checkpoint's weights."""
    from paddle_rc.demo import default_model
    from paddle_rc.models import LlavaForConditionalGeneration
    from paddle_rc.models.llava import TEXT_SIDE
    from paddle_rc.predictor import build_predictor

    directory = default_model()
    predictor = build_predictor(directory)
    model = predictor.model
    text_params = [p for k, p in model.state_dict().items() if k.startswith(TEXT_SIDE)]
    assert text_params and not any(p._is_initialized() for p in text_params)
    predictor.set_method("cls-topk", 16)  # reads the CLS attention only
    assert not any(p._is_initialized() for p in text_params)
    predictor.set_method("rc")
    assert all(p._is_initialized() for p in text_params)
    full = LlavaForConditionalGeneration.from_pretrained(directory).state_dict()
    for k, p in model.state_dict().items():
        np.testing.assert_array_equal(p.numpy(), full[k].numpy(), err_msg=k)
