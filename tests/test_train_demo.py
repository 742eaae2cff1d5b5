"""The demo model's training: the loss falls, an interrupted run resumes to the same result, and the
shipped model is as accurate as its model card says."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

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


def test_head_groups_and_count_sink_train_and_probe_the_reply(tmp_path):
    """The opt-in stage-2 mechanisms (recipe head_groups, count_sink) run end to end: the loss falls, the
    reply position's count / left-above heads exist and their held-out probes are recorded."""
    from paddle_rc.train.trainer import DemoTrainer

    trainer = DemoTrainer(str(tmp_path / "run"), _recipe(stage1_steps=2, stage2_steps=12, stage2_lr=3e-3,
                                                         head_groups=2, count_sink=1, question_start=0),
                          show_progress=False)
    state = trainer.run()
    losses = state["losses"]["llm"]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    assert set(trainer.query_heads[0].heads.keys()) == {"colour", "shape", "word", "count", "xrel", "yrel"}
    assert {"reply_count", "reply_xrel", "reply_yrel"} <= set(state["probe"])
    with pytest.raises(Exception, match="head_groups=3 does not divide"):
        DemoTrainer(str(tmp_path / "bad"), _recipe(head_groups=3), show_progress=False).run()


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


def test_spatial_targets_give_each_head_group_one_object_and_count_targets_one_token_per_object(tmp_path):
    """grounding_targets with 2 head groups and count_sink: a spatial question's first-named object goes to
    group 0 and the other to group 1; a count question marks the centre patch of each counted object (k
    tokens) and asks k/(k+1) of the mass there and the rest of the row's first token (BOS); everything else
    marks all target objects' tokens in both groups."""
    from paddle_rc.train import batches as bt

    items, tok, ids, mask, labels, marks = _marked_splice(tmp_path, 40)
    got = bt.grounding_targets(items, labels, ids, mask, -200, groups=2, count_sink=True)
    seen = set()
    for b, it in enumerate(items):
        def patches(g):
            return sorted(-int(v) - 1 - 1000 * b for v in marks[b, got.target[b, g] > 0])

        assert marks[b, got.sink[b]] == tok.bos_token_id
        if it.qtype == "spatial":
            for g, j in ((0, it.target[0]), (1, it.target[1])):
                assert patches(g) == np.nonzero(labels.owner[b] == j)[0].tolist(), (b, it.question)
            assert got.share[b] == 1.0
        elif it.qtype == "count":
            cells = patches(0)
            assert len(cells) == len(it.target) and patches(1) == cells, (b, it.question)
            assert sorted(int(labels.owner[b, c]) for c in cells) == sorted(it.target)
            assert all(labels.centre[b, c] for c in cells)
            np.testing.assert_allclose(got.share[b], len(it.target) / (len(it.target) + 1))
        else:
            want = np.nonzero(np.isin(labels.owner[b], it.target))[0].tolist() if it.target else []
            assert patches(0) == want and patches(1) == want and got.share[b] == 1.0
        seen.add((it.qtype, bool(it.target)))
    assert {("spatial", True), ("count", True), ("count", False), ("colour", True)} <= seen
    # one group and no sink: the union for everyone, as visual_targets
    one = bt.grounding_targets(items, labels, ids, mask, -200)
    np.testing.assert_array_equal(one.target[:, 0], bt.visual_targets(items, labels, ids, mask, -200))
    assert (one.share == 1).all()


def test_question_targets_split_a_spatial_question_between_head_groups(tmp_path):
    from paddle_rc.train import batches as bt

    items, tok, ids, mask, labels, marks = _marked_splice(tmp_path, 30)
    got = bt.question_targets(ids, mask, labels.owner.shape[1], -200, tok, groups=2)
    for b, it in enumerate(items):
        words = [tok.decode(marks[b, got[b, g] > 0].tolist()).strip() for g in (0, 1)]
        if it.qtype == "spatial":
            cut = it.question.index(" small", it.question.index("small") + 1)
            assert words == [it.question[:cut], it.question[cut + 1:]], (b, words)
        else:
            assert words == [it.question, it.question], (b, words)
    assert any(it.qtype == "spatial" for it in items)


