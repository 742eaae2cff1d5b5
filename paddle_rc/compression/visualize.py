"""Picture of what a compression method kept: draw_kept_tokens()."""
from __future__ import annotations

import colorsys
import math

from PIL import Image, ImageDraw, ImageFont

VISUAL_RGB = (255, 170, 0)       # kept by the visual filter (or top-k / random / dominant)
TEXT_RGB = (0, 210, 255)         # recovered by the text score
EXTRA_RGB = (235, 235, 235)      # summed into the extra token
GRID_RGB = (20, 20, 20)
PANEL_BG = (250, 250, 250)
INK = (25, 25, 25)
_DIM = 0.25                      # brightness left on patches that were dropped
_HALF = 0.55                     # brightness of patches only summed into the extra token


def _font(size):
    for name in ("DejaVuSans.ttf", "Arial.ttf", "LiberationSans-Regular.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:            # Pillow < 10.1
        return ImageFont.load_default()


def _cluster_colour(i, light=False):
    # golden-ratio hue steps keep neighbouring cluster numbers far apart in hue; hues close to
    # the visual (orange) and text (cyan) colours are pushed away so roles stay distinguishable
    h = (0.95 + i * 0.618033988749895) % 1.0
    for fixed in (0.11, 0.53):
        if abs(h - fixed) < 0.05:
            h = (h + 0.1) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85 if not light else 0.45, 0.95 if not light else 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def _tint(img, box, rgb, alpha):
    region = img.crop(box)
    over = Image.new("RGB", region.size, rgb)
    img.paste(Image.blend(region, over, alpha), box[:2])


def draw_kept_tokens(image, result, sample=0, grid=None, path=None, canvas=768):
    """Draw the patch grid over the model-input image and colour each patch by its role.

    image: the square model-input image (PIL, already padded and resized, e.g. 336 px).
    result: a CompressionResult; sample: which batch item; grid: patches per side (default
    sqrt(N)); path: optional file to save (PNG). The image is upscaled to about `canvas` px
    and a legend panel with the per-stage counts is added on the right.
    Colours: visual filter = orange frame, text recovery = cyan frame, merge centres = a
    strong colour per cluster (numbered in output order) and their merged patches a lighter
    tint of the same hue (a patch merged into several clusters shows the first), patches only
    summed into the extra token = light veil, everything else dimmed. Returns the PIL image.
    """
    sel = result.samples[sample]
    stats = result.stats[sample]
    n = sel.n_patches
    g = grid or int(round(math.sqrt(n)))
    if g * g != n:
        raise ValueError(f"cannot lay {n} patches on a square grid; pass grid=")
    cell = max(1, canvas // g)
    side = cell * g
    base = image.convert("RGB").resize((side, side), Image.BICUBIC)
    dimmed = Image.eval(base, lambda v: int(v * _DIM))
    half = Image.eval(base, lambda v: int(v * _HALF))
    img = dimmed.copy()

    def box(p):
        r, c = divmod(p, g)
        return (c * cell, r * cell, (c + 1) * cell, (r + 1) * cell)

    def reveal(p):
        b = box(p)
        img.paste(base.crop(b), b[:2])

    owner = {}
    for ci, centre in enumerate(sel.centres):
        for m in sel.members.get(centre, []):
            owner.setdefault(m, ci)
    centre_idx = {p: i for i, p in enumerate(sel.centres)}
    for p in sel.extra:
        if p not in owner and p not in centre_idx:
            b = box(p)
            img.paste(half.crop(b), b[:2])
            _tint(img, b, EXTRA_RGB, 0.12)
    for p, ci in owner.items():
        if p in centre_idx:
            continue
        reveal(p)
        _tint(img, box(p), _cluster_colour(ci, light=True), 0.55)
    for p in sel.visual + sel.text:
        reveal(p)
    for p, ci in centre_idx.items():
        reveal(p)
        _tint(img, box(p), _cluster_colour(ci), 0.7)

    draw = ImageDraw.Draw(img)
    for i in range(g + 1):
        draw.line([(i * cell, 0), (i * cell, side)], fill=GRID_RGB, width=1)
        draw.line([(0, i * cell), (side, i * cell)], fill=GRID_RGB, width=1)
    frame = max(2, cell // 9)
    for p in sel.visual:
        draw.rectangle(box(p), outline=VISUAL_RGB, width=frame)
    for p in sel.text:
        draw.rectangle(box(p), outline=TEXT_RGB, width=frame)
    digits = len(str(len(centre_idx)))
    label_font = _font(max(8, int(cell * (0.5 if digits <= 2 else 0.34))))
    for p, ci in centre_idx.items():
        x0, y0, x1, y1 = box(p)
        draw.rectangle((x0, y0, x1, y1), outline=(255, 255, 255), width=frame)
        if cell >= 14:
            draw.text(((x0 + x1) / 2, (y0 + y1) / 2), str(ci + 1), fill=(255, 255, 255),
                      font=label_font, anchor="mm", stroke_width=2, stroke_fill=(0, 0, 0))

    panel_w = max(300, side // 2)
    out = Image.new("RGB", (side + panel_w, side), PANEL_BG)
    out.paste(img, (0, 0))
    d = ImageDraw.Draw(out)
    title, body, small = _font(26), _font(19), _font(15)
    x, y = side + 22, 20
    d.text((x, y), f"method: {result.method}", fill=INK, font=title)
    y += 38
    total = stats["total"]
    d.text((x, y), f"{total} of {n} tokens ({100.0 * total / n:.1f}%)", fill=INK, font=body)
    y += 28
    if stats["budget"] is not None:
        d.text((x, y), f"budget: {stats['budget']}", fill=INK, font=small)
        y += 22
    llm_layer = getattr(result, "llm_layer", None)  # an in-LLM method (FastV): see methods.fastv
    if llm_layer is not None:
        d.text((x, y), f"FastV: kept after LLM layer {llm_layer}: {len(result.llm_kept[sample])} of {n}",
               fill=INK, font=small)
        y += 22
    y += 14

    def swatch(rgb, text, framed=False, light=None):
        nonlocal y
        sq = (x, y, x + 26, y + 26)
        if framed:
            d.rectangle(sq, fill=(150, 150, 150), outline=rgb, width=4)
        else:
            d.rectangle(sq, fill=rgb, outline=(90, 90, 90))
        if light is not None:
            d.rectangle((x + 30, y, x + 56, y + 26), fill=light, outline=(90, 90, 90))
        d.text((x + (64 if light is not None else 38), y + 3), text, fill=INK, font=body)
        y += 38

    n_cent = stats["centres"] + stats["spatial"]
    kept_label = "kept in the LLM" if llm_layer is not None else "visual filter"
    swatch(VISUAL_RGB, f"{kept_label}: {stats['visual']}", framed=True)
    swatch(TEXT_RGB, f"text recovery: {stats['text']}", framed=True)
    swatch(_cluster_colour(0), f"merge centres: {n_cent}", light=_cluster_colour(0, light=True))
    d.text((x + 64, y - 12), "centre / its merged patches", fill=(90, 90, 90), font=small)
    d.text((x + 64, y + 5), "(shared patches: first cluster)", fill=(90, 90, 90), font=small)
    y += 32
    if stats["spatial"]:
        d.text((x + 64, y - 6), f"({stats['spatial']} spatially sampled)", fill=(90, 90, 90), font=small)
        y += 20
    swatch(tuple(int(v * _HALF * 0.88 + 0.12 * e) for v, e in zip((200, 200, 200), EXTRA_RGB)),
           f"extra token: {stats['extra']} ({len(sel.extra)} patches)")
    swatch(tuple(int(v * _DIM) for v in (200, 200, 200)), "dropped / not used")
    y += 6
    d.text((x, y), "output order: kept (raster),", fill=(90, 90, 90), font=small)
    d.text((x, y + 19), "centres 1..L, extra token", fill=(90, 90, 90), font=small)
    y += 50
    for note in stats["notes"]:
        for line in _wrap(note, 32):
            d.text((x, y), line, fill=(160, 40, 40), font=small)
            y += 19
    if path is not None:
        out.save(path)
    return out


def _wrap(text, width):
    words, lines, cur = text.split(), [], ""
    for w in words:
        if len(cur) + len(w) + 1 > width and cur:
            lines.append(cur)
            cur = w
        else:
            cur = (cur + " " + w).strip()
    if cur:
        lines.append(cur)
    return lines
