"""Scene sampling and rendering: large salient distractors, small asked-about shapes, a small sign and a card."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from paddle_rc.synth import vocab as V

BBox = Tuple[int, int, int, int]


@dataclass(frozen=True)
class SynthObject:
    kind: str                 # 'shape' | 'sign' | 'card'
    shape: Optional[str]      # one of SHAPES, None for a sign or a card
    colour: str               # one of COLOURS, 'white' for a sign or a card
    size: str                 # 'small' | 'large'
    bbox: BBox                # (x0, y0, x1, y1) pixels, half-open: x1 = x0 + width
    word: Optional[str] = None
    striped: bool = False
    dots: Tuple[Tuple[int, int], ...] = ()   # a card's dot centres, px

    @property
    def centre(self) -> Tuple[float, float]:
        x0, y0, x1, y1 = self.bbox
        return (x0 + x1) / 2.0, (y0 + y1) / 2.0


@dataclass
class Scene:
    image: Image.Image
    objects: List[SynthObject] = field(default_factory=list)


class PlacementError(RuntimeError):
    """The requested objects did not fit after many tries (the caller resamples)."""


# A request for one object before it has a position.
@dataclass(frozen=True)
class _Spec:
    kind: str
    shape: Optional[str]
    colour: str
    size: str
    wh: Tuple[int, int]
    word: Optional[str] = None
    striped: bool = False
    n_dots: int = 0


def _free(box: BBox, placed: Sequence[BBox]) -> bool:
    x0, y0, x1, y1 = box
    for a0, b0, a1, b1 in placed:
        if x0 < a1 + V.GAP and a0 < x1 + V.GAP and y0 < b1 + V.GAP and b0 < y1 + V.GAP:
            return False
    return True


def _place(rng: np.random.Generator, wh: Tuple[int, int], placed: Sequence[BBox], tries: int = 60) -> Optional[BBox]:
    w, h = wh
    margin = 2
    for _ in range(tries):
        x0 = int(rng.integers(margin, V.IMAGE_SIZE - margin - w + 1))
        y0 = int(rng.integers(margin, V.IMAGE_SIZE - margin - h + 1))
        box = (x0, y0, x0 + w, y0 + h)
        if _free(box, placed):
            return box
    return None


def _small_side(rng: np.random.Generator) -> Tuple[int, int]:
    s = int(rng.integers(V.SMALL_SIDE[0], V.SMALL_SIDE[1] + 1))
    return s, s


def _large_spec(rng: np.random.Generator, shape: Optional[str] = None, colour: Optional[str] = None) -> _Spec:
    s = int(rng.integers(V.LARGE_SIDE[0], V.LARGE_SIDE[1] + 1))
    shape = shape or V.SHAPES[rng.integers(len(V.SHAPES))]
    colour = colour or list(V.COLOURS)[rng.integers(len(V.COLOURS))]
    return _Spec("shape", shape, colour, "large", (s, s), striped=bool(rng.random() < 0.5))


def generate_scene(
    rng: np.random.Generator,
    *,
    large: Sequence[Tuple[Optional[str], Optional[str]]] = (),
    small: Sequence[Tuple[str, str]] = (),
    allow: Optional[Callable[[str, str], bool]] = None,
    sign: object = None,
    card: object = None,
    n_small: Optional[int] = None,
    max_restarts: int = 50,
) -> Scene:
    """A random scene; the keyword arguments let a question plan force what its answer needs.

    large: (shape, colour) pairs (None = random) for the first large distractors; 1-2 large in all.
    small: (colour, shape) small shapes that must be present. Fillers are drawn up to n_small (3-7) with
    all small (colour, shape) pairs distinct and allow(colour, shape) true. sign: None = a sign with a random word half the time, False = no sign, a word = that sign.
    card: the same for a card of dots (an int = that many dots). Deterministic given the generator's state.
    """
    colours = list(V.COLOURS)
    for _ in range(max_restarts):
        n_large = max(len(large), int(rng.integers(V.N_LARGE[0], V.N_LARGE[1] + 1)))
        specs_large = [_large_spec(rng, *(large[i] if i < len(large) else (None, None))) for i in range(n_large)]
        n = n_small if n_small is not None else int(rng.integers(V.N_SMALL[0], V.N_SMALL[1] + 1))
        n = max(n, len(small))
        required = [_Spec("shape", s, c, "small", _small_side(rng)) for c, s in small]
        if sign is None:
            word = V.WORDS[rng.integers(len(V.WORDS))] if rng.random() < 0.5 else None
        else:
            word = sign or None
        sign_spec = [_Spec("sign", None, V.SIGN_COLOUR, "small", V.SIGN_SIZE, word=word)] if word else []
        if card is None:
            k = int(rng.integers(1, V.MAX_DOTS + 1)) if rng.random() < 0.5 else 0
        else:
            k = int(card or 0)
        if k:
            sign_spec.append(_Spec("card", None, V.SIGN_COLOUR, "small", V.CARD_SIZE, n_dots=k))

        placed: List[Tuple[_Spec, BBox]] = []
        ok = True
        for spec in specs_large + required + sign_spec:
            box = _place(rng, spec.wh, [b for _, b in placed])
            if box is None:
                ok = False
                break
            placed.append((spec, box))
        if not ok:
            continue
        taken = {(c, s) for c, s in small}
        fillers = 0
        for _ in range(4 * (n - len(required)) + 8):
            if fillers >= n - len(required):
                break
            c = colours[rng.integers(len(colours))]
            s = V.SHAPES[rng.integers(len(V.SHAPES))]
            if (c, s) in taken or (allow is not None and not allow(c, s)):
                continue
            spec = _Spec("shape", s, c, "small", _small_side(rng))
            box = _place(rng, spec.wh, [b for _, b in placed])
            if box is None:
                continue
            placed.append((spec, box))
            taken.add((c, s))
            fillers += 1
        if len(required) + fillers < V.N_SMALL[0]:
            continue
        # Order: large distractors, small shapes, the card, the sign (target indices refer to this order).
        placed.sort(key=lambda p: (p[0].size != "large", p[0].kind == "sign", p[0].kind == "card"))
        objects = [SynthObject(sp.kind, sp.shape, sp.colour, sp.size, box, sp.word, sp.striped,
                               _dot_centres(rng, box, sp.n_dots) if sp.kind == "card" else ())
                   for sp, box in placed]
        return Scene(render(objects, rng), objects)
    raise PlacementError("could not place the requested objects")


def _dot_centres(rng: np.random.Generator, box: BBox, k: int) -> Tuple[Tuple[int, int], ...]:
    """k dot centres scattered inside the card, each dot clear of the border and of the others (a count
    must look at every dot, not match one fixed pattern per number)."""
    x0, y0, x1, y1 = box
    r = V.DOT // 2
    lo_x, hi_x, lo_y, hi_y = x0 + r + 4, x1 - r - 4, y0 + r + 4, y1 - r - 4
    while True:
        pts: List[Tuple[int, int]] = []
        for _ in range(200):
            p = (int(rng.integers(lo_x, hi_x + 1)), int(rng.integers(lo_y, hi_y + 1)))
            if all((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2 >= (V.DOT + 3) ** 2 for q in pts):
                pts.append(p)
                if len(pts) == k:
                    return tuple(sorted(pts))


@functools.lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _polygon(shape: str, box: BBox) -> List[Tuple[float, float]]:
    x0, y0, x1, y1 = box
    x1, y1 = x1 - 1, y1 - 1
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    if shape == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if shape == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    if shape == "star":
        r_out = (x1 - x0) / 2.0
        r_in = 0.45 * r_out
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r_out, r_in)
        # Centre the star's own extent in the box (its bottom points sit above the box's bottom).
        ys = radii * np.sin(angles)
        dy = (r_out - ys.max()) / 2.0
        return [(cx + r * np.cos(a), cy + dy + r * np.sin(a)) for r, a in zip(radii, angles)]
    raise ValueError(shape)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: BBox, fill) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
    else:
        draw.polygon(_polygon(shape, box), fill=fill)


def render(objects: Sequence[SynthObject], rng: np.random.Generator) -> Image.Image:
    """Flat shapes on light grey, then mild per-pixel grey noise over everything."""
    size = V.IMAGE_SIZE
    img = Image.new("RGB", (size, size), (V.BACKGROUND,) * 3)
    draw = ImageDraw.Draw(img)
    for obj in objects:
        if obj.kind == "sign":
            x0, y0, x1, y1 = obj.bbox
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=(255, 255, 255), outline=(90, 90, 90))
            font = _font(V.SIGN_FONT)
            l, t, r, b = font.getbbox(obj.word)
            tx = (x0 + x1) / 2.0 - (l + r) / 2.0
            ty = (y0 + y1) / 2.0 - (t + b) / 2.0
            draw.text((tx, ty), obj.word, fill=(0, 0, 0), font=font)
            continue
        if obj.kind == "card":
            x0, y0, x1, y1 = obj.bbox
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=(255, 255, 255), outline=(90, 90, 90))
            r = V.DOT / 2.0
            for cx, cy in obj.dots:
                draw.ellipse((cx - r, cy - r, cx + r - 1, cy + r - 1), fill=(0, 0, 0))
            continue
        colour = V.COLOURS[obj.colour]
        _draw_shape(draw, obj.shape, obj.bbox, colour)
        if obj.striped:
            _stripe(img, obj, colour)
    arr = np.asarray(img, dtype=np.int16)
    noise = rng.normal(0.0, V.NOISE, size=(size, size, 1)).astype(np.int16)
    return Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8), "RGB")


def _stripe(img: Image.Image, obj: SynthObject, colour) -> None:
    """Diagonal light stripes inside a large shape (a busier, more salient distractor)."""
    x0, y0, x1, y1 = obj.bbox
    w, h = x1 - x0, y1 - y0
    mask = Image.new("L", (w, h), 0)
    _draw_shape(ImageDraw.Draw(mask), obj.shape, (0, 0, w, h), 255)
    yy, xx = np.mgrid[0:h, 0:w]
    stripes = ((xx + yy) // 7) % 3 == 0
    m = np.asarray(mask) * stripes
    light = tuple(int((c + 255) / 2) for c in colour)
    img.paste(light, (x0, y0, x1, y1), Image.fromarray(m.astype(np.uint8), "L"))
