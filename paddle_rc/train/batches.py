"""Training batches from the synthetic task: pixels, per-patch labels, texts and prompts.

Everything here mirrors inference exactly: pixels go through the model's ImageProcessor, prompts
through the conversation template and `tokenize_with_image`, the text encoder's question through
`question_for_text_encoder`. A batch is a pure function of (seed, stage, step), so a resumed run
sees the same data as an uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from paddle_rc.data.conversation import get_template, question_for_text_encoder
from paddle_rc.data.padding import left_pad

# The benchmark's answer-format instruction; half the training prompts carry it, so the model
# answers the same with or without it.
SHORT_ANSWER = "Answer the question using a single word or phrase."
STAGE_SALT = {"clip": 1, "llm": 2, "corpus": 3}


def batch_rng(seed: int, stage: str, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, STAGE_SALT[stage], step])


def stream_seed(seed: int, stage: str) -> int:
    # Far from the small seeds benchmarks and tests generate with.
    return 1_000_003 * (seed + 1) + STAGE_SALT[stage]


def draw_items(seed: int, stage: str, step: int, n: int, mix: Optional[dict] = None) -> list:
    """Items step*n .. step*n+n-1 of the stage's stream: fresh scenes, one question each, balanced over
    question types and answers (the generator's own balancing). `mix` (recipe type_mix: question type ->
    weight, 1 for a type it leaves out) draws each item's type with those weights instead; item p of the
    batch is then the (step*n+p)-th item of its type, so no item repeats and each type's answers cycle."""
    from paddle_rc.synth import QTYPES, make_item
    from paddle_rc.synth.items import index_of_type

    s = stream_seed(seed, stage)
    if not mix:
        return [make_item(s, step * n + i) for i in range(n)]
    weights = np.array([float(mix.get(t, 1.0)) for t in QTYPES])
    types = batch_rng(seed, stage, step).choice(len(QTYPES), size=n, p=weights / weights.sum())
    return [make_item(s, index_of_type(s, QTYPES[t], step * n + i)) for i, t in enumerate(types)]


def check_type_mix(mix) -> None:
    """A recipe's type_mix: a mapping of question types to non-negative weights, not all zero."""
    from paddle_rc.errors import UserError
    from paddle_rc.synth import QTYPES

    if not isinstance(mix, dict):
        raise UserError(f"recipe type_mix must be a mapping of question types to weights, got {mix!r}")
    unknown = sorted(set(mix) - set(QTYPES))
    if unknown:
        raise UserError(f"recipe type_mix: unknown question type(s) {', '.join(unknown)} (types: {', '.join(QTYPES)})")
    bad = [t for t, w in mix.items() if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0]
    if bad:
        raise UserError(f"recipe type_mix: weights must be numbers >= 0 ({', '.join(bad)})")
    if mix and sum(float(mix.get(t, 1.0)) for t in QTYPES) <= 0:
        raise UserError("recipe type_mix: every weight is 0")


@dataclass
class PatchLabels:
    """Per patch of the model's grid: which object covers it and that object's attributes."""
    owner: np.ndarray  # [B, N] object index or -1
    colour: np.ndarray  # [B, N] class id, 0 = background
    shape: np.ndarray  # [B, N] class id, 0 = background (signs and cards have their own classes)
    word: np.ndarray  # [B, N] content_class: 0 = none, then the sign words, then the card dot counts
    size: np.ndarray  # [B, N] 0 background, 1 small, 2 large
    centre: np.ndarray  # [B, N] 1 where an object's centre falls
    row: np.ndarray  # [B, N] the patch's grid row (so the feature layer keeps where each token is)
    col: np.ndarray  # [B, N] the patch's grid column
    weight: np.ndarray  # [B, N] float: each object's patches share weight 1, the background shares BACKGROUND_SHARE


