"""The built-in model and picture: what every tool uses when given no --model or --image.

The built-in model is a small LLaVA-1.5 trained on this project's synthetic VQA task
(paddle_rc/synth, paddle_rc/train; `tools/train_demo.py` reproduces it), shipped in
paddle_rc/assets/synthvqa-demo with its model card. It knows only that toy world (coloured shapes and
small signs), where it answers correctly, so compression's effect on answers can be seen and measured.

`random_checkpoint()` writes a small random-weight LLaVA (336 px, 576 patches) to a cache folder: for
measurements that want untrained weights (the quantization benchmark's agreement figures) and tests."""
from __future__ import annotations

import json
import os
import shutil
import tempfile

from PIL import Image

DEMO_VERSION = "demo-v1"  # the random checkpoint's cache folder name
SEED = 0
DEMO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "synthvqa-demo")
DEMO_SOURCES = ("demo", "synthvqa-demo")  # config.source of the random and the trained built-in model
# The built-in picture is item DEMO_ITEM of the task's stream for DEMO_SEED: a colour question about a
# small shape, with large distractors elsewhere (the case RC's text recovery exists for).
DEMO_SEED, DEMO_ITEM = 20_261_202, 0


def cache_root() -> str:
    return os.environ.get("PADDLE_RC_HOME", os.path.join(os.path.expanduser("~"), ".cache", "paddle_rc"))


def random_config(clip_tok, llm_tok):
    from paddle_rc.models.config import CLIPTextConfig, CLIPVisionConfig, LlamaConfig, LlavaConfig

    return LlavaConfig(
        vision=CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                num_attention_heads=4, image_size=336, patch_size=14, projection_dim=32),
        text=CLIPTextConfig(vocab_size=clip_tok.vocab_size, hidden_size=32, intermediate_size=64,
                            num_hidden_layers=2, num_attention_heads=4, projection_dim=32,
                            bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id,
                            pad_token_id=clip_tok.pad_token_id),
        llm=LlamaConfig(vocab_size=llm_tok.vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                        bos_token_id=llm_tok.bos_token_id, eos_token_id=llm_tok.eos_token_id,
                        pad_token_id=llm_tok.pad_token_id),
        image_token_index=-200, conv_mode="vicuna_v1", source="demo", weights_dtype="float32",
    )


def write_random_checkpoint(directory: str) -> None:
    import paddle

    from paddle_rc.data.tiny_tokenizers import build_tiny_clip_bpe, build_tiny_sentencepiece
    from paddle_rc.models import LlavaForConditionalGeneration
    from paddle_rc.models.weights import save_weights

    tok_dir = os.path.join(directory, "tokenizer")
    clip_dir = os.path.join(directory, "clip_tokenizer")
    build_tiny_sentencepiece(tok_dir)
    build_tiny_clip_bpe(clip_dir)
    from paddle_rc.data.clip_tokenizer import CLIPTokenizer
    from paddle_rc.data.llama_tokenizer import LlamaTokenizer

    llm_tok = LlamaTokenizer.from_dir(tok_dir)
    clip_tok = CLIPTokenizer.from_dir(clip_dir)
    config = random_config(clip_tok, llm_tok)
    paddle.seed(SEED)
    model = LlavaForConditionalGeneration(config)
    config.save(directory)
    save_weights(model, directory)


def demo_checkpoint() -> str:
    """Path of the built-in trained model."""
    if not os.path.isfile(os.path.join(DEMO_DIR, "config.json")):
        from paddle_rc.errors import UserError

        raise UserError(f"the built-in model is missing from {DEMO_DIR}; reinstall paddle_rc, or make it with "
                        f"python tools/train_demo.py --out {DEMO_DIR}")
    return DEMO_DIR


def random_checkpoint() -> str:
    """Path of the random-weight checkpoint, written on first use (atomically: a folder rename)."""
    final = os.path.join(cache_root(), DEMO_VERSION)
    if os.path.isfile(os.path.join(final, "config.json")):
        return final
    os.makedirs(cache_root(), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=DEMO_VERSION + ".", dir=cache_root())
    try:
        write_random_checkpoint(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not os.path.isfile(os.path.join(final, "config.json")):
                raise  # not a lost race with another process: a real failure
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def demo_item():
    """The built-in synthetic item: image, question and the right answer."""
    from paddle_rc.synth import make_item

    return make_item(DEMO_SEED, DEMO_ITEM)


def demo_image() -> Image.Image:
    return demo_item().image


def demo_question() -> str:
    return demo_item().question


if __name__ == "__main__":
    print(json.dumps({"checkpoint": demo_checkpoint(), "random_checkpoint": random_checkpoint()}))
