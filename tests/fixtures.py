"""Builders of tiny random checkpoints in the three real source formats (test-only; uses torch/transformers).

    make_clip_checkpoint(dir, seed)              CLIPModel.save_pretrained + tiny CLIP vocab.json/merges.txt
    make_llava_hf_checkpoint(dir, seed, ...)     LlavaForConditionalGeneration.save_pretrained (+ tokenizer.model)
    make_llava_original_checkpoint(dir, seed, ...)  liuhaotian layout: sharded pytorch_model-*.bin + mm_* config

The vision tower of every LLaVA checkpoint built with seed s is exactly the vision tower of the CLIP model
built with seed s, as with a real pair (LLaVA trains with the CLIP tower frozen). Each builder returns a dict
with "model": the transformers model in float32 whose weights equal the saved ones (upcast exactly), for
running reference computations, plus the saved "state_dict" (source key -> tensor, saved dtype) and ids.
"""
from __future__ import annotations

import json
import os

import torch
import transformers

from paddle_rc.data.tiny_tokenizers import build_tiny_clip_bpe, build_tiny_sentencepiece

SP_VOCAB = 400              # tiny sentencepiece vocabulary
LLAVA_HF_VOCAB = SP_VOCAB + 2   # + <image> + <pad>, as llava-hf adds them
IMAGE_TOKEN_ID = SP_VOCAB
PAD_TOKEN_ID = SP_VOCAB + 1
CLIP_MERGES = 300
CLIP_VOCAB = 512 + CLIP_MERGES + 2

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
              image_size=28, patch_size=14, num_channels=3, hidden_act="quick_gelu", layer_norm_eps=1e-5)
CLIP_TEXT = dict(vocab_size=CLIP_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                 bos_token_id=CLIP_VOCAB - 2, eos_token_id=CLIP_VOCAB - 1, pad_token_id=CLIP_VOCAB - 1)
PROJECTION_DIM = 16
LLAMA = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             rms_norm_eps=1e-5, max_position_embeddings=256, rope_theta=10000.0)


def _randomize(model: torch.nn.Module, seed: int) -> None:
    # HF init leaves norms at 1 and biases at 0; distinct random values make any mix-up in a conversion show.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            centre = 1.0 if p.ndim == 1 and "norm" in name else 0.0
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + centre)


def _fp32_reference(model):
    """float32 copy for reference computations. `.to(bf16/fp16)` also rounds the rotary inv_freq buffers,
    which are computed, not stored: recompute them in float32, as a float32 run of the checkpoint would."""
    model = model.float()
    for module in model.modules():
        if hasattr(module, "inv_freq") and hasattr(module, "rope_init_fn"):
            inv_freq, _ = module.rope_init_fn(module.config, None)
            module.inv_freq = inv_freq.float()
            module.original_inv_freq = module.inv_freq
    return model


def make_clip_model(seed: int = 0) -> "transformers.CLIPModel":
    cfg = transformers.CLIPConfig(text_config=dict(CLIP_TEXT), vision_config=dict(VISION),
                                  projection_dim=PROJECTION_DIM)
    torch.manual_seed(seed)
    model = transformers.CLIPModel(cfg).eval()
    _randomize(model, seed)
    return model


