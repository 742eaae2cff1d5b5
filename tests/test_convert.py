"""Checkpoint readers, the sharded writer, and llava-hf / original LLaVA / CLIP conversion."""
import collections
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import fixtures as F
from paddle_rc.convert import convert, open_checkpoint
from paddle_rc.convert import converter as converter_mod
from paddle_rc.convert.readers import SafetensorsFile, TorchBinFile, f32_to_bf16_bits
from paddle_rc.convert.writer import PlannedTensor, parse_size, write_sharded
from paddle_rc.data.tiny_tokenizers import build_tiny_clip_bpe
from paddle_rc.errors import UserError
from paddle_rc.models.config import LlavaConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ST_OF_TORCH = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def raw_of(t: torch.Tensor) -> np.ndarray:
    """What our files store for a torch tensor: BF16 as its bit pattern."""
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


# ------------------------------------------------------------------------------ source builders (per module)

@pytest.fixture(scope="module")
def clip_ckpt(tmp_path_factory):
    return F.make_clip_checkpoint(str(tmp_path_factory.mktemp("clip")), seed=0)


@pytest.fixture(scope="module")
def hf_ckpt(tmp_path_factory):
    return F.make_llava_hf_checkpoint(str(tmp_path_factory.mktemp("hf")), seed=0)


@pytest.fixture(scope="module")
def orig_ckpt(tmp_path_factory):
    extra = {"model.image_newline": torch.zeros(F.LLAMA["hidden_size"], dtype=torch.float16)}
    return F.make_llava_original_checkpoint(str(tmp_path_factory.mktemp("orig")), seed=0, shards=2,
                                            extra_keys=extra)


# ------------------------------------------------------------------------------ expected contents