def test_query_labels_are_the_asked_objects_attributes():
    """target_attributes: per question, the mean one-hot of its target objects' colour, shape and word, in
    the classes of the patch heads; questions without a target object get an all-zero row."""
    from paddle_rc.synth import SHAPES, WORDS
    from paddle_rc.train import batches as bt

    items = bt.draw_items(5, "llm", 0, 24)
    got = bt.target_attributes(items, bt.patch_labels(items, 224, 14), kinds=tuple(bt.query_label_sizes()))
    colours = bt.colour_classes()
    for b, it in enumerate(items):
        assert got["count"][b].tolist() == ([float(k == len(it.target)) for k in range(5)] if it.qtype == "count"
                                            else [0.0] * 5)
        if it.qtype == "spatial":
            a, o = (it.objects[j].bbox for j in it.target)
            assert got["xrel"][b].argmax() == (0 if (a[0] + a[2]) / 2 < (o[0] + o[2]) / 2 else 1)
            assert got["yrel"][b].argmax() == (0 if (a[1] + a[3]) / 2 < (o[1] + o[3]) / 2 else 1)
        else:
            assert got["xrel"][b].sum() == 0 and got["yrel"][b].sum() == 0
    assert {"count", "spatial"} <= {it.qtype for it in items}
    assert {it.qtype for it in items if it.target} >= {"colour", "shape", "word", "count"}
    assert any(not it.target for it in items)
    for b, it in enumerate(items):
        for k in ("colour", "shape", "word"):
            want = np.zeros(got[k].shape[1], np.float32)
            for j in it.target:
                o = it.objects[j]
                cls = {"colour": colours.index(o.colour) + 1,
                       "shape": len(SHAPES) + 1 if o.kind == "sign" else SHAPES.index(o.shape) + 1,
                       "word": WORDS.index(o.word) + 1 if o.word else 0}[k]
                want[cls] += 1.0 / len(it.target)
            np.testing.assert_allclose(got[k][b], want, atol=1e-6, err_msg=f"{b} {k} {it.question}")


