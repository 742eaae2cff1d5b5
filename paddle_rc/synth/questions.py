"""Questions about a scene. Every answer is computed from the scene's objects, never from how it was made."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from paddle_rc.eval.scorers import SHORT_ANSWER_SUFFIX
from paddle_rc.synth import vocab as V
from paddle_rc.synth.scene import Scene, SynthObject


@dataclass(frozen=True)
class Question:
    qtype: str
    text: str
    answer: str
    target: Tuple[int, ...]   # indices of the objects the answer depends on


def prompt(question: str) -> str:
    """The user turn for a question (without <image>): LLaVA-1.5's short-answer VQA instruction, the
    same text the synthvqa benchmark files carry, so train and eval prompts match."""
    return question + "\n" + SHORT_ANSWER_SUFFIX


def phrase(obj: SynthObject) -> str:
    """'a small green triangle', 'a small sign that says cat', 'a small card with 3 dots', 'a large red circle'."""
    if obj.kind == "sign":
        return f"a {obj.size} sign that says {obj.word}"
    if obj.kind == "card":
        return f"a {obj.size} card with {len(obj.dots)} dot{'s' if len(obj.dots) != 1 else ''}"
    return f"a {obj.size} {obj.colour} {obj.shape}"


def caption(scene: Scene) -> str:
    """The large objects only: CLIP's contrastive target, so the CLS token learns to look at them."""
    large = [phrase(o) for o in scene.objects if o.size == "large"]
    return " and ".join(large) if large else "an empty picture"


def _small_shapes(objects: Sequence[SynthObject]) -> List[int]:
    return [i for i, o in enumerate(objects) if o.kind == "shape" and o.size == "small"]


def _unique(objects: Sequence[SynthObject], colour: Optional[str] = None, shape: Optional[str] = None) -> Optional[int]:
    hits = [i for i in _small_shapes(objects)
            if (colour is None or objects[i].colour == colour) and (shape is None or objects[i].shape == shape)]
    return hits[0] if len(hits) == 1 else None


def side(obj: SynthObject, axis: str) -> Optional[str]:
    """Which half of the picture the object lies in on the axis ('left'/'right' for x, 'top'/'bottom' for
    y), None if it comes within MIDLINE_GAP px of the midline."""
    lo, hi = (obj.bbox[0], obj.bbox[2]) if axis == "x" else (obj.bbox[1], obj.bbox[3])
    mid = V.IMAGE_SIZE / 2.0
    first, second = V.SIDES[axis]
    if hi + V.MIDLINE_GAP <= mid:
        return first
    if lo >= mid + V.MIDLINE_GAP:
        return second
    return None


def _one(objects: Sequence[SynthObject], kind: str) -> Optional[int]:
    hits = [i for i, o in enumerate(objects) if o.kind == kind]
    return hits[0] if len(hits) == 1 else None


def ask(qtype: str, params: tuple, objects: Sequence[SynthObject]) -> Optional[Question]:
    """The question of this type and parameters, with its answer from `objects`; None if it is not well posed."""
    if qtype == "colour":
        (shape,) = params
        i = _unique(objects, shape=shape)
        if i is None:
            return None
        return Question(qtype, f"What color is the small {shape}?", objects[i].colour, (i,))
    if qtype == "shape":
        (colour,) = params
        i = _unique(objects, colour=colour)
        if i is None:
            return None
        return Question(qtype, f"What shape is the small {colour} object?", objects[i].shape, (i,))
    if qtype == "word":
        i = _one(objects, "sign")
        if i is None:
            return None
        return Question(qtype, "What word is on the small sign?", objects[i].word, (i,))
    if qtype == "count":
        i = _one(objects, "card")
        if i is None:
            return None
        return Question(qtype, "How many dots are on the small card?", str(len(objects[i].dots)), (i,))
    if qtype == "exist":
        colour, shape = params
        small = _small_shapes(objects)
        hits = tuple(i for i in small if objects[i].colour == colour and objects[i].shape == shape)
        # For a "no" the answer rests on the look-alikes one must rule out (same colour or same shape).
        near = hits or tuple(i for i in small if objects[i].colour == colour or objects[i].shape == shape)
        return Question(qtype, f"Is there a small {colour} {shape}?", "yes" if hits else "no", near)
    if qtype == "spatial":
        axis, colour, shape = params
        i = _unique(objects, colour, shape)
        if i is None:
            return None
        answer = side(objects[i], axis)
        if answer is None:
            return None  # too near the midline to tell
        first, second = V.SIDES[axis]
        return Question(qtype, f"Is the small {colour} {shape} in the {first} or the {second} half of the picture?",
                        answer, (i,))
    raise ValueError(f"unknown question type {qtype!r}")


def all_questions(scene_or_objects) -> List[Question]:
    """Every well-posed question about the scene, in a fixed order."""
    objects = getattr(scene_or_objects, "objects", scene_or_objects)
    out: List[Question] = []
    for shape in V.SHAPES:
        out.append(ask("colour", (shape,), objects))
    for colour in V.COLOURS:
        out.append(ask("shape", (colour,), objects))
    out.append(ask("word", (), objects))
    out.append(ask("count", (), objects))
    for colour in V.COLOURS:
        for shape in V.SHAPES:
            out.append(ask("exist", (colour, shape), objects))
    for axis in V.SIDES:
        for i in _small_shapes(objects):
            out.append(ask("spatial", (axis, objects[i].colour, objects[i].shape), objects))
    return [q for q in out if q is not None]


def questions_for_scene(scene: Scene, rng: np.random.Generator, per_type: int = 1) -> List[Question]:
    """A sample of the scene's questions: up to per_type of each type; yes/no types pick yes or no 50/50
    (when both exist), so that a stream of scenes is not dominated by the many "no" existence questions."""
    by_type = {t: [] for t in V.QTYPES}
    for q in all_questions(scene):
        by_type[q.qtype].append(q)
    out: List[Question] = []
    for t in V.QTYPES:
        pool = by_type[t]
        for _ in range(per_type):
            if not pool:
                break
            if t == "exist":
                want = "yes" if rng.random() < 0.5 else "no"
                sub = [q for q in pool if q.answer == want] or pool
            else:
                sub = pool
            q = sub[int(rng.integers(len(sub)))]
            pool = [p for p in pool if p is not q]
            out.append(q)
    return out