def linear_weights(model) -> set:
    return {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def expected_from_llava(src: dict, memory_key_of_source, clip: dict, tower_from_clip: bool) -> dict:
    """{our name: (source tensor, is nn.Linear weight)} written independently of paddle_rc.convert.mapping."""
    lin = linear_weights(src["model"])
    out = {}
    for skey, t in src["state_dict"].items():
        mkey = memory_key_of_source(skey)
        if mkey is None:
            continue
        for pre, ours in (("model.vision_tower.vision_model.", "vision_tower."),
                          ("model.multi_modal_projector.", "projector."),
                          ("model.language_model.", "language_model."), ("lm_head.", "lm_head.")):
            if mkey.startswith(pre):
                name = (ours + mkey[len(pre):]).replace("pre_layrnorm", "pre_layernorm")
                out[name] = (t, mkey in lin)
                break
        else:
            raise AssertionError(f"unmapped source key {skey}")
    clin = linear_weights(clip["model"])
    for k, t in clip["state_dict"].items():
        if k.startswith("text_model."):
            out["text_tower." + k[len("text_model."):]] = (t, k in clin)
        elif k in ("text_projection.weight", "visual_projection.weight"):
            out[k] = (t, True)
        elif k.startswith("vision_model.") and tower_from_clip:
            name = "vision_tower." + k[len("vision_model."):].replace("pre_layrnorm", "pre_layernorm")
            out[name] = (t, k in clin)
    return out


def classic_to_memory(k):
    for old, new in (("vision_tower.", "model.vision_tower."), ("multi_modal_projector.", "model.multi_modal_projector."),
                     ("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head.")):
        if k.startswith(old):
            return new + k[len(old):]
    raise AssertionError(k)


def original_to_memory(k):
    if k.endswith("rotary_emb.inv_freq") or k == "model.image_newline":
        return None
    for old, new in (("model.vision_tower.vision_tower.", "model.vision_tower."),
                     ("model.mm_projector.0.", "model.multi_modal_projector.linear_1."),
                     ("model.mm_projector.2.", "model.multi_modal_projector.linear_2."),
                     ("model.", "model.language_model."), ("lm_head.", "lm_head.")):
        if k.startswith(old):
            return new + k[len(old):]
    raise AssertionError(k)


def check_weights(dst: str, expected: dict, out_dtype: torch.dtype) -> None:
    with open_checkpoint(dst) as r:
        assert sorted(r.keys()) == sorted(expected)
        for name, (t, is_linear) in expected.items():
            want = (t.t() if is_linear else t).to(out_dtype)
            assert r.info(name).dtype == ST_OF_TORCH[out_dtype], name
            assert r.info(name).shape == tuple(want.shape), name
            np.testing.assert_array_equal(r.raw(name), raw_of(want), err_msg=name)
            np.testing.assert_array_equal(r.get(name), want.float().numpy(), err_msg=name)


# ------------------------------------------------------------------------------ readers

def test_bin_reader_matches_torch_load(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g)
    sd = collections.OrderedDict(
        f32=torch.randn(3, 4, generator=g), f16=torch.randn(7, generator=g).half(),
        bf16=torch.randn(2, 3, 4, generator=g).to(torch.bfloat16),
        transposed=base.t(),                      # non-contiguous view
        row=base[2],                               # view at a storage offset, sharing base's storage
        base=base, scalar=torch.tensor(3.5), ints=torch.arange(5), empty=torch.zeros(0, 3),
        param=torch.nn.Parameter(torch.randn(2, 2, generator=g)))
    path = str(tmp_path / "x.bin")
    torch.save(sd, path)
    ref = torch.load(path, weights_only=True)
    f = TorchBinFile(path)
    assert list(f.infos) == list(ref)
    for k, t in ref.items():
        assert f.infos[k].shape == tuple(t.shape), k
        np.testing.assert_array_equal(f.raw(k), raw_of(t), err_msg=k)
    assert f.infos["bf16"].dtype == "BF16" and f.infos["f16"].dtype == "F16"
    f.close()


def test_bin_reader_refuses_other_globals(tmp_path):
    path = str(tmp_path / "evil.bin")
    torch.save({"w": torch.zeros(2), "x": collections.Counter(a=1)}, path)
    with pytest.raises(UserError, match="refusing to load collections.Counter"):
        TorchBinFile(path)


def test_bin_reader_rejects_non_zip(tmp_path):
    path = tmp_path / "old.bin"
    path.write_bytes(b"\x80\x02not a zip")
    with pytest.raises(UserError, match="not a zip-format torch checkpoint"):
        TorchBinFile(str(path))


def test_safetensors_reader_dtypes(tmp_path):
    g = torch.Generator().manual_seed(1)
    sd = {"a": torch.randn(4, 3, generator=g), "b": torch.randn(5, generator=g).half(),
          "c": torch.randn(3, 2, generator=g).to(torch.bfloat16), "d": torch.arange(6).reshape(2, 3)}
    path = str(tmp_path / "model.safetensors")
    save_file(sd, path)
    f = SafetensorsFile(path)
    assert {k: i.dtype for k, i in f.infos.items()} == {"a": "F32", "b": "F16", "c": "BF16", "d": "I64"}
    for k, t in sd.items():
        np.testing.assert_array_equal(f.raw(k), raw_of(t))
    with open_checkpoint(str(tmp_path)) as r:
        assert r.get("c").dtype == np.float32 and r.get("b").dtype == np.float16
        np.testing.assert_array_equal(r.get("c"), sd["c"].float().numpy())
    f.close()


def test_sharded_bin_reader_matches_torch_load(orig_ckpt):
    d = orig_ckpt["dir"]
    index = json.load(open(os.path.join(d, "pytorch_model.bin.index.json")))["weight_map"]
    ref = {}
    for shard in sorted(set(index.values())):
        ref.update(torch.load(os.path.join(d, shard), weights_only=True))
    with open_checkpoint(d) as r:
        assert sorted(r.keys()) == sorted(ref)
        for k, t in ref.items():
            np.testing.assert_array_equal(r.raw(k), raw_of(t), err_msg=k)


def test_bf16_rounding_matches_torch():
    g = torch.Generator().manual_seed(2)
    x = torch.cat([torch.randn(10000, generator=g) * 10 ** torch.randint(-40, 38, (10000,), generator=g).float(),
                   torch.tensor([0.0, -0.0, float("inf"), float("-inf"), 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8,
                                 3.4e38, 1e-45, -1e-40])])
    ours = f32_to_bf16_bits(x.numpy())
    np.testing.assert_array_equal(ours, raw_of(x.to(torch.bfloat16)))
    nan_bits = f32_to_bf16_bits(np.array([np.nan], np.float32))
    assert np.isnan((nan_bits.astype(np.uint32) << 16).view(np.float32)).all()


# ------------------------------------------------------------------------------ writer

def test_parse_size():
    assert parse_size("2GB") == 2_000_000_000
    assert parse_size("512MiB") == 512 * 2 ** 20
    assert parse_size("100KB") == 100_000
    assert parse_size("1000") == 1000
    with pytest.raises(UserError, match="cannot parse size"):
        parse_size("two gigs")


def _plan(arrays: dict) -> list:
    dt = {np.dtype("float32"): "F32", np.dtype("float16"): "F16", np.dtype("uint16"): "BF16"}
    return [PlannedTensor(k, dt[a.dtype], a.shape, (lambda a=a: a)) for k, a in arrays.items()]


def test_writer_shards_and_index(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {f"t{i}": rng.standard_normal((10, 10)).astype(np.float32) for i in range(7)}   # 400 B each
    arrays["big"] = rng.standard_normal((30, 30)).astype(np.float32)                        # 3600 B > limit
    arrays["h"] = rng.standard_normal(5).astype(np.float16)
    files = write_sharded(str(tmp_path), _plan(arrays), max_shard_bytes=1000)
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    index = json.load(open(tmp_path / "model.safetensors.index.json"))["weight_map"]
    assert sorted(index) == sorted(arrays) and sorted(set(index.values())) == sorted(files)
    for name in files:
        stored = load_file(str(tmp_path / name))       # the reference safetensors library accepts our files
        size = sum(v.numel() * v.element_size() for v in stored.values())
        assert size <= 1000 or list(stored) == ["big"]
        for k, v in stored.items():
            np.testing.assert_array_equal(v.numpy(), arrays[k])
    assert not [n for n in os.listdir(tmp_path) if "tmp" in n]


def test_writer_single_file_and_replaces_old_shards(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.float16)}
    write_sharded(str(tmp_path), _plan(arrays), max_shard_bytes=20)
    assert (tmp_path / "model.safetensors.index.json").exists()
    write_sharded(str(tmp_path), _plan(arrays), max_shard_bytes=10 ** 6)
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]
    stored = load_file(str(tmp_path / "model.safetensors"))
    np.testing.assert_array_equal(stored["a"].numpy(), arrays["a"])


