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
    """'a small green triangle', 'a small sign that says cat', 'a large red circle'."""
    if obj.kind == "sign":
        return f"a {obj.size} sign that says {obj.word}"
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


def _before(a: SynthObject, b: SynthObject, axis: int) -> bool:
    """a lies entirely before b on the axis (0: x, left of; 1: y, above), by at least SEPARATION px."""
    return a.bbox[axis + 2] + V.SEPARATION <= b.bbox[axis]


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
        signs = [i for i, o in enumerate(objects) if o.kind == "sign"]
        if len(signs) != 1:
            return None
        return Question(qtype, "What word is on the small sign?", objects[signs[0]].word, (signs[0],))
    if qtype == "count":
        (shape,) = params
        hits = tuple(i for i in _small_shapes(objects) if objects[i].shape == shape)
        if len(hits) > V.MAX_COUNT:
            return None
        return Question(qtype, f"How many small {V.PLURALS[shape]} are there?", str(len(hits)), hits)
    if qtype == "exist":
        colour, shape = params
        small = _small_shapes(objects)
        hits = tuple(i for i in small if objects[i].colour == colour and objects[i].shape == shape)
        # For a "no" the answer rests on the look-alikes one must rule out (same colour or same shape).
        near = hits or tuple(i for i in small if objects[i].colour == colour or objects[i].shape == shape)
        return Question(qtype, f"Is there a small {colour} {shape}?", "yes" if hits else "no", near)
    if qtype == "spatial":
        rel, (ca, sa), (cb, sb) = params
        a, b = _unique(objects, ca, sa), _unique(objects, cb, sb)
        if a is None or b is None or a == b:
            return None
        axis = 0 if rel in ("left", "right") else 1
        oa, ob = objects[a], objects[b]
        if not (_before(oa, ob, axis) or _before(ob, oa, axis)):
            return None  # not clearly separated on that axis
        holds = _before(oa, ob, axis) if rel in ("left", "above") else _before(ob, oa, axis)
        where = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}[rel]
        return Question(qtype, f"Is the small {ca} {sa} {where} the small {cb} {sb}?", "yes" if holds else "no", (a, b))
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
    for shape in V.SHAPES:
        out.append(ask("count", (shape,), objects))
    for colour in V.COLOURS:
        for shape in V.SHAPES:
            out.append(ask("exist", (colour, shape), objects))
    pairs = [(objects[i].colour, objects[i].shape) for i in _small_shapes(objects)]
    for rel in V.RELATIONS:
        for pa in pairs:
            for pb in pairs:
                if pa != pb:
                    out.append(ask("spatial", (rel, pa, pb), objects))
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
            if t in ("exist", "spatial"):
                want = "yes" if rng.random() < 0.5 else "no"
                sub = [q for q in pool if q.answer == want] or pool
            else:
                sub = pool
            q = sub[int(rng.integers(len(sub)))]
            pool = [p for p in pool if p is not q]
            out.append(q)
    return out
