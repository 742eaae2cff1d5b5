"""PaddleMIX's LLaVA checkpoints convert to the same model as the llava-hf checkpoint of the same weights.

The PaddleMIX-layout checkpoint is written by the test (tests/fixtures.py: PaddleMIX's parameter names,
Linear weights [in, out], paddle.save or safetensors, sentencepiece.bpe.model), from the very weights of
a transformers-built llava-hf checkpoint; both are converted and must give the same logits.
"""
import os

import numpy as np
import paddle
import pytest

import fixtures as F
from paddle_rc.convert import convert, open_checkpoint
from paddle_rc.errors import UserError
from paddle_rc.models import LlavaForConditionalGeneration

N_PATCHES = (F.VISION["image_size"] // F.VISION["patch_size"]) ** 2


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("paddlemix")
    clip = F.make_clip_checkpoint(str(root / "clip"), seed=0)
    hf = F.make_llava_hf_checkpoint(str(root / "hf"), seed=0)
    out = {"clip": clip}
    convert(hf["dir"], clip["dir"], str(root / "dst-hf"))
    out["hf"] = str(root / "dst-hf")
    for name, kw in {"pdparams": dict(fmt="pdparams", with_vision_tower=True),
                     "safetensors-no-tower": dict(fmt="safetensors", with_vision_tower=False)}.items():
        src = F.make_paddlemix_checkpoint(str(root / f"src-{name}"), seed=0, **kw)
        res = convert(src["dir"], clip["dir"], str(root / f"dst-{name}"))
        out[name] = (res, str(root / f"dst-{name}"))
    return out


def _logits(model, image_id, before, after, pixels):
    ids = paddle.to_tensor([before + [image_id] + after])
    with paddle.no_grad():
        return model(ids, paddle.to_tensor(pixels)).logits.numpy()


@pytest.mark.parametrize("fmt", ["pdparams", "safetensors-no-tower"])
def test_paddlemix_logits_equal_llava_hf(sources, fmt):
    res, dst = sources[fmt]
    assert res.source == "paddlemix" and res.unused_keys == []
    ours = LlavaForConditionalGeneration.from_pretrained(dst)
    ref = LlavaForConditionalGeneration.from_pretrained(sources["hf"])
    assert ours.config.image_token_index == -200 and ours.config.conv_mode == "vicuna_v1"
    rng = np.random.default_rng(3)
    before = [1] + rng.integers(3, F.SP_VOCAB, size=6).tolist()
    after = rng.integers(3, F.SP_VOCAB, size=5).tolist()
    pixels = rng.standard_normal((1, 3, F.VISION["image_size"], F.VISION["image_size"])).astype("float32")
    got = _logits(ours, -200, before, after, pixels)
    want = _logits(ref, ref.config.image_token_index, before, after, pixels)
    assert got.shape == want.shape == (1, len(before) + len(after) + N_PATCHES, F.LLAVA_HF_VOCAB)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_paddlemix_weights_equal_llava_hf_conversion(sources):
    """Tensor by tensor (a transposition or name slip would show here before it shows in logits)."""
    _, dst = sources["pdparams"]
    with open_checkpoint(dst) as a, open_checkpoint(sources["hf"]) as b:
        assert sorted(a.keys()) == sorted(b.keys())
        for k in a.keys():
            np.testing.assert_array_equal(a.get(k), b.get(k), err_msg=k)


def test_paddlemix_tokenizer_copied(sources):
    _, dst = sources["pdparams"]
    assert os.path.isfile(os.path.join(dst, "tokenizer", "tokenizer.model"))


def test_paddlemix_fused_weights_refused(tmp_path, sources):
    src = F.make_paddlemix_checkpoint(str(tmp_path / "src"), seed=1, fmt="safetensors")
    from safetensors.numpy import load_file, save_file

    path = os.path.join(src["dir"], "model.safetensors")
    sd = load_file(path)
    q = sd.pop("llama.layers.0.self_attn.q_proj.weight")
    sd["llama.layers.0.self_attn.qkv_proj.weight"] = np.concatenate([q, q, q], axis=1)
    save_file(sd, path)
    with pytest.raises(UserError, match="fused attention"):
        convert(src["dir"], sources["clip"]["dir"], str(tmp_path / "dst"))


def test_damaged_pdparams_is_one_error(tmp_path, sources):
    src = F.make_paddlemix_checkpoint(str(tmp_path / "src"), seed=1)
    path = os.path.join(src["dir"], "model_state.pdparams")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 3)
    with pytest.raises(UserError, match="cannot read .*model_state.pdparams"):
        convert(src["dir"], sources["clip"]["dir"], str(tmp_path / "dst"))