def test_writer_interrupted_leaves_no_complete_looking_file(tmp_path):
    def boom():
        raise KeyboardInterrupt

    plan = _plan({"a": np.zeros(10, np.float32)}) + [PlannedTensor("b", "F32", (3,), boom)]
    with pytest.raises(KeyboardInterrupt):
        write_sharded(str(tmp_path), plan, max_shard_bytes=30)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------ conversion

def _load_cfg(dst) -> LlavaConfig:
    return LlavaConfig.load(dst)


def test_convert_llava_hf_classic(tmp_path, hf_ckpt, clip_ckpt):
    dst = str(tmp_path / "out")
    res = convert(hf_ckpt["dir"], clip_ckpt["dir"], dst)
    assert res.files == ["model.safetensors"] and res.unused_keys == [] and res.source == "llava-hf"
    check_weights(dst, expected_from_llava(hf_ckpt, classic_to_memory, clip_ckpt, False), torch.float32)
    cfg = _load_cfg(dst)
    assert cfg.source == "llava-hf" and cfg.conv_mode == "llava_hf" and cfg.weights_dtype == "float32"
    assert cfg.image_token_index == F.IMAGE_TOKEN_ID and cfg.vision_feature_layer == -2
    assert (cfg.llm.vocab_size, cfg.llm.hidden_size, cfg.llm.intermediate_size, cfg.llm.num_hidden_layers,
            cfg.llm.num_attention_heads, cfg.llm.num_key_value_heads, cfg.llm.rms_norm_eps,
            cfg.llm.max_position_embeddings, cfg.llm.pad_token_id) == (
        F.LLAVA_HF_VOCAB, 64, 96, 2, 4, 2, 1e-5, 256, F.PAD_TOKEN_ID)
    v, t = cfg.vision, cfg.text
    assert (v.hidden_size, v.intermediate_size, v.num_hidden_layers, v.num_attention_heads, v.image_size,
            v.patch_size, v.projection_dim, v.hidden_act) == (32, 64, 3, 4, 28, 14, 16, "quick_gelu")
    assert (t.vocab_size, t.hidden_size, t.num_hidden_layers, t.projection_dim, t.bos_token_id,
            t.eos_token_id, t.pad_token_id) == (F.CLIP_VOCAB, 32, 2, 16, F.CLIP_VOCAB - 2, F.CLIP_VOCAB - 1,
                                                 F.CLIP_VOCAB - 1)
    tok = json.load(open(os.path.join(dst, "tokenizer", "tokenizer_config.json")))
    assert tok == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": F.PAD_TOKEN_ID, "image_token": "<image>",
                   "image_token_id": F.IMAGE_TOKEN_ID, "add_bos_token": True}
    for src, out in (("tokenizer.model", "tokenizer/tokenizer.model"), ("vocab.json", "clip_tokenizer/vocab.json"),
                     ("merges.txt", "clip_tokenizer/merges.txt")):
        base = hf_ckpt["dir"] if src == "tokenizer.model" else clip_ckpt["dir"]
        assert open(os.path.join(base, src), "rb").read() == open(os.path.join(dst, out), "rb").read()


