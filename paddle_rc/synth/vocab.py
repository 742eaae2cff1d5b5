"""The task's closed vocabularies and geometry (one place, so the tokenizers and the generator agree)."""
from __future__ import annotations

IMAGE_SIZE = 336  # LLaVA-1.5's input: 24 x 24 patches of 14 px

# Saturated, far apart in RGB (every pair differs by >= 90 in at least one channel).
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 30),
    "purple": (150, 60, 190),
    "orange": (245, 135, 30),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond")
PLURALS = {s: s + "s" for s in SHAPES}
# Three-letter words printed on the sign; none is a colour, shape, number or yes/no.
WORDS = ("cat", "dog", "sun", "car", "hat", "cup", "box", "pen")
QTYPES = ("colour", "shape", "word", "count", "exist", "spatial")
MAX_DOTS = 4              # a card shows 1..MAX_DOTS dots; count questions ask how many
# Spatial questions ask which half of the picture a small shape lies in, on one axis.
SIDES = {"x": ("left", "right"), "y": ("top", "bottom")}

BACKGROUND = 205          # light grey
NOISE = 4                 # std of the per-pixel grey noise
SIGN_COLOUR = "white"     # signs and cards are white boxes; not one of COLOURS
SMALL_SIDE = (32, 44)     # inclusive range of a small shape's side, px (2-3 patches; 1.5-2 at 224 px)
LARGE_SIDE = (90, 150)    # large distractors, px
SIGN_SIZE = (84, 40)      # sign box (w, h), px
SIGN_FONT = 34            # px; letters must survive the demo model's 224 px input (23 px there)
CARD_SIZE = (84, 40)      # card box (w, h), px: white like the sign, with black dots
DOT = 12                  # dot diameter, px (8 px at the demo model's 224 px input)
N_SMALL = (3, 7)          # small shapes per scene (the sign not counted)
N_LARGE = (1, 2)
GAP = 4                   # min free pixels between two objects' boxes
MIDLINE_GAP = 8           # a spatial question's shape stays this far from the picture's midline, px

# Every answer a question type can have (the balancing classes).
ANSWERS = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "word": WORDS,
    "count": tuple(str(k) for k in range(1, MAX_DOTS + 1)),
    "exist": ("yes", "no"),
    "spatial": SIDES["x"] + SIDES["y"],
}
