"""Model configuration: what `config.json` in a converted checkpoint holds.

A checkpoint directory (design contract 3) is:
    config.json                      LlavaConfig.to_dict()
    model.safetensors                Paddle-layout weights (nn.Linear stored [in, out]), or
    model-0000i-of-0000n.safetensors + model.safetensors.index.json when sharded
    tokenizer/tokenizer.model        the LLM's sentencepiece model (+ tokenizer_config.json)
    clip_tokenizer/vocab.json, merges.txt   the CLIP BPE tokenizer
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

from paddle_rc.errors import UserError

CONFIG_NAME = "config.json"
MODEL_TYPE = "paddle_rc_llava"
FORMAT_VERSION = 1

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class CLIPVisionConfig:
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    image_size: int = 336
    patch_size: int = 14
    num_channels: int = 3
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    projection_dim: int = 768

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass
class CLIPTextConfig:
    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    projection_dim: int = 768
    bos_token_id: int = 49406
    eos_token_id: int = 49407
    pad_token_id: int = 49407


@dataclass
class LlamaConfig:
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass
class LlavaConfig:
    vision: CLIPVisionConfig = field(default_factory=CLIPVisionConfig)
    text: CLIPTextConfig = field(default_factory=CLIPTextConfig)
    llm: LlamaConfig = field(default_factory=LlamaConfig)
    projector_type: str = "mlp2x_gelu"
    vision_feature_layer: int = -2
    # -200 for original-LLaVA checkpoints, the real <image> id for llava-hf ones.
    image_token_index: int = -200
    image_aspect_ratio: str = "pad"
    image_mean: tuple = CLIP_MEAN
    image_std: tuple = CLIP_STD
    conv_mode: str = "vicuna_v1"
    # Where the weights came from ("llava-hf", "llava", "synthvqa-demo", ...), for messages and manifests.
    source: str = "unknown"
    # Dtype of the stored weights; compute on CPU is always float32.
    weights_dtype: str = "float32"
    # None, or the quantization config dict written by paddle_rc.quant.
    quantization: dict | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["model_type"] = MODEL_TYPE
        d["format_version"] = FORMAT_VERSION
        d["image_mean"] = list(self.image_mean)
        d["image_std"] = list(self.image_std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LlavaConfig":
        d = dict(d)
        if d.pop("model_type", None) != MODEL_TYPE:
            raise UserError("config.json is not a paddle_rc checkpoint config "
                            "(convert the model with tools/convert.py first)")
        d.pop("format_version", None)
        kw = {}
        for f in dataclasses.fields(cls):
            if f.name not in d:
                continue
            v = d[f.name]
            if f.name == "vision":
                v = _sub(CLIPVisionConfig, v)
            elif f.name == "text":
                v = _sub(CLIPTextConfig, v)
            elif f.name == "llm":
                v = _sub(LlamaConfig, v)
            elif f.name in ("image_mean", "image_std"):
                v = tuple(v)
            kw[f.name] = v
        return cls(**kw)

    def save(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, CONFIG_NAME)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
        os.replace(tmp, path)

    @classmethod
    def load(cls, directory: str) -> "LlavaConfig":
        if not os.path.isdir(directory):
            raise UserError(f"model directory not found: {directory}")
        path = os.path.join(directory, CONFIG_NAME)
        if not os.path.isfile(path):
            raise UserError(f"{directory} is not a paddle_rc checkpoint (no {CONFIG_NAME}); "
                            "convert the model with tools/convert.py first")
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read {path}: {e}") from None
        return cls.from_dict(d)


def _sub(cls, d):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})