@pytest.mark.parametrize("new,dtype,in_shard,out_shard,tied", [
    (True, torch.bfloat16, "40KB", "100KB", False),
    (False, torch.float16, "40KB", None, False),
    (True, torch.float32, None, None, True),
])
def test_convert_llava_hf_variants(tmp_path, clip_ckpt, new, dtype, in_shard, out_shard, tied):
    src = F.make_llava_hf_checkpoint(str(tmp_path / "src"), seed=3, new_key_spelling=new, dtype=dtype,
                                     max_shard_size=in_shard, tie_word_embeddings=tied)
    keys = src["state_dict"]
    assert any(k.startswith("model.language_model.") for k in keys) == new
    assert os.path.exists(os.path.join(src["dir"], "model.safetensors.index.json")) == (in_shard is not None)
    dst = str(tmp_path / "out")
    res = convert(src["dir"], clip_ckpt["dir"], dst, shard_size=out_shard or "2GB")
    assert (len(res.files) > 1) == (out_shard is not None)
    to_mem = (lambda k: k) if new else classic_to_memory
    expected = expected_from_llava(src, to_mem, clip_ckpt, False)
    if tied:
        assert "lm_head.weight" not in keys
        emb = keys["model.language_model.embed_tokens.weight"]
        expected["lm_head.weight"] = (emb, True)
        assert res.notes and "tied" in res.notes[0]
    check_weights(dst, expected, dtype)
    cfg = _load_cfg(dst)
    assert cfg.weights_dtype == {torch.float32: "float32", torch.float16: "float16",
                                 torch.bfloat16: "bfloat16"}[dtype]


