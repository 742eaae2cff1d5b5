"""The demo model's training: the loss falls, an interrupted run resumes to the same result, and the
shipped model is as accurate as its model card says."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from paddle_rc.synth import QTYPES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A small, fast version of the recipe: same code paths, tiny widths, 4x4 patches.
TINY = dict(image_size=56, vision_width=32, vision_layers=2, vision_heads=2, text_width=32, text_layers=1,
            text_heads=2, projection_dim=16, llm_width=48, llm_layers=2, llm_heads=2, llm_intermediate=96,
            llm_vocab=400, clip_merges=120, stage1_batch=6, stage2_batch=6, warmup=1, checkpoint_every=2,
            eval_items=12, question_start=2)


def _recipe(**kw):
    from paddle_rc.train import Recipe

    return Recipe(**{**TINY, **kw})


def test_a_few_steps_lower_both_losses(tmp_path):
    from paddle_rc.train.trainer import DemoTrainer

    trainer = DemoTrainer(str(tmp_path / "run"), _recipe(stage1_steps=10, stage2_steps=12, stage1_lr=3e-3,
                                                         stage2_lr=3e-3), show_progress=False)
    state = trainer.run()
    for stage in ("clip", "llm"):
        losses = state["losses"][stage]
        assert len(losses) == (10 if stage == "clip" else 12)
        assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, (stage, losses)
    assert state["stage"] == "done"


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    import numpy as np

    from paddle_rc.train.trainer import DemoTrainer

    recipe = _recipe(stage1_steps=4, stage2_steps=4)
    whole = DemoTrainer(str(tmp_path / "whole"), recipe, show_progress=False)
    ref = whole.run()

    calls = {"n": 0}
    real = DemoTrainer._llm_step

    def dies_on_the_third_call(self, data):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, data)

    monkeypatch.setattr(DemoTrainer, "_llm_step", dies_on_the_third_call)
    with pytest.raises(KeyboardInterrupt):
        DemoTrainer(str(tmp_path / "cut"), recipe, show_progress=False).run()
    monkeypatch.setattr(DemoTrainer, "_llm_step", real)
    resumed_trainer = DemoTrainer(str(tmp_path / "cut"), recipe, show_progress=False)
    resumed = resumed_trainer.run()
    assert resumed["losses"] == ref["losses"]
    a, b = whole.model.state_dict(), resumed_trainer.model.state_dict()
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=1e-5, atol=1e-6, err_msg=k)


def test_the_question_loss_starts_at_question_start(tmp_path, monkeypatch):
    from paddle_rc.train.trainer import DemoTrainer

    seen = []
    real = DemoTrainer._llm_step

    def record(self, data):
        loss, parts = real(self, data)
        seen.append((data["step"], "question" in parts))
        return loss, parts

    monkeypatch.setattr(DemoTrainer, "_llm_step", record)
    DemoTrainer(str(tmp_path / "run"), _recipe(stage1_steps=1, stage2_steps=5, question_start=3),
                show_progress=False).run()
    assert seen == [(0, False), (1, False), (2, False), (3, True), (4, True)]


def test_train_demo_writes_a_checkpoint_the_tools_load(tmp_path):
    from paddle_rc.predictor import build_predictor
    from paddle_rc.train import train_demo

    out = tmp_path / "ckpt"
    log = train_demo(str(out), _recipe(stage1_steps=2, stage2_steps=2))
    for name in ("config.json", "model.safetensors", "tokenizer/tokenizer.model", "clip_tokenizer/vocab.json",
                 "MODEL_CARD.md", "train_log.json"):
        assert (out / name).is_file(), name
    assert not (out / ".train_state" / "opt.pdopt").exists()  # resume state dropped once finished
    assert log["heldout"]["questions"] == 12
    assert "Held-out accuracy" in (out / "MODEL_CARD.md").read_text()
    predictor = build_predictor(str(out), method="rc")
    from paddle_rc.demo import demo_image

    assert isinstance(predictor.answer(demo_image(), "What color is the small star?", max_new_tokens=3)["text"], str)
    # run again: finished, nothing retrained
    assert train_demo(str(out), _recipe(stage1_steps=2, stage2_steps=2)) == json.loads((out / "train_log.json").read_text())


def test_grounding_targets_sit_on_the_asked_objects_visual_tokens(tmp_path):
    """The positions visual_targets marks hold exactly the spliced visual tokens of the target objects."""
    import numpy as np
    import paddle

    from paddle_rc.data.llama_tokenizer import LlamaTokenizer
    from paddle_rc.data.tiny_tokenizers import build_tiny_sentencepiece
    from paddle_rc.models import LlavaForConditionalGeneration
    from paddle_rc.models.llava import VisualTokens
    from paddle_rc.train import batches as bt
    from tests.conftest import tiny_llava_config

    build_tiny_sentencepiece(str(tmp_path), vocab_size=400)
    tok = LlamaTokenizer.from_dir(str(tmp_path))
    items = bt.draw_items(3, "llm", 0, 6)
    ids, mask, _ = bt.answer_sequences(items, tok, "vicuna_v1", -200, np.random.default_rng(0))
    labels = bt.patch_labels(items, 112, 14)
    target = bt.visual_targets(items, labels, ids, mask, -200)
    n = labels.owner.shape[1]
    # stand-in visual tokens: token j of image b carries the value 1000*b + j in every channel
    marks = np.arange(len(items))[:, None] * 1000 + np.arange(n)[None, :]
    model = LlavaForConditionalGeneration(tiny_llava_config(vocab=tok.vocab_size))
    width = model.config.llm.hidden_size
    emb = paddle.to_tensor(np.repeat(marks[:, :, None], width, axis=2).astype("float32"))
    embeds, _, _ = model.splice(paddle.to_tensor(ids), paddle.to_tensor(mask),
                                VisualTokens(emb, np.full(len(items), n), n))
    assert target.shape[1] == embeds.shape[1]
    for b, it in enumerate(items):
        got = sorted(int(v) - 1000 * b for v in embeds.numpy()[b, target[b] > 0, 0])
        want = np.nonzero(np.isin(labels.owner[b], it.target))[0].tolist() if it.target else []
        assert got == want, (b, it.question)
    assert target.sum() > 0


def _marked_splice(tmp_path, n_items, seed=3):
    """Items with prompts, and their spliced sequences with every position marked: token id t as t, visual
    token j of image b as -(1000*b + j + 1)."""
    import paddle

    from paddle_rc.data.llama_tokenizer import LlamaTokenizer
    from paddle_rc.data.tiny_tokenizers import build_tiny_sentencepiece
    from paddle_rc.models import LlavaForConditionalGeneration
    from paddle_rc.models.llava import VisualTokens
    from paddle_rc.train import batches as bt
    from paddle_rc.train.trainer import tokenizer_corpus
    from tests.conftest import tiny_llava_config

    build_tiny_sentencepiece(str(tmp_path), vocab_size=400, corpus=tokenizer_corpus(0))
    tok = LlamaTokenizer.from_dir(str(tmp_path))
    items = bt.draw_items(seed, "llm", 0, n_items)
    ids, mask, _ = bt.answer_sequences(items, tok, "vicuna_v1", -200, np.random.default_rng(0))
    labels = bt.patch_labels(items, 112, 14)
    n = labels.owner.shape[1]
    model = LlavaForConditionalGeneration(tiny_llava_config(vocab=tok.vocab_size))
    width = model.config.llm.hidden_size
    emb = model.language_model.embed_tokens.weight
    emb.set_value(paddle.to_tensor(np.repeat(np.arange(emb.shape[0], dtype="float32")[:, None], width, axis=1)))
    marks = -(np.arange(len(items))[:, None] * 1000 + np.arange(n)[None, :] + 1)
    vis = paddle.to_tensor(np.repeat(marks[:, :, None], width, axis=2).astype("float32"))
    embeds, _, _ = model.splice(paddle.to_tensor(ids), paddle.to_tensor(mask), VisualTokens(vis, np.full(len(items), n), n))
    return items, tok, ids, mask, labels, embeds.numpy()[:, :, 0].round().astype(np.int64)


def test_question_targets_mark_exactly_the_question(tmp_path):
    from paddle_rc.train import batches as bt

    items, tok, ids, mask, labels, marks = _marked_splice(tmp_path, 30)
    got = bt.question_targets(ids, mask, labels.owner.shape[1], -200, tok)
    for b, it in enumerate(items):
        assert tok.decode(marks[b, got[b] > 0].tolist()).strip() == it.question, b
    assert {it.qtype for it in items} == set(QTYPES)


def _content(o):
    """A sign's or card's class of the "word" heads, worked out here: words first, then dot counts."""
    from paddle_rc.synth import WORDS

    return WORDS.index(o.word) + 1 if o.word else (len(WORDS) + len(o.dots) if o.kind == "card" else 0)


def _shape_class(o):
    from paddle_rc.synth import SHAPES

    return {"sign": len(SHAPES) + 1, "card": len(SHAPES) + 2}.get(o.kind) or SHAPES.index(o.shape) + 1


def test_query_labels_are_the_asked_objects_attributes():
    """target_attributes: per question, the mean one-hot of its target objects' colour, shape and word (a
    card's dot count), in the classes of the patch heads."""
    from paddle_rc.train import batches as bt

    items = bt.draw_items(5, "llm", 0, 24)
    got = bt.target_attributes(items, bt.patch_labels(items, 224, 14))
    assert set(got) == {"colour", "shape", "word"}
    colours = bt.colour_classes()
    assert {it.qtype for it in items if it.target} >= {"colour", "shape", "word", "count", "spatial"}
    for b, it in enumerate(items):
        for k in ("colour", "shape", "word"):
            want = np.zeros(got[k].shape[1], np.float32)
            for j in it.target:
                o = it.objects[j]
                cls = {"colour": colours.index(o.colour) + 1, "shape": _shape_class(o), "word": _content(o)}[k]
                want[cls] += 1.0 / len(it.target)
            np.testing.assert_allclose(got[k][b], want, atol=1e-6, err_msg=f"{b} {k} {it.question}")
        if it.qtype == "count":
            assert got["word"][b].argmax() == _content(it.objects[it.target[0]]) > 8


