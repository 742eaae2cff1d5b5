"""Convert a llava-hf, original LLaVA or PaddleMIX LLaVA checkpoint plus an OpenAI CLIP checkpoint into our format.

See docs/checkpoint.md for the output. Everything is validated (config, every expected tensor and its
shape, tokenizers) before the first byte is written, so a wrong source fails fast with one message.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field

import numpy as np

from paddle_rc.convert import mapping
from paddle_rc.convert.readers import DTYPE_NAMES, CheckpointReader, cast_raw, open_checkpoint
from paddle_rc.convert.writer import DEFAULT_SHARD_BYTES, PlannedTensor, parse_size, write_sharded
from paddle_rc.errors import UserError
from paddle_rc.models.config import (CLIP_MEAN, CLIP_STD, CLIPTextConfig, CLIPVisionConfig, LlamaConfig,
                                     LlavaConfig)

SOURCE_LLAVA_HF = "llava-hf"
SOURCE_LLAVA = "llava"
SOURCE_PADDLEMIX = "paddlemix"   # PaddleMIX's LLaVA: the original layout's config, Paddle's names and layout
SP_MODEL_NAMES = ("tokenizer.model", "sentencepiece.bpe.model")   # transformers', PaddleNLP's
DTYPE_CHOICES = {"keep": None, "float16": "F16", "float32": "F32", "bfloat16": "BF16"}
IMAGE_TOKEN = "<image>"

# Defaults of the transformers config classes, used when a config.json leaves a field out (llava-hf
# configs only list what differs from these, e.g. no hidden_size for the 7B text model).
HF_CLIP_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                               num_attention_heads=12, image_size=224, patch_size=32, num_channels=3,
                               layer_norm_eps=1e-5, hidden_act="quick_gelu")
HF_CLIP_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                             num_attention_heads=8, max_position_embeddings=77, layer_norm_eps=1e-5,
                             hidden_act="quick_gelu")
HF_CLIP_PROJECTION_DIM = 512
HF_LLAMA_DEFAULTS = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=None, rms_norm_eps=1e-6,
                         rope_theta=10000.0, max_position_embeddings=2048, bos_token_id=1, eos_token_id=2)
HF_LLAVA_IMAGE_TOKEN_INDEX = 32000


@dataclass
class ConvertResult:
    source: str
    dst: str
    dtype: str
    n_tensors: int
    n_bytes: int
    files: list
    unused_keys: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def summary(self) -> str:
        shards = f"{len(self.files)} shard{'s' if len(self.files) != 1 else ''}"
        s = (f"converted {self.source} checkpoint to {self.dst}: {self.n_tensors} tensors, "
             f"{_human(self.n_bytes)} {self.dtype} in {shards}")
        if self.unused_keys:
            head = ", ".join(self.unused_keys[:3]) + (", ..." if len(self.unused_keys) > 3 else "")
            s += f"; {len(self.unused_keys)} unused source key(s): {head}"
        return s


# ------------------------------------------------------------------------------------------ helpers

def _human(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _load_json(path: str, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {what} {path}: {e}") from None
    if not isinstance(d, dict):
        raise UserError(f"{what} {path} is not a JSON object")
    return d


def _pick(d: dict, defaults: dict, **overrides) -> dict:
    out = {k: (d.get(k) if d.get(k) is not None else v) for k, v in defaults.items()}
    out.update(overrides)
    return out


def _more(items: list, n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" (and {len(items) - n} more)" if len(items) > n else "")


def _check_dir(path, what: str) -> str:
    if not path:
        raise UserError(f"{what} is required")
    if not os.path.isdir(path):
        raise UserError(f"{what} directory not found: {path}")
    return path


def detect_source(src: str) -> str:
    """SOURCE_LLAVA_HF or SOURCE_LLAVA, judged from src/config.json."""
    _check_dir(src, "--src")
    cfg_path = os.path.join(src, "config.json")
    if not os.path.isfile(cfg_path):
        raise UserError(f"{src} has no config.json (expected a llava-hf or original LLaVA checkpoint directory)")
    return _detect(_load_json(cfg_path, "config"), cfg_path)


def _detect(cfg: dict, cfg_path: str) -> str:
    arch = cfg.get("architectures") or []
    mt = cfg.get("model_type")
    if mt == "paddle_rc_llava":
        raise UserError(f"{cfg_path} is already a converted paddle_rc checkpoint")
    if "text_config" in cfg and ("vision_config" in cfg or "LlavaForConditionalGeneration" in arch):
        if mt == "clip" or "CLIPModel" in arch:
            raise UserError(f"{cfg_path} is a CLIP checkpoint, not LLaVA: pass it as --clip")
        return SOURCE_LLAVA_HF
    if "mm_vision_tower" in cfg or "mm_hidden_size" in cfg or any("LlavaLlama" in a for a in arch):
        return SOURCE_LLAVA
    raise UserError(f"unknown source layout: {cfg_path} (model_type={mt!r}, architectures={arch}) is neither "
                    "a llava-hf (LlavaForConditionalGeneration) nor an original LLaVA (LlavaLlamaForCausalLM) "
                    "checkpoint")


# ------------------------------------------------------------------------------------------ configs

def _vision_config(vc: dict, projection_dim: int, what: str) -> CLIPVisionConfig:
    mt = vc.get("model_type", "clip_vision_model")
    if mt not in ("clip_vision_model", "clip"):
        raise UserError(f"{what}: vision tower model_type {mt!r} is not supported (only CLIP vision towers)")
    return CLIPVisionConfig(**_pick(vc, HF_CLIP_VISION_DEFAULTS), projection_dim=projection_dim)


def _llama_config(d: dict, pad_token_id, what: str) -> LlamaConfig:
    mt = d.get("model_type", "llama")
    if mt not in ("llama", "llava", "llava_llama"):
        raise UserError(f"{what}: language model type {mt!r} is not supported (only LLaMA)")
    if d.get("rope_scaling"):
        raise UserError(f"{what}: rope_scaling {d['rope_scaling']} is not supported")
    if d.get("hidden_act", "silu") != "silu":
        raise UserError(f"{what}: hidden_act {d['hidden_act']!r} is not supported (LLaMA uses silu)")
    if d.get("attention_bias") or d.get("mlp_bias"):
        raise UserError(f"{what}: LLaMA with attention_bias/mlp_bias is not supported")
    kw = _pick(d, HF_LLAMA_DEFAULTS)
    if kw["num_key_value_heads"] is None:
        kw["num_key_value_heads"] = kw["num_attention_heads"]
    head_dim = d.get("head_dim")
    if head_dim is not None and head_dim * kw["num_attention_heads"] != kw["hidden_size"]:
        raise UserError(f"{what}: head_dim {head_dim} != hidden_size / num_attention_heads is not supported")
    kw["rope_theta"] = float(kw["rope_theta"])
    kw["pad_token_id"] = 0 if pad_token_id is None else int(pad_token_id)
    return LlamaConfig(**kw)


def _clip_tokenizer_ids(clip: str) -> dict:
    vocab_path, merges_path = os.path.join(clip, "vocab.json"), os.path.join(clip, "merges.txt")
    if not (os.path.isfile(vocab_path) and os.path.isfile(merges_path)):
        raise UserError(f"--clip dir {clip} has no vocab.json/merges.txt (the CLIP BPE tokenizer files)")
    vocab = _load_json(vocab_path, "CLIP vocab")
    missing = [t for t in ("<|startoftext|>", "<|endoftext|>") if t not in vocab]
    if missing:
        raise UserError(f"{vocab_path} lacks the CLIP special token(s) {', '.join(missing)}")
    return {"size": len(vocab), "bos": vocab["<|startoftext|>"], "eos": vocab["<|endoftext|>"]}


def _clip_configs(clip: str, clip_cfg: dict):
    """(vision config dict, CLIPTextConfig, projection_dim) from a CLIPModel config.json."""
    tc = clip_cfg.get("text_config") or {}
    proj = int(clip_cfg.get("projection_dim") or HF_CLIP_PROJECTION_DIM)
    ids = _clip_tokenizer_ids(clip)
    # The token ids come from the vocabulary: openai's config.json carries placeholder ids (bos 0, eos 2).
    text = CLIPTextConfig(**_pick(tc, HF_CLIP_TEXT_DEFAULTS), projection_dim=proj,
                          bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["eos"])
    if ids["size"] > text.vocab_size:
        raise UserError(f"--clip dir {clip}: vocab.json has {ids['size']} tokens but the text model only "
                        f"{text.vocab_size}")
    return clip_cfg.get("vision_config") or {}, text, proj


def _image_stats(src: str):
    p = os.path.join(src, "preprocessor_config.json")
    if os.path.isfile(p):
        d = _load_json(p, "preprocessor config")
        mean, std = d.get("image_mean"), d.get("image_std")
        if isinstance(mean, list) and isinstance(std, list) and len(mean) == 3 and len(std) == 3:
            return tuple(float(x) for x in mean), tuple(float(x) for x in std)
    return CLIP_MEAN, CLIP_STD


# ------------------------------------------------------------------------------------------ conversion

@dataclass
class _Source:
    reader: CheckpointReader
    key: str
    paddle_layout: bool = False   # nn.Linear weights stored [in, out] already


def _collect(reader: CheckpointReader, table, paddle_layout: bool = False):
    """({our name: _Source}, [unused source keys]) for the keys `table` maps."""
    found, unused = {}, []
    for k in reader.keys():
        if mapping.is_ignored(k):
            continue
        name = mapping.rename(k, table)
        if name is None:
            unused.append(k)
            continue
        if paddle_layout and name.startswith("vision_tower."):
            name = mapping.paddle_clip_name(name)
        found[name] = _Source(reader, k, paddle_layout)
    return found, unused


def _has_prefix(names, prefix: str) -> bool:
    return any(n.startswith(prefix) for n in names)


def convert(src: str, clip: str | None, dst: str, shard_size=DEFAULT_SHARD_BYTES, dtype: str = "keep",
            progress=None) -> ConvertResult:
    """Convert `src` (llava-hf or original LLaVA) + `clip` (CLIPModel) into a paddle_rc checkpoint at `dst`.

    `dtype`: "keep" stores everything in the LLaVA checkpoint's dtype (CLIP parts are cast to it, as the
    reference models run them), or "float16"/"float32"/"bfloat16". `progress(n_bytes, total_bytes)` is
    called after each written tensor.
    """
    if dtype not in DTYPE_CHOICES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPE_CHOICES)}, not {dtype!r}")
    max_shard = parse_size(shard_size)
    kind = detect_source(src)
    src_cfg = _load_json(os.path.join(src, "config.json"), "config")
    if not clip:
        raise UserError(f"--clip is required: the {kind} checkpoint in {src} has no CLIP text tower and "
                        "projections, which recoverable compression needs; pass the matching OpenAI CLIP "
                        "directory (e.g. openai/clip-vit-large-patch14-336)")
    _check_dir(clip, "--clip")
    clip_cfg_path = os.path.join(clip, "config.json")
    if not os.path.isfile(clip_cfg_path):
        raise UserError(f"--clip dir {clip} has no config.json (expected a CLIPModel checkpoint)")
    clip_cfg = _load_json(clip_cfg_path, "CLIP config")
    if clip_cfg.get("model_type") != "clip" or "text_config" not in clip_cfg:
        raise UserError(f"--clip dir {clip} is not a CLIP checkpoint: its config.json has model_type "
                        f"{clip_cfg.get('model_type')!r} (expected 'clip' with text_config/vision_config)")
    tok_model = next((os.path.join(src, n) for n in SP_MODEL_NAMES if os.path.isfile(os.path.join(src, n))), None)
    if tok_model is None:
        raise UserError(f"{src} has no tokenizer.model or sentencepiece.bpe.model (the LLaMA sentencepiece model)")

    clip_vc, text_cfg, proj = _clip_configs(clip, clip_cfg)
    src_reader = open_checkpoint(src, "--src checkpoint")
    if kind == SOURCE_LLAVA and any(k.startswith("llama.") for k in src_reader.keys()):
        kind = SOURCE_PADDLEMIX
    clip_reader = open_checkpoint(clip, "--clip")
    try:
        return _convert(kind, src, src_cfg, src_reader, clip, clip_vc, text_cfg, proj, clip_reader, dst,
                        max_shard, dtype, tok_model, progress)
    finally:
        src_reader.close()
        clip_reader.close()


def _convert(kind, src, src_cfg, src_reader, clip, clip_vc, text_cfg, proj, clip_reader, dst, max_shard,
             dtype, tok_model, progress) -> ConvertResult:
    where = f"{src}/config.json"
    notes = []
    if kind == SOURCE_LLAVA_HF:
        keys = src_reader.keys()
        new = _has_prefix(keys, "model.language_model.") or _has_prefix(keys, "model.vision_tower.")
        table = mapping.LLAVA_HF_NEW if new else mapping.LLAVA_HF_CLASSIC
        if src_cfg.get("vision_feature_select_strategy", "default") != "default":
            raise UserError(f"{where}: vision_feature_select_strategy "
                            f"{src_cfg['vision_feature_select_strategy']!r} is not supported (only 'default')")
        act = src_cfg.get("projector_hidden_act", "gelu")
        if act != "gelu":
            raise UserError(f"{where}: projector_hidden_act {act!r} is not supported (only 'gelu')")
        layer = src_cfg.get("vision_feature_layer", -2)
        image_token = src_cfg.get("image_token_index", src_cfg.get("image_token_id", HF_LLAVA_IMAGE_TOKEN_INDEX))
        tc = src_cfg.get("text_config") or {}
        pad = src_cfg.get("pad_token_id", tc.get("pad_token_id"))
        vision = _vision_config(src_cfg.get("vision_config") or {}, proj, where)
        llm = _llama_config(tc, pad, where)
        conv_mode, image_token_id = "llava_hf", int(image_token)
        aspect = "pad"
    else:
        table = mapping.PADDLEMIX if kind == SOURCE_PADDLEMIX else mapping.LLAVA_ORIGINAL
        fused = [k for k in src_reader.keys() if ".qkv_proj." in k or ".gate_up_fused_proj." in k]
        if fused:
            raise UserError(f"{src}: fused attention/MLP weights ({fused[0]}) are not supported; save the "
                            "PaddleMIX model with fuse_attention_qkv and fuse_attention_ffn off")
        ptype = src_cfg.get("mm_projector_type", "linear")
        if ptype != "mlp2x_gelu":
            raise UserError(f"{where}: mm_projector_type {ptype!r} is not supported (only 'mlp2x_gelu')")
        feat = src_cfg.get("mm_vision_select_feature", "patch")
        if feat != "patch":
            raise UserError(f"{where}: mm_vision_select_feature {feat!r} is not supported (only 'patch')")
        if src_cfg.get("mm_use_im_start_end"):
            raise UserError(f"{where}: mm_use_im_start_end=true checkpoints are not supported")
        layer = src_cfg.get("mm_vision_select_layer", -2)
        vision = _vision_config(clip_vc, proj, f"{clip}/config.json")
        llm = _llama_config(src_cfg, src_cfg.get("pad_token_id"), where)
        conv_mode, image_token, image_token_id = "vicuna_v1", -200, None
        aspect = src_cfg.get("image_aspect_ratio") or "pad"
        mm_hidden = src_cfg.get("mm_hidden_size")
        if mm_hidden is not None and mm_hidden != vision.hidden_size:
            raise UserError(f"{where}: mm_hidden_size {mm_hidden} does not match the --clip vision tower "
                            f"(hidden_size {vision.hidden_size}); is --clip the right CLIP model?")
    if not isinstance(layer, int):
        raise UserError(f"{where}: vision feature layer {layer!r} is not supported (a single int is)")
    mean, std = _image_stats(src)
    clip_vision_hidden = int(clip_vc.get("hidden_size") or HF_CLIP_VISION_DEFAULTS["hidden_size"])
    if clip_vision_hidden != vision.hidden_size:
        raise UserError(f"--clip dir {clip} does not match the LLaVA vision tower: CLIP vision hidden_size "
                        f"{clip_vision_hidden}, LLaVA vision hidden_size {vision.hidden_size}")

    # Gather sources for our names.
    found, unused = _collect(src_reader, table, paddle_layout=kind == SOURCE_PADDLEMIX)
    tower_from_src = _has_prefix(found, "vision_tower.")
    if kind == SOURCE_LLAVA_HF and not tower_from_src:
        raise UserError(f"checkpoint {src} lacks vision_tower weights (no vision_tower.vision_model.* or "
                        "model.vision_tower.vision_model.* keys)")
    if not _has_prefix(found, "language_model."):
        raise UserError(f"checkpoint {src} lacks language_model weights: no "
                        + {SOURCE_LLAVA: "model.*", SOURCE_PADDLEMIX: "llama.*"}.get(
                            kind, "language_model.model.* / model.language_model.*") +
                        " keys")
    clip_found, clip_unused = _collect(clip_reader, mapping.CLIP)
    if not _has_prefix(clip_found, "text_tower."):
        raise UserError(f"--clip dir {clip} has no text_model weights (a CLIPVisionModel is not enough: "
                        "use the full CLIPModel checkpoint)")
    if not tower_from_src and not _has_prefix(clip_found, "vision_tower."):
        raise UserError(f"--clip dir {clip} has no vision_model weights, and {src} has no vision tower either")
    for name, s in clip_found.items():
        if name.startswith("vision_tower.") and tower_from_src:
            continue
        found.setdefault(name, s)
    unused += [f"(clip) {k}" for k in clip_unused]

    cfg = LlavaConfig(vision=vision, text=text_cfg, llm=llm, projector_type="mlp2x_gelu",
                      vision_feature_layer=layer, image_token_index=int(image_token),
                      image_aspect_ratio=aspect, image_mean=mean, image_std=std, conv_mode=conv_mode,
                      source=kind)
    groups = mapping.expected_shapes(cfg)

    tied = "lm_head.weight" not in found
    if tied:
        if "language_model.embed_tokens.weight" in found:
            notes.append("lm_head.weight absent (tied embeddings): stored embed_tokens transposed")
        embed = found.get("language_model.embed_tokens.weight")
        # An embedding table is [vocab, hidden] in every layout: as lm_head it is always transposed.
        found["lm_head.weight"] = None if embed is None else _Source(embed.reader, embed.key, False)

    group_msgs = {
        "vision_tower": (f"checkpoint {src} lacks vision_tower weights" if tower_from_src
                         else f"--clip dir {clip} lacks vision_model weights"),
        "visual_projection": f"--clip dir {clip} lacks visual_projection weights",
        "text_tower": f"--clip dir {clip} lacks text_model weights",
        "text_projection": f"--clip dir {clip} lacks text_projection weights",
        "projector": f"checkpoint {src} lacks multimodal projector weights",
        "language_model": f"checkpoint {src} lacks language_model weights",
        "lm_head": f"checkpoint {src} lacks language_model weights",
    }
    plan_items = []
    bad_shapes = []
    for group, shapes in groups.items():
        missing = [n for n in shapes if found.get(n) is None]
        if missing:
            raise UserError(f"{group_msgs[group]}: {_more(missing)}")
        for name, shape in shapes.items():
            s = found[name]
            transpose = mapping.is_linear_weight(name) and not s.paddle_layout
            info = s.reader.info(s.key)
            src_shape = tuple(reversed(shape)) if transpose else tuple(shape)
            if tuple(info.shape) != src_shape:
                bad_shapes.append(f"{s.key} has shape {list(info.shape)}, config implies {list(src_shape)}")
            if info.dtype not in DTYPE_NAMES:
                raise UserError(f"{s.reader.directory}: {s.key} has non-float dtype {info.dtype}")
            plan_items.append((name, s, transpose, shape))
    if bad_shapes:
        raise UserError(f"weights do not match the config ({len(bad_shapes)} tensor(s)): {_more(bad_shapes, 3)}")
    known = set().union(*groups.values())
    unused += [found[n].key for n in found if n not in known]

    main = found["language_model.embed_tokens.weight"]
    src_dtype = main.reader.info(main.key).dtype
    if src_dtype == "F64":
        src_dtype = "F32"
    out_dtype = DTYPE_CHOICES[dtype] or src_dtype
    cfg.weights_dtype = DTYPE_NAMES[out_dtype]

    sp_ids = _check_sentencepiece(tok_model, llm.vocab_size)

    def producer(s: _Source, transpose: bool):
        def produce():
            arr = s.reader.raw(s.key)
            arr = cast_raw(arr, s.reader.info(s.key).dtype, out_dtype)
            return np.ascontiguousarray(arr.T) if transpose else arr
        return produce

    planned = [PlannedTensor(name, out_dtype, shape, producer(s, transpose))
               for name, s, transpose, shape in plan_items]
    total = sum(t.nbytes for t in planned)

    os.makedirs(dst, exist_ok=True)
    # Until the new config.json lands, the directory must not look like a finished checkpoint.
    old_cfg = os.path.join(dst, "config.json")
    if os.path.exists(old_cfg):
        os.remove(old_cfg)
    on_tensor = (lambda t: progress(t.nbytes, total)) if progress else None
    files = write_sharded(dst, planned, max_shard, on_tensor)

    tok_dir = os.path.join(dst, "tokenizer")
    os.makedirs(tok_dir, exist_ok=True)
    _copy_atomic(tok_model, os.path.join(tok_dir, "tokenizer.model"))
    _write_json_atomic(os.path.join(tok_dir, "tokenizer_config.json"), {
        "bos_token_id": sp_ids["bos"] if sp_ids["bos"] >= 0 else llm.bos_token_id,
        "eos_token_id": sp_ids["eos"] if sp_ids["eos"] >= 0 else llm.eos_token_id,
        "pad_token_id": llm.pad_token_id,
        "image_token": IMAGE_TOKEN,
        "image_token_id": image_token_id,
        "add_bos_token": True,
    })
    ctok_dir = os.path.join(dst, "clip_tokenizer")
    os.makedirs(ctok_dir, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        _copy_atomic(os.path.join(clip, name), os.path.join(ctok_dir, name))
    cfg.save(dst)
    return ConvertResult(source=kind, dst=dst, dtype=cfg.weights_dtype, n_tensors=len(planned), n_bytes=total,
                         files=files, unused_keys=sorted(unused), notes=notes)


def _check_sentencepiece(path: str, vocab_size: int) -> dict:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    try:
        sp.Load(path)
    except (OSError, RuntimeError) as e:
        raise UserError(f"{path} is not a sentencepiece model: {e}") from None
    if sp.GetPieceSize() > vocab_size:
        raise UserError(f"{path} has {sp.GetPieceSize()} pieces but the language model only {vocab_size} rows")
    return {"bos": sp.bos_id(), "eos": sp.eos_id()}


def _copy_atomic(src: str, dst: str) -> None:
    tmp = dst + ".tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _write_json_atomic(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)
