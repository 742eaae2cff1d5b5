"""One predictor interface over both backends: layering, the batched call, inputs it accepts."""
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from paddle_rc.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _imported_after(module: str) -> set:
    code = f"import sys, {module}; print(' '.join(m for m in sys.modules if m.startswith('paddle_rc')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    return set(out.stdout.split())


def test_layers_read_one_way():
    """The pipeline knows no backend, the deployed backend no pipeline; the predictor module sits above."""
    assert not {"paddle_rc.export.runner", "paddle_rc.predictor"} & _imported_after("paddle_rc.pipeline")
    assert not {"paddle_rc.pipeline", "paddle_rc.predictor"} & _imported_after("paddle_rc.export.runner")


@pytest.fixture(scope="module")
def pred(random_model):
    """The random 576-patch model (tests/random_model.py): the real geometry, and no preferences, so
    answers are long and vary with the sampling seed."""
    from paddle_rc.predictor import build_predictor

    return build_predictor(random_model)


def _images():
    from paddle_rc.demo import demo_image

    rng = np.random.default_rng(0)
    return [demo_image(), Image.fromarray(rng.integers(0, 255, (90, 200, 3), dtype=np.uint8)),
            demo_image().rotate(90).resize((120, 300)), demo_image().convert("L")]


QUESTIONS = ["What is this?", "Describe the picture.", "What color is the car?", ""]


@pytest.mark.parametrize("method,budget", [("rc", None), ("prumerge+", None), ("cls-topk", 12)])
def test_batch_answers_equal_one_at_a_time(pred, method, budget):
    pred.set_method(method, budget)
    images = _images()
    batch = pred.answer_batch(images, QUESTIONS, max_new_tokens=12)
    single = [pred.answer(im, q, max_new_tokens=12) for im, q in zip(images, QUESTIONS)]
    for b, s in zip(batch, single):
        for key in ("text", "visual_tokens", "stage_counts", "new_tokens", "prompt", "question"):
            assert b[key] == s[key], key
    if budget is None:  # adaptive methods: the items of one batch keep different numbers of tokens
        assert len({b["visual_tokens"] for b in batch}) > 1
    assert batch[0]["timings"]["batch_size"] == 4 and single[0]["timings"]["batch_size"] == 1


def test_sampled_batch_equals_one_at_a_time_with_the_same_seeds(pred):
    pred.set_method("rc")
    images = _images()[:3]
    kw = dict(max_new_tokens=10, temperature=1.0, top_p=0.9)
    batch = pred.answer_batch(images, QUESTIONS[:3], seed=[5, 6, 7], **kw)
    single = [pred.answer(im, q, seed=s, **kw) for im, q, s in zip(images, QUESTIONS[:3], [5, 6, 7])]
    assert [b["text"] for b in batch] == [s["text"] for s in single]
    assert len({b["text"] for b in pred.answer_batch(images[:1] * 3, ["Hi"] * 3, seed=[1, 2, 3], **kw)}) > 1


def test_answer_takes_paths_bytes_pil_and_arrays(pred, tmp_path):
    pred.set_method("none")
    img = _images()[1]
    path = tmp_path / "x.png"
    img.save(path)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    answers = {pred.answer(src, "What?", max_new_tokens=6)["text"]
               for src in (img, str(path), path, buf.getvalue(), np.asarray(img))}
    assert len(answers) == 1
    with pytest.raises(UserError, match="image not found"):
        pred.answer(str(tmp_path / "missing.png"), "What?")
    with pytest.raises(UserError, match="cannot read image"):
        pred.answer(b"not an image", "What?")


def test_build_predictor_argument_checks(tmp_path):
    from paddle_rc.predictor import build_predictor

    with pytest.raises(UserError, match="needs a method"):
        build_predictor(budget=64)
    with pytest.raises(UserError, match="not both"):
        build_predictor(str(tmp_path), str(tmp_path))
    with pytest.raises(UserError, match="not found"):
        build_predictor(str(tmp_path / "nope"))


def test_without_a_model_the_predictor_runs_the_built_in_trained_model(pred):
    from paddle_rc.demo import default_model, demo_image, demo_question
    from paddle_rc.predictor import build_predictor

    default = build_predictor(method="rc")
    assert default.is_demo and default.model_id == os.path.basename(default_model())
    assert default.config.source == "synthvqa-demo"
    out = default.answer(demo_image(), demo_question(), max_new_tokens=4)
    assert out["visual_tokens_before"] == (default.config.vision.image_size // default.config.vision.patch_size) ** 2
    assert not pred.is_demo  # an explicit model carries no demo note


def test_rows_joining_and_leaving_a_running_batch_decode_as_alone(pred):
    """The server's continuous batching: a sequence that joins mid-way (its cache left-padded to the
    running batch's length) and one that leaves early give the tokens they give alone."""
    from paddle_rc.models.generation import sample_next

    pred.set_method("rc")
    images, questions = _images(), QUESTIONS

    def greedy(batch, steps):
        out = {k: [] for k in batch.keys}
        for _ in range(steps):
            nxt = sample_next(batch.logits, 0.0, 1.0, None)
            for k, t in zip(batch.keys, nxt):
                out[k].append(int(t))
            batch.step(nxt)
        return out

    alone = {}
    for i in range(4):
        alone.update({i: greedy(pred.start(pred.encode([images[i]], [questions[i]]), keys=[i]), 8)[i]})
    first = pred.start(pred.encode(images[:2], questions[:2]), keys=[0, 1])
    got = greedy(first, 3)
    first.join(pred.start(pred.encode(images[2:], questions[2:]), keys=[2, 3]))  # longer and shorter prompts
    first.keep([3, 1, 2])  # row 0 leaves; order changes
    more = greedy(first, 5)
    for k in (1, 2, 3):
        seq = got.get(k, []) + more[k]
        assert seq == alone[k][:len(seq)], k
    assert got[0] == alone[0][:3]
