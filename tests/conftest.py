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