def test_convert_original_llava(tmp_path, orig_ckpt, clip_ckpt):
    dst = str(tmp_path / "out")
    res = convert(orig_ckpt["dir"], clip_ckpt["dir"], dst, shard_size="50KB")
    assert res.source == "llava" and len(res.files) > 1
    # rotary inv_freq is dropped silently; a key we have no place for is reported.
    assert res.unused_keys == ["model.image_newline"]
    assert "1 unused source key(s): model.image_newline" in res.summary()
    # No vision tower in the checkpoint: it comes from CLIP, stored in the checkpoint's dtype (fp16).
    check_weights(dst, expected_from_llava(orig_ckpt, original_to_memory, clip_ckpt, True), torch.float16)
    cfg = _load_cfg(dst)
    assert (cfg.source, cfg.conv_mode, cfg.image_token_index, cfg.weights_dtype) == ("llava", "vicuna_v1", -200,
                                                                                     "float16")
    assert cfg.llm.vocab_size == F.SP_VOCAB and cfg.llm.pad_token_id == 0 and cfg.llm.num_key_value_heads == 4
    tok = json.load(open(os.path.join(dst, "tokenizer", "tokenizer_config.json")))
    assert tok["image_token_id"] is None and tok["pad_token_id"] == 0


def test_convert_original_with_own_vision_tower(tmp_path):
    clip = F.make_clip_checkpoint(str(tmp_path / "clip"), seed=5)     # a different tower than the checkpoint's
    src = F.make_llava_original_checkpoint(str(tmp_path / "src"), seed=6, shards=3, dtype=torch.bfloat16,
                                           with_vision_tower=True, with_inv_freq=False)
    dst = str(tmp_path / "out")
    res = convert(src["dir"], clip["dir"], dst)
    assert res.unused_keys == []
    check_weights(dst, expected_from_llava(src, original_to_memory, clip, False), torch.bfloat16)
    with open_checkpoint(dst) as r:
        ours = r.get("vision_tower.embeddings.class_embedding")
    assert not np.array_equal(ours, clip["state_dict"]["vision_model.embeddings.class_embedding"].numpy())


@pytest.mark.parametrize("dtype,torch_dtype", [("float32", torch.float32), ("float16", torch.float16)])
def test_convert_dtype_option(tmp_path, clip_ckpt, dtype, torch_dtype):
    src = F.make_llava_hf_checkpoint(str(tmp_path / "src"), seed=4, dtype=torch.bfloat16)
    dst = str(tmp_path / "out")
    convert(src["dir"], clip_ckpt["dir"], dst, dtype=dtype)
    check_weights(dst, expected_from_llava(src, classic_to_memory, clip_ckpt, False), torch_dtype)
    assert _load_cfg(dst).weights_dtype == dtype


def test_reconvert_into_same_dst(tmp_path, hf_ckpt, clip_ckpt):
    dst = str(tmp_path / "out")
    convert(hf_ckpt["dir"], clip_ckpt["dir"], dst, shard_size="30KB")
    n = len([f for f in os.listdir(dst) if f.endswith(".safetensors")])
    assert n > 1
    convert(hf_ckpt["dir"], clip_ckpt["dir"], dst)
    assert sorted(f for f in os.listdir(dst) if "safetensors" in f) == ["model.safetensors"]
    check_weights(dst, expected_from_llava(hf_ckpt, classic_to_memory, clip_ckpt, False), torch.float32)


def test_failed_conversion_removes_old_config(tmp_path, hf_ckpt, clip_ckpt, monkeypatch):
    dst = str(tmp_path / "out")
    convert(hf_ckpt["dir"], clip_ckpt["dir"], dst)
    calls = {"n": 0}
    real = converter_mod.cast_raw

    def flaky(*a):
        calls["n"] += 1
        if calls["n"] == 20:
            raise KeyboardInterrupt
        return real(*a)

    monkeypatch.setattr(converter_mod, "cast_raw", flaky)
    with pytest.raises(KeyboardInterrupt):
        convert(hf_ckpt["dir"], clip_ckpt["dir"], dst)
    left = os.listdir(dst)
    assert "config.json" not in left and not [f for f in left if "tmp" in f]


# ------------------------------------------------------------------------------ errors

def _copy(src_dir, tmp_path, name="copy"):
    d = str(tmp_path / name)
    shutil.copytree(src_dir, d)
    return d


def _err(src, clip, dst, match):
    with pytest.raises(UserError) as e:
        convert(src, clip, dst)
    assert match in str(e.value), str(e.value)
    return str(e.value)