def make_clip_checkpoint(directory: str, seed: int = 0) -> dict:
    os.makedirs(directory, exist_ok=True)
    model = make_clip_model(seed)
    model.save_pretrained(directory, safe_serialization=True)
    vocab = build_tiny_clip_bpe(directory, n_merges=CLIP_MERGES)
    assert len(vocab) == CLIP_VOCAB
    return {"dir": directory, "model": model, "config": model.config,
            "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}}


def _llava_model(seed: int, vocab_size: int, tie_word_embeddings: bool = False,
                 num_key_value_heads: int = 2, pad_token_id: int = PAD_TOKEN_ID
                 ) -> "transformers.LlavaForConditionalGeneration":
    text = dict(LLAMA, model_type="llama", vocab_size=vocab_size, num_key_value_heads=num_key_value_heads,
                tie_word_embeddings=tie_word_embeddings, pad_token_id=pad_token_id)
    cfg = transformers.LlavaConfig(vision_config=dict(VISION, model_type="clip_vision_model"),
                                   text_config=text, image_token_index=IMAGE_TOKEN_ID, pad_token_id=pad_token_id,
                                   projector_hidden_act="gelu", vision_feature_layer=-2,
                                   vision_feature_select_strategy="default",
                                   tie_word_embeddings=tie_word_embeddings)
    torch.manual_seed(seed + 1000)
    model = transformers.LlavaForConditionalGeneration(cfg).eval()
    _randomize(model, seed + 1000)
    clip = make_clip_model(seed)
    model.model.vision_tower.vision_model.load_state_dict(clip.vision_model.state_dict())
    if tie_word_embeddings:
        model.tie_weights()
    return model


def _parse_size(s) -> int:
    if isinstance(s, int):
        return s
    units = {"KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9}
    for u, m in units.items():
        if s.upper().endswith(u):
            return int(float(s[: -len(u)]) * m)
    return int(s)


def _save_safetensors_sharded(directory: str, sd: dict, max_shard_size) -> None:
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in sd.items()}
    if max_shard_size is None:
        save_file(sd, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
        return
    limit = _parse_size(max_shard_size)
    shards, cur, size = [], {}, 0
    for k, v in sd.items():
        n = v.numel() * v.element_size()
        if cur and size + n > limit:
            shards.append(cur)
            cur, size = {}, 0
        cur[k] = v
        size += n
    shards.append(cur)
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(directory, name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)


def make_llava_hf_checkpoint(directory: str, seed: int = 0, new_key_spelling: bool = False,
                             dtype=torch.float32, max_shard_size=None, tie_word_embeddings: bool = False) -> dict:
    """llava-hf checkpoint. Classic key spelling is what save_pretrained writes; new_key_spelling writes the
    in-memory names of transformers >= 4.52 (model.language_model.*, model.vision_tower.*, lm_head.*)."""
    os.makedirs(directory, exist_ok=True)
    model = _llava_model(seed, LLAVA_HF_VOCAB, tie_word_embeddings).to(dtype)
    if new_key_spelling:
        model.config.save_pretrained(directory)
        sd = dict(model.state_dict())
        if tie_word_embeddings:
            sd.pop("lm_head.weight")
        _save_safetensors_sharded(directory, sd, max_shard_size)
    else:
        kw = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
        model.save_pretrained(directory, safe_serialization=True, **kw)
    build_tiny_sentencepiece(directory, vocab_size=SP_VOCAB)
    from safetensors import safe_open

    saved = {}
    index = os.path.join(directory, "model.safetensors.index.json")
    files = (sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index)
             else ["model.safetensors"])
    for name in files:
        with safe_open(os.path.join(directory, name), framework="pt") as f:
            for k in f.keys():
                saved[k] = f.get_tensor(k)
    return {"dir": directory, "model": _fp32_reference(model), "config": model.config, "state_dict": saved,
            "image_token_id": IMAGE_TOKEN_ID, "pad_token_id": PAD_TOKEN_ID, "vocab_size": LLAVA_HF_VOCAB}


def original_state_dict(model, vocab_size: int, with_vision_tower: bool) -> dict:
    """liuhaotian key names for the weights of an HF Llava model (embedding/lm_head cut to `vocab_size`)."""
    sd = {}
    for k, v in model.state_dict().items():
        if k.startswith("model.language_model."):
            name = "model." + k[len("model.language_model."):]
        elif k.startswith("model.multi_modal_projector.linear_1."):
            name = "model.mm_projector.0." + k.rsplit(".", 1)[1]
        elif k.startswith("model.multi_modal_projector.linear_2."):
            name = "model.mm_projector.2." + k.rsplit(".", 1)[1]
        elif k.startswith("model.vision_tower."):
            if not with_vision_tower:
                continue
            name = "model.vision_tower.vision_tower." + k[len("model.vision_tower."):]
        elif k == "lm_head.weight":
            name = k
        else:
            raise AssertionError(k)
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            v = v[:vocab_size]
        sd[name] = v.detach().clone().contiguous()
    return sd


def make_llava_original_checkpoint(directory: str, seed: int = 0, shards: int = 2, dtype=torch.float16,
                                   with_vision_tower: bool = False, with_inv_freq: bool = True,
                                   extra_keys: dict | None = None) -> dict:
    """Original (liuhaotian) LLaVA-1.5 layout: config.json with mm_* keys, model.* / model.mm_projector.{0,2}
    / lm_head.weight in `shards` torch.save files + pytorch_model.bin.index.json, tokenizer.model.

    Its vocabulary is the sentencepiece one (no <image> row: the pipeline uses the -200 sentinel). The returned
    reference "model" is an HF Llava whose first SP_VOCAB embedding/lm_head rows are the saved ones and whose
    <image> id is SP_VOCAB; compare logits[..., :SP_VOCAB]."""
    os.makedirs(directory, exist_ok=True)
    model = _llava_model(seed, SP_VOCAB + 1, num_key_value_heads=LLAMA["num_attention_heads"],
                         pad_token_id=0).to(dtype)
    sd = original_state_dict(model, SP_VOCAB, with_vision_tower)
    if with_inv_freq:
        hd = LLAMA["hidden_size"] // LLAMA["num_attention_heads"]
        inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
        for i in range(LLAMA["num_hidden_layers"]):
            sd[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv.clone()
    sd.update(extra_keys or {})
    keys = list(sd)
    per = -(-len(keys) // shards)
    weight_map = {}
    for i in range(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {k: sd[k] for k in keys[i * per:(i + 1) * per]}
        torch.save(part, os.path.join(directory, name))
        weight_map.update({k: name for k in part})
    with open(os.path.join(directory, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f, indent=2)
    config = dict(
        _name_or_path="lmsys/vicuna-7b-v1.5", architectures=["LlavaLlamaForCausalLM"], model_type="llava",
        bos_token_id=1, eos_token_id=2, pad_token_id=0, hidden_act="silu", vocab_size=SP_VOCAB,
        num_key_value_heads=LLAMA["num_attention_heads"], **LLAMA,
        image_aspect_ratio="pad", mm_hidden_size=VISION["hidden_size"], mm_projector_type="mlp2x_gelu",
        mm_use_im_patch_token=False, mm_use_im_start_end=False, mm_vision_select_feature="patch",
        mm_vision_select_layer=-2, mm_vision_tower="openai/clip-vit-large-patch14-336",
        tie_word_embeddings=False, torch_dtype=str(dtype).replace("torch.", ""), use_cache=True,
        tokenizer_model_max_length=2048, tokenizer_padding_side="right", rope_scaling=None)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    build_tiny_sentencepiece(directory, vocab_size=SP_VOCAB)
    return {"dir": directory, "model": _fp32_reference(model), "config": config, "state_dict": sd,
            "image_token_id": SP_VOCAB, "vocab_size": SP_VOCAB}


def _paddlemix_vision_name(rest: str) -> str:
    """A transformers CLIP vision parameter name (below vision_model.) in PaddleNLP's spelling, written
    from PaddleMIX's CLIP name mapping: conv1, ln_pre/ln_post, transformer.layers.N.{linear1,linear2,norm1,norm2}."""
    fixed = {"embeddings.class_embedding": "class_embedding",
             "embeddings.patch_embedding.weight": "conv1.weight",
             "embeddings.position_embedding.weight": "positional_embedding.weight"}
    if rest in fixed:
        return fixed[rest]
    for ours, theirs in (("pre_layrnorm.", "ln_pre."), ("post_layernorm.", "ln_post.")):
        if rest.startswith(ours):
            return theirs + rest[len(ours):]
    assert rest.startswith("encoder.layers."), rest
    rest = "transformer.layers." + rest[len("encoder.layers."):]
    for ours, theirs in ((".mlp.fc1.", ".linear1."), (".mlp.fc2.", ".linear2."),
                         (".layer_norm1.", ".norm1."), (".layer_norm2.", ".norm2.")):
        rest = rest.replace(ours, theirs)
    return rest


def paddlemix_state_dict(model, with_vision_tower: bool) -> dict:
    """The weights of an HF Llava model as PaddleMIX's LlavaLlamaForCausalLM names and stores them:
    llama.* / llama.mm_projector.{0,2} / llama.vision_tower.vision_tower.vision_model.* / lm_head, every
    nn.Linear weight (lm_head included) in Paddle's [in, out] layout. -> {name: float32 numpy array}."""
    linear = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    sd = {}
    for k, v in model.state_dict().items():
        arr = v.detach().float().numpy()
        if k in linear:
            arr = arr.T.copy()
        if k.startswith("model.language_model."):
            name = "llama." + k[len("model.language_model."):]
        elif k.startswith("model.multi_modal_projector.linear_"):
            idx = {"1": "0", "2": "2"}[k[len("model.multi_modal_projector.linear_")]]
            name = f"llama.mm_projector.{idx}." + k.rsplit(".", 1)[1]
        elif k.startswith("model.vision_tower.vision_model."):
            if not with_vision_tower:
                continue
            name = "llama.vision_tower.vision_tower.vision_model." + _paddlemix_vision_name(
                k[len("model.vision_tower.vision_model."):])
        elif k == "lm_head.weight":
            name = k
        else:
            raise AssertionError(k)
        sd[name] = arr
    return sd


def make_paddlemix_checkpoint(directory: str, seed: int = 0, fmt: str = "pdparams",
                              with_vision_tower: bool = True) -> dict:
    """PaddleMIX layout (paddlemix/llava/llava-v1.5-7b): config.json with the mm_* keys, the state dict as
    model_state.pdparams (paddle.save) or model.safetensors, sentencepiece.bpe.model (PaddleNLP's name).
    Same weights as make_llava_hf_checkpoint(seed) in float32, so both convert to the same model; its
    image placeholder is LLaVA's -200 and its vocabulary keeps the llava-hf rows."""
    import paddle

    os.makedirs(directory, exist_ok=True)
    model = _llava_model(seed, LLAVA_HF_VOCAB)
    sd = paddlemix_state_dict(model, with_vision_tower)
    if fmt == "pdparams":
        paddle.save({k: paddle.to_tensor(v) for k, v in sd.items()}, os.path.join(directory, "model_state.pdparams"))
    else:
        from safetensors.numpy import save_file

        save_file(sd, os.path.join(directory, "model.safetensors"))
    config = dict(
        architectures=["LlavaLlamaForCausalLM"], model_type="llava", bos_token_id=1, eos_token_id=2,
        pad_token_id=0, hidden_act="silu", vocab_size=LLAVA_HF_VOCAB, num_key_value_heads=2, **LLAMA,
        image_aspect_ratio="pad", mm_hidden_size=VISION["hidden_size"], mm_projector_type="mlp2x_gelu",
        mm_use_im_patch_token=False, mm_use_im_start_end=False, mm_vision_select_feature="patch",
        mm_vision_select_layer=-2, mm_vision_tower="openai/clip-vit-large-patch14-336",
        tie_word_embeddings=False, dtype="float32", use_cache=True, tensor_parallel_degree=1)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    build_tiny_sentencepiece(directory, vocab_size=SP_VOCAB)
    os.replace(os.path.join(directory, "tokenizer.model"), os.path.join(directory, "sentencepiece.bpe.model"))
    return {"dir": directory, "state_dict": sd}
