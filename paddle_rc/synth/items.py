"""Question-first sampling of (image, question, answer) items, balanced over types and answers."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator, List

import numpy as np
from PIL import Image

from paddle_rc.synth import vocab as V
from paddle_rc.synth.questions import Question, ask, caption, side
from paddle_rc.synth.scene import Scene, SynthObject, generate_scene


@dataclass
class SynthItem:
    id: str
    image: Image.Image
    question: str
    answer: str                 # lower-case single word or digit
    qtype: str
    objects: List[SynthObject]
    target: List[int]           # indices into objects of what the answer depends on
    caption: str


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _other(rng: np.random.Generator, seq, not_this):
    return _pick(rng, [x for x in seq if x != not_this])


def _planned(qtype: str, answer: str, rng: np.random.Generator) -> tuple:
    """A scene built so that the question of `qtype` has `answer`, and the question (from the scene)."""
    colours = list(V.COLOURS)
    shapes = list(V.SHAPES)
    adversarial = rng.random() < 0.5  # a large distractor shares what the question names
    if qtype == "colour":
        shape = _pick(rng, shapes)
        large = [(shape, _other(rng, colours, answer))] if adversarial else []
        scene = generate_scene(rng, large=large, small=[(answer, shape)], allow=lambda c, s: s != shape)
        return scene, ask(qtype, (shape,), scene.objects)
    if qtype == "shape":
        colour = _pick(rng, colours)
        large = [(_other(rng, shapes, answer), colour)] if adversarial else []
        scene = generate_scene(rng, large=large, small=[(colour, answer)], allow=lambda c, s: c != colour)
        return scene, ask(qtype, (colour,), scene.objects)
    if qtype == "word":
        scene = generate_scene(rng, sign=answer)
        return scene, ask(qtype, (), scene.objects)
    if qtype == "count":
        scene = generate_scene(rng, card=int(answer))
        return scene, ask(qtype, (), scene.objects)
    if qtype == "exist":
        colour, shape = _pick(rng, colours), _pick(rng, shapes)
        if answer == "yes":
            small = [(colour, shape)]
        else:  # POPE-adversarial: the colour on another shape, the shape in another colour, or both
            mode = _pick(rng, ("colour", "shape", "both"))
            small = []
            if mode in ("colour", "both"):
                small.append((colour, _other(rng, shapes, shape)))
            if mode in ("shape", "both"):
                small.append((_other(rng, colours, colour), shape))
        large = [(shape, colour)] if adversarial else []
        scene = generate_scene(rng, large=large, small=small, allow=lambda c, s: (c, s) != (colour, shape))
        return scene, ask(qtype, (colour, shape), scene.objects)
    if qtype == "spatial":
        axis = next(a for a, sides in V.SIDES.items() if answer in sides)
        for _ in range(20):
            scene = generate_scene(rng)
            objs = scene.objects
            there = [i for i, o in enumerate(objs)
                     if o.kind == "shape" and o.size == "small" and side(o, axis) == answer]
            if there:
                break
        else:
            raise RuntimeError(f"no small shape on the {answer} in 20 scenes")
        i = there[int(rng.integers(len(there)))]
        return scene, ask(qtype, (axis, objs[i].colour, objs[i].shape), objs)
    raise ValueError(f"unknown question type {qtype!r}")


def _slot(seed: int, i: int) -> tuple:
    """Question type and answer of item i: each block of len(QTYPES) items holds every type once, and the
    j-th item of a type cycles through a fresh permutation of that type's answers (exact balance)."""
    n = len(V.QTYPES)
    block, pos = divmod(i, n)
    t = int(np.random.default_rng([seed, block, 0]).permutation(n)[pos])
    qtype = V.QTYPES[t]
    answers = V.ANSWERS[qtype]
    cycle, k = divmod(block, len(answers))
    return qtype, answers[int(np.random.default_rng([seed, t, cycle, 1]).permutation(len(answers))[k])]


def index_of_type(seed: int, qtype: str, k: int) -> int:
    """The stream index of the k-th item of `qtype` (block k of _slot holds each type once), so a
    sampler weighting the types draws items of the same stream, each type's answers still cycling."""
    n = len(V.QTYPES)
    order = np.random.default_rng([seed, k, 0]).permutation(n)
    return k * n + int(np.nonzero(order == V.QTYPES.index(qtype))[0][0])


def make_item(seed: int, i: int) -> SynthItem:
    """Item i of the stream for `seed` (independent of every other item: generate(s, n)[:k] == generate(s, k))."""
    qtype, answer = _slot(seed, i)
    scene, q = _planned(qtype, answer, np.random.default_rng([seed, i, 2]))
    if q is None or q.answer != answer:  # the plan and the scene disagree: a generator bug
        raise AssertionError(f"item {i}: planned {qtype}={answer!r}, scene says {q}")
    return item_from(scene, q, f"synth-{seed}-{i:06d}")


def item_from(scene: Scene, q: Question, item_id: str) -> SynthItem:
    return SynthItem(item_id, scene.image, q.text, q.answer, q.qtype, list(scene.objects), list(q.target),
                     caption(scene))


def generate(seed: int, n: int) -> List[SynthItem]:
    """n items, one question per image, balanced over QTYPES and over each type's answers; deterministic."""
    if seed < 0 or n < 0:
        raise ValueError("seed and n must be >= 0")
    return [make_item(seed, i) for i in range(n)]


def iter_items(seed: int) -> Iterator[SynthItem]:
    """The endless stream generate(seed, n) is a prefix of (use a seed apart from every eval seed)."""
    for i in itertools.count():
        yield make_item(seed, i)