def test_error_missing_src_dir(tmp_path, clip_ckpt):
    _err(str(tmp_path / "nope"), clip_ckpt["dir"], str(tmp_path / "o"),
         f"--src directory not found: {tmp_path / 'nope'}")


def test_error_missing_config(tmp_path, hf_ckpt, clip_ckpt):
    d = _copy(hf_ckpt["dir"], tmp_path)
    os.remove(os.path.join(d, "config.json"))
    _err(d, clip_ckpt["dir"], str(tmp_path / "o"), f"{d} has no config.json")


def test_error_missing_shard(tmp_path, clip_ckpt):
    src = F.make_llava_hf_checkpoint(str(tmp_path / "src"), seed=0, max_shard_size="40KB")
    shard = sorted(f for f in os.listdir(src["dir"]) if f.startswith("model-"))[1]
    os.remove(os.path.join(src["dir"], shard))
    msg = _err(src["dir"], clip_ckpt["dir"], str(tmp_path / "o"), "model.safetensors.index.json names shard(s)")
    assert shard in msg
    assert not os.path.exists(tmp_path / "o")


def test_error_missing_bin_shard(tmp_path, orig_ckpt, clip_ckpt):
    d = _copy(orig_ckpt["dir"], tmp_path)
    os.remove(os.path.join(d, "pytorch_model-00002-of-00002.bin"))
    _err(d, clip_ckpt["dir"], str(tmp_path / "o"), "missing from")
    _err(d, clip_ckpt["dir"], str(tmp_path / "o"), "pytorch_model-00002-of-00002.bin")


def test_error_missing_tokenizer(tmp_path, hf_ckpt, clip_ckpt):
    d = _copy(hf_ckpt["dir"], tmp_path)
    os.remove(os.path.join(d, "tokenizer.model"))
    _err(d, clip_ckpt["dir"], str(tmp_path / "o"), f"{d} has no tokenizer.model")


def test_error_missing_clip_for_llava_hf(tmp_path, hf_ckpt):
    msg = _err(hf_ckpt["dir"], None, str(tmp_path / "o"), "--clip is required")
    assert "llava-hf" in msg and "text tower" in msg


def test_error_non_clip_clip_dir(tmp_path, hf_ckpt):
    _err(hf_ckpt["dir"], hf_ckpt["dir"], str(tmp_path / "o"),
         f"--clip dir {hf_ckpt['dir']} is not a CLIP checkpoint: its config.json has model_type 'llava'")


def test_error_clip_without_text_model(tmp_path, hf_ckpt, clip_ckpt):
    d = _copy(clip_ckpt["dir"], tmp_path)
    path = os.path.join(d, "model.safetensors")
    sd = {k: v for k, v in load_file(path).items() if not k.startswith("text_model.")}
    save_file(sd, path)
    _err(hf_ckpt["dir"], d, str(tmp_path / "o"), f"--clip dir {d} has no text_model weights")


def test_error_clip_without_tokenizer_files(tmp_path, hf_ckpt, clip_ckpt):
    d = _copy(clip_ckpt["dir"], tmp_path)
    os.remove(os.path.join(d, "merges.txt"))
    _err(hf_ckpt["dir"], d, str(tmp_path / "o"), f"--clip dir {d} has no vocab.json/merges.txt")


def test_error_clip_swapped_with_src(tmp_path, clip_ckpt):
    _err(clip_ckpt["dir"], clip_ckpt["dir"], str(tmp_path / "o"), "is a CLIP checkpoint, not LLaVA: pass it as --clip")


def test_error_unknown_layout(tmp_path, clip_ckpt):
    d = tmp_path / "bert"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    _err(str(d), clip_ckpt["dir"], str(tmp_path / "o"), "unknown source layout")


def test_error_missing_language_weights(tmp_path, hf_ckpt, clip_ckpt):
    d = _copy(hf_ckpt["dir"], tmp_path)
    path = os.path.join(d, "model.safetensors")
    sd = load_file(path)
    del sd["language_model.model.layers.1.mlp.up_proj.weight"]
    save_file(sd, path)
    _err(d, clip_ckpt["dir"], str(tmp_path / "o"),
         f"checkpoint {d} lacks language_model weights: language_model.layers.1.mlp.up_proj.weight")