def test_object_pooling_averages_each_small_objects_own_patches():
    """object_pooling: one row per small object with patches of its own (the large distractors left out),
    averaging exactly those patches of the flattened batch, labelled with the object's attributes."""
    from paddle_rc.train import batches as bt

    items = bt.draw_items(3, "clip", 0, 8)
    labels = bt.patch_labels(items, 224, 14)
    pool, targets = bt.object_pooling(items, labels)
    colours, n = bt.colour_classes(), labels.owner.shape[1]
    s = 0
    for b, it in enumerate(items):
        for j, o in enumerate(it.objects):
            cells = np.nonzero(labels.owner[b] == j)[0]
            if o.size != "small" or not len(cells):
                continue
            want = np.zeros(pool.shape[1], np.float32)
            want[b * n + cells] = 1.0 / len(cells)
            np.testing.assert_allclose(pool[s], want, atol=1e-7)
            assert targets["colour"][s] == colours.index(o.colour) + 1
            assert targets["shape"][s] == _shape_class(o)
            assert targets["word"][s] == _content(o)
            s += 1
    assert s == len(pool) and (targets["word"] > 0).sum() >= len(items) // 2
    assert {o.kind for it in items for o in it.objects} == {"shape", "sign", "card"}
    assert any(o.size != "small" for it in items for o in it.objects)


