"""A small random-weight LLaVA with LLaVA-1.5's real vision geometry (336 px image, 576 patches of
14 px), for tests of mechanics that should run at the real geometry or need a model without
preferences (varied, long answers). It used to be the library's demo model; the tools now default to
the model trained on the synthetic task (paddle_rc.demo.default_model).

    from random_model import random_checkpoint
    python tools/infer.py --model <random_checkpoint()> ...

Written once per test session (per process) into a temporary folder, removed at exit.
"""
from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile

SEED = 0
NAME = "random-576"  # the folder's name: the model id the tools report


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
        image_token_index=-200, conv_mode="vicuna_v1", source="random-test", weights_dtype="float32",
    )


def write_random_checkpoint(directory: str) -> None:
    import paddle

    from paddle_rc.data.clip_tokenizer import CLIPTokenizer
    from paddle_rc.data.llama_tokenizer import LlamaTokenizer
    from paddle_rc.data.tiny_tokenizers import build_tiny_clip_bpe, build_tiny_sentencepiece
    from paddle_rc.models import LlavaForConditionalGeneration
    from paddle_rc.models.weights import save_weights

    tok_dir = os.path.join(directory, "tokenizer")
    clip_dir = os.path.join(directory, "clip_tokenizer")
    build_tiny_sentencepiece(tok_dir)
    build_tiny_clip_bpe(clip_dir)
    config = random_config(CLIPTokenizer.from_dir(clip_dir), LlamaTokenizer.from_dir(tok_dir))
    paddle.seed(SEED)
    model = LlavaForConditionalGeneration(config)
    config.save(directory)
    save_weights(model, directory)


@functools.lru_cache(maxsize=None)
def random_checkpoint() -> str:
    """Path of the random 576-patch checkpoint (written on the first call of this process)."""
    root = tempfile.mkdtemp(prefix="paddle_rc_random_model.")
    atexit.register(shutil.rmtree, root, True)
    directory = os.path.join(root, NAME)
    os.makedirs(directory)
    write_random_checkpoint(directory)
    return directory
