"""The built-in demo: a small random-weight LLaVA (real geometry where it matters: a 336px image in
576 patches, so compression behaves as it would) and a generated picture. Nothing is downloaded;
the checkpoint is written once, in this project's own format, to a cache folder."""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

from PIL import Image, ImageDraw

DEMO_VERSION = "demo-v1"
SEED = 0


def cache_root() -> str:
    return os.environ.get("PADDLE_RC_HOME", os.path.join(os.path.expanduser("~"), ".cache", "paddle_rc"))


def demo_config(clip_tok, llm_tok):
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


def write_demo_checkpoint(directory: str) -> None:
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
    config = demo_config(clip_tok, llm_tok)
    paddle.seed(SEED)
    model = LlavaForConditionalGeneration(config)
    config.save(directory)
    save_weights(model, directory)


SYNTHVQA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "synthvqa-demo")


def synthvqa_checkpoint() -> str:
    """The model trained here on the synthetic task by tools/train_demo.py (shipped in the package; its
    MODEL_CARD.md says what it can do: a grounded CLIP side, an LLM that has not learnt to read yet)."""
    if not os.path.isfile(os.path.join(SYNTHVQA_DIR, "config.json")):
        from paddle_rc.errors import UserError

        raise UserError(f"the trained synthvqa model is missing from {SYNTHVQA_DIR}; make it with "
                        f"python tools/train_demo.py --out {SYNTHVQA_DIR}")
    return SYNTHVQA_DIR


def demo_checkpoint() -> str:
    """Path of the demo checkpoint, written on first use (atomically: a folder rename)."""
    final = os.path.join(cache_root(), DEMO_VERSION)
    if os.path.isfile(os.path.join(final, "config.json")):
        if _intact(final):
            return final
        # A cache is ours to rebuild: a damaged one (killed write, full disk) is replaced, not reported.
        print(f"note: the demo checkpoint in {final} is damaged; writing it again", file=sys.stderr)
        shutil.rmtree(final, ignore_errors=True)
    os.makedirs(cache_root(), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=DEMO_VERSION + ".", dir=cache_root())
    try:
        write_demo_checkpoint(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not os.path.isfile(os.path.join(final, "config.json")):
                raise  # not a lost race with another process: a real failure
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _intact(directory: str) -> bool:
    """Config readable and the weights file complete (its header covers the whole file)."""
    from paddle_rc.errors import UserError
    from paddle_rc.models.config import LlavaConfig
    from paddle_rc.models.weights import weight_files

    try:
        LlavaConfig.load(directory)
        weight_files(directory)
    except UserError:
        return False
    return True


def demo_image() -> Image.Image:
    """A 480x360 drawn scene: sky, sun, a house, a tree and a sign (not square, to show the padding)."""
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


if __name__ == "__main__":
    print(json.dumps({"checkpoint": demo_checkpoint()}))
