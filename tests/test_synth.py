"""The synthetic VQA task: determinism, answers re-derived independently from the objects, balance, layout."""
import re
import time
from collections import Counter

import numpy as np
import pytest

from paddle_rc.synth import vocab as V
from paddle_rc.synth import (ANSWERS, COLOURS, QTYPES, SHAPES, WORDS, all_questions, caption, generate,
                             generate_scene, iter_items, phrase, questions_for_scene, vocabulary)

GAP = 8  # how far from the midline a spatial question's shape stays, px (restated, not imported)


def small_shapes(objects):
    return [i for i, o in enumerate(objects) if o.kind == "shape" and o.size == "small"]


def reference_answer(question, objects):
    """The answer worked out from the question text and the object list alone."""
    small = small_shapes(objects)
    m = re.fullmatch(r"What color is the small (\w+)\?", question)
    if m:
        (hit,) = [i for i in small if objects[i].shape == m[1]]
        return objects[hit].colour
    m = re.fullmatch(r"What shape is the small (\w+) object\?", question)
    if m:
        (hit,) = [i for i in small if objects[i].colour == m[1]]
        return objects[hit].shape
    if question == "What word is on the small sign?":
        (sign,) = [o for o in objects if o.kind == "sign"]
        return sign.word
    if question == "How many dots are on the small card?":
        (card,) = [o for o in objects if o.kind == "card"]
        return str(len(card.dots))
    m = re.fullmatch(r"Is there a small (\w+) (\w+)\?", question)
    if m:
        return "yes" if any((objects[i].colour, objects[i].shape) == (m[1], m[2]) for i in small) else "no"
    m = re.fullmatch(r"Is the small (\w+) (\w+) in the (left|top) or the (right|bottom) half of the picture\?",
                     question)
    if m:
        (o,) = [objects[i] for i in small if (objects[i].colour, objects[i].shape) == (m[1], m[2])]
        lo, hi = (o.bbox[0], o.bbox[2]) if m[3] == "left" else (o.bbox[1], o.bbox[3])
        assert hi + GAP <= 168 or lo >= 168 + GAP, "spatial question about a shape on the midline"
        return m[3] if hi <= 168 else m[4]
    raise AssertionError(f"unparsed question {question!r}")


def check_layout(objects):
    large = [o for o in objects if o.size == "large"]
    signs = [o for o in objects if o.kind == "sign"]
    cards = [o for o in objects if o.kind == "card"]
    small = [objects[i] for i in small_shapes(objects)]
    assert 1 <= len(large) <= 2 and 3 <= len(small) <= 7 and len(signs) <= 1 and len(cards) <= 1
    assert len({(o.colour, o.shape) for o in small}) == len(small)  # every small shape nameable by colour+shape
    for o in large:
        assert o.kind == "shape" and 90 <= o.bbox[2] - o.bbox[0] <= 150
    for o in small:
        assert V.SMALL_SIDE[0] <= o.bbox[2] - o.bbox[0] <= V.SMALL_SIDE[1] and o.colour in COLOURS and o.shape in SHAPES
    for o in signs:
        assert o.word in WORDS and o.shape is None and not o.dots
    for o in cards:
        assert 1 <= len(o.dots) <= 4 and o.shape is None and o.word is None
        x0, y0, x1, y1 = o.bbox
        for i, (cx, cy) in enumerate(o.dots):  # inside the card, clear of each other
            assert x0 + 6 <= cx <= x1 - 6 and y0 + 6 <= cy <= y1 - 6
            assert all((cx - dx) ** 2 + (cy - dy) ** 2 >= 12 ** 2 for dx, dy in o.dots[i + 1:])
    for o in objects:
        x0, y0, x1, y1 = o.bbox
        assert 0 <= x0 < x1 <= 336 and 0 <= y0 < y1 <= 336
    for i, a in enumerate(objects):
        for b in objects[i + 1:]:
            apart = (a.bbox[2] <= b.bbox[0] or b.bbox[2] <= a.bbox[0] or
                     a.bbox[3] <= b.bbox[1] or b.bbox[3] <= a.bbox[1])
            assert apart, f"{a} overlaps {b}"


def test_same_seed_same_items_and_prefix_stable():
    a, b = generate(11, 18), generate(11, 18)
    for x, y in zip(a, b):
        assert np.array_equal(np.asarray(x.image), np.asarray(y.image))
        assert (x.id, x.question, x.answer, x.qtype, x.objects, x.target, x.caption) == \
               (y.id, y.question, y.answer, y.qtype, y.objects, y.target, y.caption)
    short = generate(11, 5)
    assert [s.question for s in short] == [s.question for s in a[:5]]
    assert np.array_equal(np.asarray(short[4].image), np.asarray(a[4].image))
    first = next(iter_items(11))
    assert first.question == a[0].question and np.array_equal(np.asarray(first.image), np.asarray(a[0].image))
    other = generate(12, 18)
    assert sum(np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(a, other)) == 0


def test_answers_follow_from_the_objects_and_layout_holds():
    items = generate(5, 240)
    for it in items:
        assert it.image.size == (336, 336) and it.image.mode == "RGB"
        check_layout(it.objects)
        assert it.answer == reference_answer(it.question, it.objects), it.question
        assert it.answer in ANSWERS[it.qtype] and it.answer == it.answer.lower()
        assert it.caption == caption(type("S", (), {"objects": it.objects})())
        for i in it.target:
            assert it.objects[i].size == "small"
        if it.qtype != "exist" or it.answer == "yes":
            assert it.target, it.question


