"""Converted checkpoints are the same model as transformers': logits, CLIP text features, greedy ids.

Checkpoints are built by transformers in the three real formats (tests/fixtures.py), converted with
paddle_rc.convert, loaded with from_pretrained, and compared in float32.
"""
import numpy as np
import paddle
import pytest
import torch

from fixtures import (IMAGE_TOKEN_ID, SP_VOCAB, VISION, make_clip_checkpoint, make_llava_hf_checkpoint,
                      make_llava_original_checkpoint)
from paddle_rc.convert import convert
from paddle_rc.models import LlavaForConditionalGeneration

N_PATCHES = (VISION["image_size"] // VISION["patch_size"]) ** 2

FORMATS = {
    "llava-hf": dict(builder=make_llava_hf_checkpoint, kw={}),
    "llava-hf-new-keys-bf16": dict(builder=make_llava_hf_checkpoint,
                                   kw=dict(new_key_spelling=True, dtype=torch.bfloat16, max_shard_size="20KB")),
    "llava-original-fp16": dict(builder=make_llava_original_checkpoint, kw=dict(shards=2)),
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    clip = make_clip_checkpoint(str(root / "clip"), seed=0)
    out = {"clip": clip}
    for name, spec in FORMATS.items():
        src = spec["builder"](str(root / f"src-{name}"), seed=0, **spec["kw"])
        dst = str(root / f"dst-{name}")
        convert(src["dir"], clip["dir"], dst)
        out[name] = (src, LlavaForConditionalGeneration.from_pretrained(dst), dst)
    return out


def _prompt(rng, n_before=5, n_after=4):
    return ([1] + rng.integers(3, SP_VOCAB, size=n_before).tolist(), rng.integers(3, SP_VOCAB, size=n_after).tolist())


def _inputs(ours_image_id, before, after):
    ours = before + [ours_image_id] + after
    ref = before + [IMAGE_TOKEN_ID] * N_PATCHES + after
    return ours, ref


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_logits_equal_transformers(converted, fmt):
    src, model, _ = converted[fmt]
    rng = np.random.default_rng(7)
    before, after = _prompt(rng)
    ours_ids, ref_ids = _inputs(model.config.image_token_index, before, after)
    pixels = rng.standard_normal((1, 3, VISION["image_size"], VISION["image_size"])).astype("float32")
    with torch.no_grad():
        ref = src["model"](input_ids=torch.tensor([ref_ids]), pixel_values=torch.tensor(pixels)).logits.numpy()
    with paddle.no_grad():
        got = model(paddle.to_tensor([ours_ids]), paddle.to_tensor(pixels)).logits.numpy()
    assert got.shape[:2] == (1, len(ours_ids) - 1 + N_PATCHES)
    v = got.shape[-1]  # original checkpoints have no <image> row; compare the shared vocabulary
    np.testing.assert_allclose(got, ref[..., :v], atol=1e-4, rtol=0)


def test_text_features_equal_clip(converted):
    clip = converted["clip"]
    _, model, dst = converted["llava-hf"]
    from paddle_rc.data.clip_tokenizer import CLIPTokenizer

    tok = CLIPTokenizer.from_dir(f"{dst}/clip_tokenizer")
    texts = ["What is on the sofa?", "a photo of two cats, sleeping", "x", "long " * 100]
    ids, _ = tok.encode_batch(texts)
    with torch.no_grad():
        ref = clip["model"].get_text_features(input_ids=torch.tensor(ids)).numpy()
    got = model.get_text_features(paddle.to_tensor(ids)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("fmt", ["llava-hf", "llava-original-fp16"])
def test_greedy_generation_equals_transformers(converted, fmt):
    src, model, _ = converted[fmt]
    rng = np.random.default_rng(11)
    before, after = _prompt(rng, 3, 6)
    ours_ids, ref_ids = _inputs(model.config.image_token_index, before, after)
    pixels = rng.standard_normal((1, 3, VISION["image_size"], VISION["image_size"])).astype("float32")
    # Original checkpoints have no <image> row; the reference does, and must never pick it.
    suppress = [SP_VOCAB] if fmt == "llava-original-fp16" else None
    with torch.no_grad():
        ref = src["model"].generate(input_ids=torch.tensor([ref_ids]), pixel_values=torch.tensor(pixels),
                                    max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0,
                                    suppress_tokens=suppress)
    ref_new = ref[0, len(ref_ids):].tolist()
    got = model.generate(paddle.to_tensor([ours_ids]), paddle.to_tensor(pixels), max_new_tokens=16,
                         eos_token_id=-1).tokens[0].tolist()
    assert len(ref_new) == 16
    assert got == ref_new


def test_pipeline_runs_on_converted_checkpoint(converted):
    from PIL import Image

    from paddle_rc.predictor import build_predictor

    _, _, dst = converted["llava-original-fp16"]
    predictor = build_predictor(model_dir=dst, method="none")
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8))
    out = predictor.answer(img, "What is this?", max_new_tokens=4)
    assert out["visual_tokens"] == N_PATCHES
    assert isinstance(out["text"], str)
    assert out["prompt"].startswith("A chat between a curious user")
