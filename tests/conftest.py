import os
import sys

import numpy as np
import paddle
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# paddle_rc builds things on first use in PADDLE_RC_HOME (the weight-only operator); keep tests from
# touching the user's cache.
os.environ.setdefault("PADDLE_RC_HOME", os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache"))


def tiny_llava_config(image_token_index=-200, image_size=56, vocab=96):
    from paddle_rc.models.config import CLIPTextConfig, CLIPVisionConfig, LlamaConfig, LlavaConfig

    return LlavaConfig(
        vision=CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                                image_size=image_size, patch_size=14, projection_dim=16),
        text=CLIPTextConfig(vocab_size=80, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                            num_attention_heads=4, projection_dim=16, bos_token_id=78, eos_token_id=79,
                            pad_token_id=79),
        llm=LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512),
        image_token_index=image_token_index,
    )


def drawn_scene():
    """A 480x360 drawn scene (sky, sun, a house, a tree and a STOP sign; not square, so it is padded):
    the built-in demo picture before the demo became a synthvqa scene, kept as a test input whose
    effect on the tiny test models' compression the export tests were written against."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (480, 360))
    d = ImageDraw.Draw(img)
    for y in range(240):
        d.line([(0, y), (480, y)], fill=(90 + y // 4, 150 + y // 5, 235))
    d.rectangle([0, 240, 480, 360], fill=(70, 150, 60))
    d.ellipse([380, 30, 440, 90], fill=(250, 215, 60))
    d.rectangle([120, 160, 250, 270], fill=(190, 60, 50))
    d.polygon([(105, 165), (185, 100), (265, 165)], fill=(110, 40, 35))
    d.rectangle([170, 210, 200, 270], fill=(90, 60, 30))
    d.rectangle([135, 185, 160, 210], fill=(200, 230, 250))
    d.rectangle([325, 180, 340, 275], fill=(100, 70, 40))
    d.ellipse([295, 110, 370, 195], fill=(40, 110, 45))
    d.rectangle([40, 200, 44, 290], fill=(120, 120, 120))
    d.rectangle([18, 170, 66, 204], fill=(210, 30, 30))
    d.text((25, 180), "STOP", fill=(255, 255, 255))
    return img


def tiny_llava_model(llm_layers=None, seed=1):
    """A seeded tiny LLaVA in eval mode; llm_layers deepens its LLM (FastV prunes after layer K)."""
    from paddle_rc.models import LlavaForConditionalGeneration

    cfg = tiny_llava_config()
    if llm_layers is not None:
        cfg.llm.num_hidden_layers = llm_layers
    paddle.seed(seed)
    model = LlavaForConditionalGeneration(cfg)
    model.eval()
    return model


@pytest.fixture
def tiny_model():
    from paddle_rc.models import LlavaForConditionalGeneration

    paddle.seed(1)
    model = LlavaForConditionalGeneration(tiny_llava_config())
    model.eval()
    return model


@pytest.fixture(scope="session")
def random_model():
    """The random 576-patch checkpoint of tests/random_model.py (written once per session)."""
    from random_model import random_checkpoint

    return random_checkpoint()


@pytest.fixture
def rng():
    return np.random.default_rng(0)