def object_patches(bbox, scale: float, grid: int, patch: int) -> list:
    """Patches whose centre lies inside the (scaled) box, or at least the one holding its centre."""
    x0, y0, x1, y1 = [v * scale for v in bbox]
    centres = (np.arange(grid) + 0.5) * patch
    cols = np.nonzero((centres >= x0) & (centres < x1))[0]
    rows = np.nonzero((centres >= y0) & (centres < y1))[0]
    cells = [int(r * grid + c) for r in rows for c in cols]
    if not cells:
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        cells = [int(min(grid - 1, cy // patch) * grid + min(grid - 1, cx // patch))]
    return cells


def colour_classes() -> list:
    from paddle_rc.synth import COLOURS
    from paddle_rc.synth.vocab import SIGN_COLOUR

    return list(COLOURS) + [SIGN_COLOUR]


# Weight of all background patches together, against 1 per object. Unweighted, the background and
# the large distractors (nearly every patch) swamp the loss and the heads learn nothing of the small
# objects: the first demo's feature layer told the sign's word in 16% of held-out cases.
BACKGROUND_SHARE = 0.5


def patch_labels(items, image_size: int, patch: int) -> PatchLabels:
    from paddle_rc.synth import SHAPES

    colours = colour_classes()
    grid = image_size // patch
    n = grid * grid
    shape_ids = {s: i + 1 for i, s in enumerate(SHAPES)}
    shape_ids["sign"], shape_ids["card"] = len(SHAPES) + 1, len(SHAPES) + 2
    out = {k: np.zeros((len(items), n), np.int64) for k in ("colour", "shape", "word", "size", "centre")}
    owner = np.full((len(items), n), -1, np.int64)
    for b, it in enumerate(items):
        scale = image_size / it.image.size[0]
        for j, obj in enumerate(it.objects):
            cells = object_patches(obj.bbox, scale, grid, patch)
            owner[b, cells] = j
            out["colour"][b, cells] = colours.index(obj.colour) + 1
            out["shape"][b, cells] = shape_ids[obj.shape if obj.kind == "shape" else obj.kind]
            out["word"][b, cells] = content_class(obj)
            out["size"][b, cells] = 1 if obj.size == "small" else 2
            x0, y0, x1, y1 = [v * scale for v in obj.bbox]
            cx, cy = int(min(grid - 1, ((x0 + x1) / 2) // patch)), int(min(grid - 1, ((y0 + y1) / 2) // patch))
            out["centre"][b, cy * grid + cx] = 1
    weight = np.zeros((len(items), n), np.float32)
    for b in range(len(items)):
        ids, counts = np.unique(owner[b], return_counts=True)
        for j, c in zip(ids, counts):
            weight[b, owner[b] == j] = (BACKGROUND_SHARE if j < 0 else 1.0) / c
    cells = np.arange(n)
    out["row"] = np.broadcast_to(cells // grid, (len(items), n)).copy()
    out["col"] = np.broadcast_to(cells % grid, (len(items), n)).copy()
    return PatchLabels(owner=owner, weight=weight, **out)


def content_class(obj) -> int:
    """What a sign or card shows, as one class: 0 nothing, 1..len(WORDS) the sign's word, then the card's
    dot count (the "word" heads read both: each is the one thing printed on a small white box)."""
    from paddle_rc.synth import WORDS

    if obj.word:
        return WORDS.index(obj.word) + 1
    return len(WORDS) + len(obj.dots) if obj.dots else 0


def label_sizes(grid: int) -> dict:
    """Classes per per-patch head."""
    from paddle_rc.synth import SHAPES, WORDS

    from paddle_rc.synth.vocab import MAX_DOTS

    out = {"colour": len(colour_classes()) + 1, "shape": len(SHAPES) + 3, "word": len(WORDS) + 1 + MAX_DOTS, "size": 3,
           "centre": 2, "row": grid, "col": grid}
    return out


def user_text(item, rng) -> str:
    return item.question + (" " + SHORT_ANSWER if rng.random() < 0.5 else "")


def text_targets(items, labels: PatchLabels, grid_n: int, rng) -> tuple:
    """Texts for the patch-text alignment loss and, for each, its image and target patches.

    Every object's phrase targets that object's patches; each question whose answer depends on
    objects targets those objects' patches (through the same text the text encoder sees at
    inference). A question with no such object (a negative existence question) adds nothing."""
    from paddle_rc.synth import phrase

    texts, image_of, targets = [], [], []
    for b, it in enumerate(items):
        for j, obj in enumerate(it.objects):
            cells = np.nonzero(labels.owner[b] == j)[0]
            if len(cells):
                texts.append(phrase(obj))
                image_of.append(b)
                targets.append(cells)
        if it.target:
            cells = np.nonzero(np.isin(labels.owner[b], list(it.target)))[0]
            if len(cells):
                texts.append(question_for_text_encoder(user_text(it, rng)))
                image_of.append(b)
                targets.append(cells)
    mask = np.zeros((len(texts), grid_n), np.float32)
    for i, cells in enumerate(targets):
        mask[i, cells] = 1.0 / len(cells)
    return texts, np.asarray(image_of, np.int64), mask


def clip_ids(clip_tok, texts, pad_id: int) -> np.ndarray:
    rows = [clip_tok.encode(t) for t in texts]
    ids = np.full((len(rows), max(len(r) for r in rows)), pad_id, np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
    return ids


def answer_sequences(items, llm_tok, conv_mode: str, image_token_index: int, rng) -> tuple:
    """Left-padded prompt + answer + EOS ids, the mask, and per row how many trailing tokens are the
    answer (the loss is taken on those only, as LLaVA masks everything but the assistant's reply)."""
    template = get_template(conv_mode)
    rows, answer_len = [], []
    for it in items:
        prompt = template.prompt(user_text(it, rng), with_image=True)
        # The reply is tokenized together with the prompt, as LLaVA tokenizes the whole conversation.
        head = llm_tok.tokenize_with_image(prompt, image_token_index)
        full = llm_tok.tokenize_with_image(prompt + " " + it.answer, image_token_index) + [llm_tok.eos_token_id]
        if full[:len(head)] != head:
            raise ValueError(f"the reply changed the prompt's tokens: {prompt!r} + {it.answer!r}")
        rows.append(full)
        answer_len.append(len(full) - len(head))
    ids, mask = left_pad(rows, llm_tok.pad_token_id)
    return ids, mask, np.asarray(answer_len, np.int64)


def question_targets(ids, mask, n_visual: int, image_token_index: int, llm_tok) -> np.ndarray:
    """[B, L'] float: 1 at the spliced positions of each row's question (the tokens after the image up to
    the first one that decodes to a '?'). Supervising decoder layer 0's reply position to read them is the
    first hop of the task (question -> query); without it that position averaged ~300 tokens of which ~10
    are the question, and the next layers' query could not name the object (the grounding loss stalled at
    the mass of all small objects)."""
    length, _, start = _spliced_starts(ids, mask, n_visual, image_token_index)
    out = np.zeros((len(ids), length), np.float32)
    for b in range(len(ids)):
        real = ids[b, np.nonzero(mask[b])[0]]
        at = int(np.nonzero(real == image_token_index)[0][0])
        n_words = 0
        for j in range(at + 1, len(real)):
            n_words += 1
            if "?" in llm_tok.decode([int(real[j])]):
                break
        out[b, start[b] + n_visual + np.arange(n_words)] = 1.0
    return out


def query_label_sizes() -> dict:
    """Classes of what the reply position should hold: the asked objects' colour, shape and word (a card's
    dot count is its "word")."""
    sizes = label_sizes(1)
    return {k: sizes[k] for k in ("colour", "shape", "word")}


def target_attributes(items, labels: PatchLabels) -> dict:
    """[B, C] soft labels per kind of query_label_sizes: the mean one-hot over each question's target
    objects, read from the patch labels so the classes are the patch heads' own. Rows without a target
    object are all zero (the loss leaves them out)."""
    sizes = query_label_sizes()
    out = {k: np.zeros((len(items), c), np.float32) for k, c in sizes.items()}
    for b, it in enumerate(items):
        for j in it.target:
            cells = np.nonzero(labels.owner[b] == j)[0]
            if not len(cells):
                continue
            for k in out:
                out[k][b, getattr(labels, k)[b, cells[0]]] += 1.0 / len(it.target)
    return out


def object_pooling(items, labels: PatchLabels, kinds=("colour", "shape", "word")) -> tuple:
    """Each small object (shapes and the sign) as the mean of its patches: (pool [S, B*N] float32, whose
    row s averages object s's patches of the flattened batch, and {colour, shape, word: [S] int64} its
    labels, the patch heads' classes). An object whose patches all belong to another is left out."""
    b_n = labels.owner.size
    n = labels.owner.shape[1]
    rows, targets = [], {k: [] for k in kinds}
    for b, it in enumerate(items):
        for j, obj in enumerate(it.objects):
            cells = np.nonzero(labels.owner[b] == j)[0]
            if obj.size != "small" or not len(cells):
                continue
            row = np.zeros(b_n, np.float32)
            row[b * n + cells] = 1.0 / len(cells)
            rows.append(row)
            for k in targets:
                targets[k].append(int(getattr(labels, k)[b, cells[0]]))
    pool = np.stack(rows) if rows else np.zeros((0, b_n), np.float32)
    return pool, {k: np.asarray(v, np.int64) for k, v in targets.items()}


def _spliced_starts(ids, mask, n_visual: int, image_token_index: int):
    """The spliced length L' (the image placeholder became n_visual tokens; rows left-padded, so every row
    ends at L'), and per row the position of its first real token and of its first visual token."""
    spliced = mask.sum(axis=1) - 1 + n_visual
    length = int(spliced.max())
    first, visual = [], []
    for b in range(len(ids)):
        real = np.nonzero(mask[b])[0]
        at = int(np.nonzero(ids[b, real] == image_token_index)[0][0])  # tokens before the image
        first.append(length - int(spliced[b]))
        visual.append(first[-1] + at)
    return length, np.asarray(first, np.int64), np.asarray(visual, np.int64)


def visual_targets(items, labels: PatchLabels, ids, mask, image_token_index: int) -> np.ndarray:
    """[B, L'] float: 1 at the spliced positions of the visual tokens of each question's target objects:
    what the reply position's attention should read in decoder layers 1 and up (the grounding loss). A
    question with no target object (a negative existence question) gets an all-zero row."""
    length, _, start = _spliced_starts(ids, mask, labels.owner.shape[1], image_token_index)
    out = np.zeros((len(items), length), np.float32)
    for b, it in enumerate(items):
        if it.target:
            out[b, start[b] + np.nonzero(np.isin(labels.owner[b], list(it.target)))[0]] = 1.0
    return out