def test_rendered_pixels_match_the_objects():
    for it in generate(2, 30):
        img = np.asarray(it.image).astype(int)
        for o in it.objects:
            x0, y0, x1, y1 = o.bbox
            if o.kind == "sign":
                assert np.abs(img[y0 + 2, x0 + 2] - 255).max() <= 20  # the white box
                continue
            if o.kind == "card":
                assert dark_blobs(img[y0 + 2:y1 - 2, x0 + 2:x1 - 2]) == len(o.dots), o
                continue
            cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
            patch = img[cy - 1:cy + 2, cx - 1:cx + 2].reshape(-1, 3)
            if o.striped:  # each pixel is the colour or, on a light stripe, halfway to white
                light = (np.array(COLOURS[o.colour]) + 255) / 2
                for px in patch:
                    assert min(np.abs(px - COLOURS[o.colour]).max(), np.abs(px - light).max()) <= 20
            else:
                patch = patch.mean(0)
                assert np.abs(patch - COLOURS[o.colour]).max() <= 15, (o, patch)
        # Background: light grey with mild noise in the top-left corner if nothing is there.
        if all(o.bbox[0] > 6 or o.bbox[1] > 6 for o in it.objects):
            corner = img[:4, :4].reshape(-1, 3)
            assert 190 <= corner.mean() <= 220 and corner.std() > 0


def dark_blobs(img) -> int:
    """Connected regions of dark pixels (4-neighbours), counted with a flood fill: the dots a reader sees."""
    dark = img.mean(-1) < 80
    seen = np.zeros_like(dark)
    blobs = 0
    for y, x in zip(*np.nonzero(dark)):
        if seen[y, x]:
            continue
        blobs += 1
        stack = [(y, x)]
        while stack:
            a, b = stack.pop()
            if 0 <= a < dark.shape[0] and 0 <= b < dark.shape[1] and dark[a, b] and not seen[a, b]:
                seen[a, b] = True
                stack += [(a + 1, b), (a - 1, b), (a, b + 1), (a, b - 1)]
    return blobs


def test_balance_over_types_and_answers():
    items = generate(3, 360)
    assert Counter(it.qtype for it in items) == {t: 60 for t in QTYPES}
    for t in QTYPES:
        counts = Counter(it.answer for it in items if it.qtype == t)
        assert set(counts) == set(ANSWERS[t]), t
        assert max(counts.values()) - min(counts.values()) <= 1, (t, counts)


def test_negatives_are_adversarial_and_distractors_are_never_asked():
    items = generate(4, 300)
    negatives = [it for it in items if it.qtype == "exist" and it.answer == "no"]
    assert negatives
    for it in negatives:
        colour, shape = re.fullmatch(r"Is there a small (\w+) (\w+)\?", it.question).groups()
        near = [it.objects[i] for i in small_shapes(it.objects)
                if it.objects[i].colour == colour or it.objects[i].shape == shape]
        assert near, it.question  # the colour or the shape is there, on another small object
    # Some "no"s have the exact asked colour+shape as a LARGE distractor (the answer must come from small ones).
    assert any(any(o.size == "large" and f"small {o.colour} {o.shape}?" in it.question for o in it.objects)
               for it in negatives)
    # Large objects appear in questions only through their shape/colour words, never as a referent.
    for it in items:
        for i in it.target:
            assert it.objects[i].size == "small"


def test_questions_for_scene_and_all_questions_are_valid():
    rng = np.random.default_rng(9)
    seen = Counter()
    for _ in range(40):
        scene = generate_scene(rng)
        check_layout(scene.objects)
        qs = all_questions(scene)
        texts = [q.text for q in qs]
        assert len(texts) == len(set(texts))
        for q in qs:
            assert q.answer == reference_answer(q.text, scene.objects), q
        sample = questions_for_scene(scene, rng)
        assert len({q.qtype for q in sample}) == len(sample)
        for q in sample:
            assert q in qs
            seen[q.qtype] += 1
    assert set(seen) == set(QTYPES)


def test_phrase_and_caption():
    scene = generate_scene(np.random.default_rng(1), large=[("circle", "red")], sign="cat", card=3)
    sign = [o for o in scene.objects if o.kind == "sign"][0]
    assert phrase(sign) == "a small sign that says cat"
    (card,) = [o for o in scene.objects if o.kind == "card"]
    assert phrase(card) == "a small card with 3 dots"
    (one,) = [o for o in generate_scene(np.random.default_rng(1), card=1).objects if o.kind == "card"]
    assert phrase(one) == "a small card with 1 dot"
    large = [o for o in scene.objects if o.size == "large"]
    assert large[0].shape == "circle" and large[0].colour == "red"
    assert phrase(large[0]) == "a large red circle"
    assert caption(scene) == " and ".join(f"a large {o.colour} {o.shape}" for o in large)
    small = scene.objects[small_shapes(scene.objects)[0]]
    assert phrase(small) == f"a small {small.colour} {small.shape}"
    words = set(vocabulary())
    for it in generate(6, 60):
        toks = re.findall(r"\w+|\?", (it.question + " " + it.caption + " " + it.answer).lower())
        assert set(toks) <= words, set(toks) - words


def test_generation_is_fast():
    generate(8, 6)  # font loading etc.
    t = time.perf_counter()
    generate(8, 120)
    per_item = (time.perf_counter() - t) / 120
    assert per_item < 0.05, f"{per_item * 1000:.1f} ms per item"  # ~5 ms alone; generous for a shared machine


@pytest.mark.parametrize("bad", [(-1, 3), (1, -2)])
def test_rejects_negative_arguments(bad):
    with pytest.raises(ValueError):
        generate(*bad)
