"""The built-in demo: the small LLaVA-1.5 trained here on the synthetic VQA task (shipped in
paddle_rc/assets/synthvqa-demo; tools/train_demo.py makes it) and one fixed scene of that task with its
question. Every tool uses this model when no --model is given. It answers questions about synthetic
scenes (coloured shapes and a sign on grey) only; its model card says how well."""
from __future__ import annotations

import json
import os

from PIL import Image

# The scene shown when no image is given: item DEMO_INDEX of the synthetic stream for DEMO_SEED
# (paddle_rc.synth.make_item): a colour question about a small star, with a large star of another
# colour as a distractor. No training stream uses this seed (paddle_rc/train/batches.py: stream_seed);
# it is the seed of the README's synthvqa evaluation set.
DEMO_SEED = 20261202
DEMO_INDEX = 17

# config.json "source" of a model trained by tools/train_demo.py (paddle_rc/train/recipe.py).
DEMO_SOURCE = "synthvqa-demo"
DEFAULT_MODEL_NOTE = ("built-in demo model: a small LLaVA trained here on the synthetic task (scenes of coloured "
                      "shapes and a sign); it answers only questions about such scenes; pass --model DIR "
                      "(a checkpoint written by tools/convert.py) for a real LLaVA")

SYNTHVQA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "synthvqa-demo")


def cache_root() -> str:
    """Where paddle_rc keeps what it builds on first use (the weight-only operator)."""
    return os.environ.get("PADDLE_RC_HOME", os.path.join(os.path.expanduser("~"), ".cache", "paddle_rc"))


def default_model() -> str:
    """Directory of the model every tool uses without --model: the one trained here on the synthetic
    task by tools/train_demo.py, shipped in the package (its MODEL_CARD.md says what it can do)."""
    if not os.path.isfile(os.path.join(SYNTHVQA_DIR, "config.json")):
        from paddle_rc.errors import UserError

        raise UserError(f"the built-in demo model is missing from {SYNTHVQA_DIR} (a broken install?); pass "
                        f"--model DIR, or make it with python tools/train_demo.py --out {SYNTHVQA_DIR}")
    return SYNTHVQA_DIR


def synthvqa_checkpoint() -> str:
    """The trained synthvqa model (the same directory as default_model())."""
    return default_model()


def is_demo_config(config) -> bool:
    """True for a model trained on the synthetic task (the built-in one, or one made the same way)."""
    return getattr(config, "source", None) == DEMO_SOURCE


def _demo_item():
    from paddle_rc.synth import make_item

    return make_item(DEMO_SEED, DEMO_INDEX)


def demo_image() -> Image.Image:
    """The built-in scene: a 336x336 synthvqa picture (a few small shapes, large distractors, maybe a sign)."""
    return _demo_item().image


def demo_question() -> str:
    """The built-in scene's question (tools/infer.py's default --question)."""
    return _demo_item().question


def demo_answer() -> str:
    """The built-in question's true answer (what a model that reads the scene should say)."""
    return _demo_item().answer


if __name__ == "__main__":
    print(json.dumps({"checkpoint": default_model(), "question": demo_question(), "answer": demo_answer()}))