@pytest.mark.parametrize("step, part, weight, steps", [
    ("_clip_step", "obj", "object_label_weight", {"stage1_steps": 2, "stage2_steps": 1}),
    ("_llm_step", "carry", "query_label_weight", {"stage1_steps": 1, "stage2_steps": 2}),
])
def test_auxiliary_label_loss_is_part_of_its_stage_only_when_asked(tmp_path, monkeypatch, step, part, weight, steps):
    """The stage-1 object heads and the stage-2 query heads add their loss with weight 1, none with weight 0."""
    from paddle_rc.train.trainer import DemoTrainer

    seen = []
    real = getattr(DemoTrainer, step)

    def record(self, data):
        loss, parts = real(self, data)
        seen.append(parts.get(part))
        return loss, parts

    monkeypatch.setattr(DemoTrainer, step, record)
    for name, w in (("on", 1.0), ("off", 0.0)):
        DemoTrainer(str(tmp_path / name), _recipe(**steps, **{weight: w}), show_progress=False).run()
    assert all(v is not None and v > 0 for v in seen[:2]) and seen[2:] == [None, None], seen


def test_cli_rejects_an_unknown_recipe_field(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train_demo.py"), "--out", str(tmp_path / "x"),
                        "--recipe", "stage9_steps=3"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: unknown recipe field(s) stage9_steps")



@pytest.mark.parametrize("args, says", [([], "error: give --out DIR"),
                                        (["--probe", "no/such/dir"], "error: model directory not found"),
                                        (["--probe", ".", "--probe-items", "3"], "error: --probe-items")])
def test_cli_usage_errors(args, says):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train_demo.py"), *args],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(says), r.stderr[-300:]

def test_shipped_model_is_as_accurate_as_its_card_says():
    from paddle_rc.demo import synthvqa_checkpoint
    from paddle_rc.train import evaluate_model

    directory = synthvqa_checkpoint()
    with open(os.path.join(directory, "train_log.json"), encoding="utf-8") as f:
        card = json.load(f)["heldout"]
    got = evaluate_model(directory, card["seed"], card["questions"], batch=32)
    assert got["accuracy"] >= card["accuracy"] - 2.0, (got, card)


def test_attention_target_loss_reads_the_layers_own_attention():
    """The grounding/question losses read one query row of the attention a decoder layer keeps
    (keep_probs); it must be the textbook attention (rebuilt here with the textbook rotary embedding) on a
    causal, left-padded batch, and the loss the mass formula."""
    import paddle

    from paddle_rc.models.config import LlamaConfig
    from paddle_rc.models.llama import LlamaModel
    from paddle_rc.train.losses import attention_target_loss, query_rows

    paddle.seed(3)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2)
    lm = LlamaModel(cfg)
    B, L = 3, 9
    mask = np.ones([B, L], np.int64)
    mask[1, :2] = 0
    x = paddle.randn([B, L, 32])
    pos = paddle.to_tensor(np.maximum(np.cumsum(mask, 1) - 1, 0))
    cos, sin = lm._rope(pos, x.dtype)
    bias = lm.attention_bias(paddle.to_tensor(mask), L, x.dtype)
    layer = lm.layers[0]
    attn = layer.self_attn
    attn.keep_probs = True
    layer(x, cos, sin, bias)
    query = np.array([8, 6, 4])
    rows = query_rows(attn.probs, paddle.to_tensor(query))

    # the reference: the layer's full attention probabilities, rebuilt with the textbook rotary embedding
    H, d = attn.num_heads, attn.head_dim
    h = layer.input_layernorm(x)
    freqs = pos.astype("float32").unsqueeze(-1) * lm.inv_freq
    cos_t = paddle.concat([freqs, freqs], axis=-1).cos().unsqueeze(1)
    sin_t = paddle.concat([freqs, freqs], axis=-1).sin().unsqueeze(1)

    def rotate_half(t):
        return paddle.concat([-t[..., d // 2:], t[..., :d // 2]], axis=-1)

    q = attn.q_proj(h).reshape([B, L, H, d]).transpose([0, 2, 1, 3])
    k = attn.k_proj(h).reshape([B, L, 2, d]).transpose([0, 2, 1, 3])
    q = q * cos_t + rotate_half(q) * sin_t
    k = attn._repeat_kv(k * cos_t + rotate_half(k) * sin_t)
    probs = paddle.nn.functional.softmax(paddle.matmul(q * d ** -0.5, k, transpose_y=True) + bias, axis=-1).numpy()
    np.testing.assert_allclose(rows.numpy(), probs[np.arange(B), :, query], atol=1e-6)

    rng = np.random.default_rng(0)
    target = (rng.random([B, L]) < 0.4).astype(np.float32)
    target[:, 0] = 1.0
    target[2] = 0.0  # a row without a target is left out
    loss = attention_target_loss(rows, paddle.to_tensor(target))
    mass = [(probs[b, :, query[b]] * target[b]).sum(-1).mean() for b in (0, 1)]
    np.testing.assert_allclose(float(loss), -np.mean(np.log(np.array(mass) + 1e-6)), rtol=1e-5)


def test_ridge_probe_reads_a_linear_code_and_not_noise():
    from paddle_rc.train.probe import ridge_probe_accuracy

    rng = np.random.default_rng(0)
    labels = rng.choice(["red", "blue", "cat", "3"], 400)
    code = {c: rng.normal(size=24) for c in set(labels)}
    x = np.stack([code[c] for c in labels]) + 0.3 * rng.normal(size=(400, 24))
    assert ridge_probe_accuracy(x[:300], labels[:300], x[300:], labels[300:]).mean() == 1.0
    noise = rng.normal(size=(400, 24))
    assert ridge_probe_accuracy(noise[:300], labels[:300], noise[300:], labels[300:]).mean() < 0.45


def test_reply_probe_of_the_shipped_model_finds_the_asked_colour():
    """The diagnosis the query-label loss came from, on the shipped model: its reply position attends to the
    sign for word questions and its final state tells the asked colour (the earlier checkpoint's did not)."""
    from paddle_rc.demo import synthvqa_checkpoint
    from paddle_rc.train.probe import reply_probe

    got = reply_probe(synthvqa_checkpoint(), seed=4242, n=192)["by_type"]
    assert set(got) == {"colour", "shape", "word", "count", "exist", "spatial"}
    for t, v in got.items():
        assert len(v["probe_after_layer"]) == 4 and all(0.0 <= m <= 1.0 for row in v["target_mass"] for m in row), t
    assert min(got["word"]["target_mass"][1]) > 0.8
    assert got["colour"]["probe_after_layer"][-1] >= 80.0, got["colour"]
    assert got["colour"]["probe_after_layer"][0] <= 40.0, got["colour"]  # before any layer: the question only
    assert min(got["count"]["target_mass"][1]) > 0.8  # a count question's reply reads the card


def test_type_mix_draws_the_weighted_types_from_the_same_stream():
    """recipe type_mix: stage 2's items come from the balanced stream, each type's k-th item in turn,
    with the types drawn by weight; no mix gives the balanced stream itself."""
    from paddle_rc.synth import QTYPES, make_item
    from paddle_rc.synth.items import index_of_type
    from paddle_rc.train import batches as bt

    s = bt.stream_seed(4, "llm")
    for t in QTYPES:
        idx = [index_of_type(s, t, k) for k in range(12)]
        assert len(set(idx)) == 12 and all(k * len(QTYPES) <= i < (k + 1) * len(QTYPES) for k, i in enumerate(idx))
        assert all(make_item(s, i).qtype == t for i in idx[:3])
    plain = bt.draw_items(4, "llm", 2, 6)
    assert [it.id for it in bt.draw_items(4, "llm", 2, 6, {})] == [it.id for it in plain]
    only = [bt.draw_items(4, "llm", step, 6, {t: 0 for t in QTYPES if t != "spatial"}) for step in range(3)]
    assert {it.qtype for batch in only for it in batch} == {"spatial"}
    ids = [it.id for batch in only for it in batch]
    assert len(set(ids)) == len(ids)  # nothing repeats across positions and steps
    answers = [it.answer for batch in only for it in batch]
    assert set(answers) == {"left", "right", "top", "bottom"}
    # weights 3:1 between count and word, the others off: about 3/4 count over 40 items
    mixed = [it.qtype for step in range(5) for it in bt.draw_items(4, "llm", step, 8, {
        **{t: 0 for t in QTYPES}, "count": 3, "word": 1})]
    assert set(mixed) == {"count", "word"} and 22 <= mixed.count("count") <= 38


@pytest.mark.parametrize("mix, message", [
    ("{spatial: 2, size: 1}", "unknown question type(s) size"),
    ("{spatial: -1}", "weights must be numbers >= 0"),
    ("{colour: 0, shape: 0, word: 0, count: 0, exist: 0, spatial: 0}", "every weight is 0"),
    ("spatial", "must be a mapping"),
])
def test_train_demo_rejects_a_bad_type_mix(tmp_path, mix, message):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train_demo.py"), "--out", str(tmp_path / "r"),
                        "--recipe", f"type_mix={mix}"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error:") and message in r.stderr
    assert not os.path.exists(tmp_path / "r")