def test_error_mismatched_clip(tmp_path, hf_ckpt):
    d = str(tmp_path / "bigclip")
    cfg = transformers.CLIPConfig(text_config=dict(F.CLIP_TEXT), projection_dim=16,
                                  vision_config=dict(F.VISION, hidden_size=48, num_attention_heads=4))
    transformers.CLIPModel(cfg).save_pretrained(d)
    build_tiny_clip_bpe(d)
    _err(hf_ckpt["dir"], d, str(tmp_path / "o"),
         "does not match the LLaVA vision tower: CLIP vision hidden_size 48, LLaVA vision hidden_size 32")


def test_error_shape_mismatch(tmp_path, hf_ckpt, clip_ckpt):
    d = _copy(hf_ckpt["dir"], tmp_path)
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg["text_config"]["intermediate_size"] = 100
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    _err(d, clip_ckpt["dir"], str(tmp_path / "o"), "weights do not match the config")


# ------------------------------------------------------------------------------ CLI

def _cli(*args):
    return subprocess.run([sys.executable, "tools/convert.py", *args], cwd=REPO, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, timeout=120)


def test_cli_success_and_error(tmp_path, orig_ckpt, clip_ckpt):
    dst = str(tmp_path / "out")
    p = _cli("--src", orig_ckpt["dir"], "--clip", clip_ckpt["dir"], "--dst", dst, "--shard-size", "60KB")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"converted llava checkpoint to {dst}: 118 tensors")
    assert _load_cfg(dst).source == "llava"

    p = _cli("--src", orig_ckpt["dir"], "--dst", str(tmp_path / "o2"))
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --clip is required")


def test_llava_hf_config_defaults_follow_transformers():
    # llava-1.5-7b-hf's config.json lists only what differs from the transformers defaults.
    text = {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"],
            "max_position_embeddings": 4096, "model_type": "llama", "rms_norm_eps": 1e-05,
            "torch_dtype": "float16", "vocab_size": 32064}
    vision = {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096, "model_type": "clip_vision_model",
              "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768,
              "vocab_size": 32000}
    llm = converter_mod._llama_config(text, 32001, "cfg")
    ref = transformers.LlamaConfig(**text)
    assert (llm.hidden_size, llm.intermediate_size, llm.num_hidden_layers, llm.num_attention_heads,
            llm.num_key_value_heads, llm.rope_theta, llm.vocab_size, llm.max_position_embeddings,
            llm.rms_norm_eps, llm.bos_token_id, llm.eos_token_id, llm.pad_token_id) == (
        ref.hidden_size, ref.intermediate_size, ref.num_hidden_layers, ref.num_attention_heads,
        ref.num_key_value_heads, ref.rope_theta, 32064, 4096, 1e-5, 1, 2, 32001)
    v = converter_mod._vision_config(vision, 768, "cfg")
    vref = transformers.CLIPVisionConfig(**vision)
    assert (v.hidden_size, v.intermediate_size, v.num_hidden_layers, v.num_attention_heads, v.image_size,
            v.patch_size, v.num_channels, v.layer_norm_eps, v.hidden_act) == (
        vref.hidden_size, vref.intermediate_size, vref.num_hidden_layers, vref.num_attention_heads,
        vref.image_size, vref.patch_size, vref.num_channels, vref.layer_norm_eps, vref.hidden_act)
    # and fields missing altogether take the transformers defaults too
    bare = converter_mod._vision_config({}, 512, "cfg")
    dref = transformers.CLIPVisionConfig()
    assert (bare.hidden_size, bare.patch_size, bare.image_size) == (dref.hidden_size, dref.patch_size,
                                                                    dref.image_size)
    with pytest.raises(UserError, match="rope_scaling"):
        converter_mod._llama_config(dict(text, rope_scaling={"type": "linear", "factor": 2.0}), 0, "cfg")