def test_object_pooling_averages_each_small_objects_own_patches():
    """object_pooling: one row per small object with patches of its own (the large distractors left out),
    averaging exactly those patches of the flattened batch, labelled with the object's attributes."""
    from paddle_rc.synth import SHAPES, WORDS
    from paddle_rc.train import batches as bt

    items = bt.draw_items(3, "clip", 0, 6)
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
            assert targets["shape"][s] == (len(SHAPES) + 1 if o.kind == "sign" else SHAPES.index(o.shape) + 1)
            assert targets["word"][s] == (WORDS.index(o.word) + 1 if o.word else 0)
            s += 1
    assert s == len(pool) and (targets["word"] > 0).sum() >= len(items) // 2
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
    causal, left-padded batch, and the loss the mass formula, for one group of heads and for two groups
    with a sink share."""
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

    # two head groups with their own tokens, and a share of the mass asked of each row's sink position;
    # row 2 has no target but a share below 1 (a count of zero), so it counts now
    grouped = (rng.random([B, 2, L]) < 0.4).astype(np.float32)
    grouped[2] = 0.0
    share, sink = np.array([1.0, 2 / 3, 0.0], np.float32), np.array([0, 2, 1])
    loss = attention_target_loss(rows, paddle.to_tensor(grouped), paddle.to_tensor(share), paddle.to_tensor(sink))
    want = []
    for b in range(B):
        for g in range(2):
            p = probs[b, 2 * g:2 * g + 2, query[b]]  # [2 heads, L]
            on = (p * grouped[b, g]).sum(-1).mean()
            want.append(-share[b] * np.log(on + 1e-6) - (1 - share[b]) * np.log(p[:, sink[b]].mean() + 1e-6))
    np.testing.assert_allclose(float(loss), np.mean(want), rtol=1e-5)


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
    # a spatial question's two objects apart: together they are (about) what the asked mass counts
    sp = got["spatial"]
    both = np.array(sp["first_object_mass"]) + np.array(sp["second_object_mass"])
    np.testing.assert_allclose(both, np.array(sp["target_mass"]), atol=2e-3)
    assert min(both[1]) > 0.3


def test_many_label_counts_the_scenes_small_shapes_of_each_patchs_shape():
    """patch_labels' "many": on every patch of a small shape, how many small shapes of that shape the scene
    holds (the count question's answer, capped past MAX_COUNT); 0 on the background, large objects and
    signs. Recomputed here from the scene's objects, not from the labels' own bookkeeping."""
    from paddle_rc.synth.vocab import MAX_COUNT
    from paddle_rc.train import batches as bt

    items = bt.draw_items(5, "clip", 0, 24)
    labels = bt.patch_labels(items, 224, 14)
    seen = set()
    for b, it in enumerate(items):
        for j, obj in enumerate(it.objects):
            cells = labels.owner[b] == j
            if obj.kind == "shape" and obj.size == "small":
                k = sum(o.kind == "shape" and o.size == "small" and o.shape == obj.shape for o in it.objects)
                want = min(k, MAX_COUNT + 1)
                seen.add(want)
            else:
                want = 0
            assert (labels.many[b, cells] == want).all(), (b, j, obj)
        assert (labels.many[b, labels.owner[b] < 0] == 0).all()
    assert {1, 2} <= seen
    assert bt.label_sizes(16, many=True)["many"] == bt.MANY_CLASSES == MAX_COUNT + 2
    assert "many" not in bt.label_sizes(16)


def test_census_label_marks_each_small_shape_once_so_its_image_mean_counts():
    """patch_labels' "census": the small shape's class on the one patch holding its centre, 0 everywhere
    else; so the histogram of the census over the image is the scene's count of each small shape (the count
    question's answer), whatever the shapes' sizes. Recomputed from the scene's objects."""
    from paddle_rc.synth.vocab import SHAPES
    from paddle_rc.train import batches as bt

    items = bt.draw_items(6, "clip", 0, 24)
    labels = bt.patch_labels(items, 224, 14)
    for b, it in enumerate(items):
        small = [o for o in it.objects if o.kind == "shape" and o.size == "small"]
        hist = np.bincount(labels.census[b], minlength=len(SHAPES) + 1)
        assert hist[1:].tolist() == [sum(o.shape == s for o in small) for s in SHAPES], (b, it.objects)
        on = np.nonzero(labels.census[b])[0]
        assert all(labels.centre[b, c] == 1 and it.objects[labels.owner[b, c]].size == "small" for c in on)
    assert bt.label_sizes(16, census=True)["census"] == len(SHAPES) + 1
    assert "census" not in bt.label_sizes(16)


def test_count_uniform_targets_spread_a_count_questions_attention_over_every_visual_token(tmp_path):
    from paddle_rc.train import batches as bt

    items, tok, ids, mask, labels, marks = _marked_splice(tmp_path, 40)
    got = bt.grounding_targets(items, labels, ids, mask, -200, groups=2, count_uniform=True)
    plain = bt.grounding_targets(items, labels, ids, mask, -200, groups=2)
    n = labels.owner.shape[1]
    for b, it in enumerate(items):
        if it.qtype == "count":
            assert got.uniform[b]
            for g in (0, 1):
                cells = sorted(-int(v) - 1 - 1000 * b for v in marks[b, got.target[b, g] > 0])
                assert cells == list(range(n)), (b, it.question)
        else:
            assert not got.uniform[b]
            np.testing.assert_array_equal(got.target[b], plain.target[b])
    assert any(it.qtype == "count" and not it.target for it in items)  # zero counts read the image too


def test_attention_target_loss_asks_an_even_spread_of_uniform_rows():
    """A uniform row's loss is each head's cross-entropy to the even spread over its target minus
    log|target|: 0 exactly when a head reads every target token alike and nothing else, the mass formula
    for the other rows."""
    import paddle

    from paddle_rc.train.losses import attention_target_loss

    rng = np.random.default_rng(1)
    B, H, L = 3, 4, 10
    probs = rng.random([B, H, L]).astype(np.float32) + 0.05
    probs[1] = 0.0
    probs[1, :, 2:8] = 1 / 6  # even over the target
    probs /= probs.sum(-1, keepdims=True)
    target = np.zeros([B, L], np.float32)
    target[:, 2:8] = 1.0
    uniform = np.array([True, True, False])
    t = {k: paddle.to_tensor(v) for k, v in dict(p=probs, t=target, u=uniform).items()}
    loss = attention_target_loss(t["p"], t["t"], uniform=t["u"])
    ce0 = (-(np.log(probs[0, :, 2:8] + 1e-9)).mean(-1) - np.log(6)).mean()
    mass2 = -np.log(probs[2, :, 2:8].sum(-1).mean() + 1e-6)
    np.testing.assert_allclose(float(loss), (ce0 + 0.0 + mass2) / 3, rtol=1e-5, atol=1e-6)
    assert ce0 > 0.05
    one = attention_target_loss(t["p"][1:2], t["t"][1:2], uniform=t["u"][1:2])
    assert abs(float(one)) < 1e-5


def test_binding_labels_and_object_word_targets_bind_each_named_word_to_its_object(tmp_path):
    """binding_labels: the colour and shape the question names for its first object (a) and, in a spatial
    question, its second (b), 0 where none is named; question_targets with object_words gives each head
    group of a spatial question exactly its object's colour and shape tokens and the relation word; a count
    question's plural names its shape; the relation is named in spatial questions only."""
    from paddle_rc.synth import SHAPES
    from paddle_rc.synth.vocab import RELATIONS
    from paddle_rc.train import batches as bt

    items, tok, ids, mask, labels, marks = _marked_splice(tmp_path, 40)
    got = bt.binding_labels(items)
    colours = bt.colour_classes()
    asked = bt.question_targets(ids, mask, labels.owner.shape[1], -200, tok, groups=2, object_words=True)
    seen = set()
    for b, it in enumerate(items):
        a = (colours[got["colour_a"][b].argmax() - 1] if got["colour_a"][b].argmax() else None,
             SHAPES[got["shape_a"][b].argmax() - 1] if got["shape_a"][b].argmax() else None)
        second = (got["colour_b"][b].argmax(), got["shape_b"][b].argmax())
        if it.qtype == "spatial":
            ca, sa = (it.objects[it.target[0]].colour, it.objects[it.target[0]].shape)
            cb, sb = (it.objects[it.target[1]].colour, it.objects[it.target[1]].shape)
            assert a == (ca, sa) and second == (colours.index(cb) + 1, SHAPES.index(sb) + 1), (b, it.question)
            rel = next(w for w in it.question.split() if w in RELATIONS)
            assert RELATIONS[got["relation"][b].argmax() - 1] == rel
            # each run of adjacent marked positions decodes to one word (a word may span several tokens)
            runs = [np.split(np.nonzero(asked[b, g] > 0)[0], np.nonzero(np.diff(np.nonzero(asked[b, g] > 0)[0]) > 1)[0] + 1)
                    for g in (0, 1)]
            words = [" ".join(tok.decode(marks[b, r].tolist()) for r in rs).split() for rs in runs]
            assert words == [[ca, sa, rel], [rel, cb, sb]], (b, words)
        else:
            assert second == (0, 0) and got["relation"][b].argmax() == 0
            if it.qtype == "count":
                assert a == (None, it.question.split()[3][:-1])
            if it.qtype == "colour":
                assert a == (None, it.question.split()[-1].rstrip("?"))
            if it.qtype == "exist":
                assert a == tuple(it.question.split()[-2:])[0:1] + (it.question.split()[-1].rstrip("?"),)
        seen.add(it.qtype)
    assert {"spatial", "colour", "exist", "count"} <= seen
    for k in bt.BINDING_KINDS:
        np.testing.assert_array_equal(got[k].sum(1), 1.0)


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
    assert set(answers) == {"yes", "no"}
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
