"""Source key -> our parameter name, which of ours are nn.Linear weights, and the shapes a config implies."""
from __future__ import annotations

import re

from paddle_rc.models.config import LlavaConfig

# Prefix rewrites; the first matching prefix wins.
LLAVA_HF_CLASSIC = (
    ("vision_tower.vision_model.", "vision_tower."),
    ("multi_modal_projector.", "projector."),
    ("language_model.model.", "language_model."),
    ("language_model.lm_head.", "lm_head."),
)
LLAVA_HF_NEW = (
    ("model.vision_tower.vision_model.", "vision_tower."),
    ("model.multi_modal_projector.", "projector."),
    ("model.language_model.", "language_model."),
    ("lm_head.", "lm_head."),
)
LLAVA_ORIGINAL = (
    ("model.vision_tower.vision_tower.vision_model.", "vision_tower."),
    ("model.mm_projector.0.", "projector.linear_1."),
    ("model.mm_projector.2.", "projector.linear_2."),
    ("model.embed_tokens.", "language_model.embed_tokens."),
    ("model.layers.", "language_model.layers."),
    ("model.norm.", "language_model.norm."),
    ("lm_head.", "lm_head."),
)
# PaddleMIX's LlavaLlamaForCausalLM (paddlemix/models/llava): the LLaMA under "llama." with the projector
# and (when saved) the vision tower inside it; nn.Linear weights already [in, out]; lm_head [hidden, vocab].
PADDLEMIX = (
    ("llama.vision_tower.vision_tower.vision_model.", "vision_tower."),
    ("llama.mm_projector.0.", "projector.linear_1."),
    ("llama.mm_projector.2.", "projector.linear_2."),
    ("llama.embed_tokens.", "language_model.embed_tokens."),
    ("llama.layers.", "language_model.layers."),
    ("llama.norm.", "language_model.norm."),
    ("lm_head.", "lm_head."),
)
# Inside PaddleMIX's CLIP vision transformer (PaddleNLP's naming) -> the transformers/our naming.
_PADDLE_CLIP_PARTS = (
    (re.compile(r"^class_embedding$"), "embeddings.class_embedding"),
    (re.compile(r"^conv1\."), "embeddings.patch_embedding."),
    (re.compile(r"^positional_embedding\."), "embeddings.position_embedding."),
    (re.compile(r"^ln_pre\."), "pre_layernorm."),
    (re.compile(r"^ln_post\."), "post_layernorm."),
    (re.compile(r"^transformer\.layers\."), "encoder.layers."),
    (re.compile(r"\.linear1\."), ".mlp.fc1."),
    (re.compile(r"\.linear2\."), ".mlp.fc2."),
    (re.compile(r"\.norm1\."), ".layer_norm1."),
    (re.compile(r"\.norm2\."), ".layer_norm2."),
)
CLIP = (
    ("vision_model.", "vision_tower."),
    ("text_model.", "text_tower."),
    ("visual_projection.", "visual_projection."),
    ("text_projection.", "text_projection."),
)

# Buffers that older exports saved but that carry no learned state.
_IGNORED = re.compile(r"(^|\.)(rotary_emb\.inv_freq|position_ids)$|^logit_scale$")

_LINEAR = re.compile(
    r"^((vision_tower|text_tower)\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])"
    r"|language_model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"
    r"|projector\.linear_[12]|visual_projection|text_projection|lm_head)\.weight$")


def is_ignored(src_key: str) -> bool:
    return bool(_IGNORED.search(src_key))


def rename(src_key: str, table) -> str | None:
    """Our name for `src_key` under `table`, or None if no prefix matches."""
    for old, new in table:
        if src_key.startswith(old):
            name = new + src_key[len(old):]
            # CLIP's HF module is misspelled "pre_layrnorm"; ours is not.
            return name.replace(".pre_layrnorm.", ".pre_layernorm.")
    return None


def paddle_clip_name(name: str) -> str:
    """Our name for a vision-tower parameter named the PaddleNLP way (after the prefix rewrite)."""
    head, rest = "vision_tower.", name[len("vision_tower."):]
    for pattern, repl in _PADDLE_CLIP_PARTS:
        rest = pattern.sub(repl, rest)
    return head + rest


def is_linear_weight(name: str) -> bool:
    """True for our names of nn.Linear weights, which Paddle stores [in, out] (torch: [out, in])."""
    return bool(_LINEAR.match(name))


def _clip_tower(prefix: str, c, n_pos: int) -> dict:
    C, inter = c.hidden_size, c.intermediate_size
    out = {}
    if prefix == "vision_tower.":
        p = c.patch_size
        out[f"{prefix}embeddings.class_embedding"] = (C,)
        out[f"{prefix}embeddings.patch_embedding.weight"] = (C, c.num_channels, p, p)
        out[f"{prefix}embeddings.position_embedding.weight"] = (n_pos, C)
        out[f"{prefix}pre_layernorm.weight"] = (C,)
        out[f"{prefix}pre_layernorm.bias"] = (C,)
    else:
        out[f"{prefix}embeddings.token_embedding.weight"] = (c.vocab_size, C)
        out[f"{prefix}embeddings.position_embedding.weight"] = (n_pos, C)
    for i in range(c.num_hidden_layers):
        L = f"{prefix}encoder.layers.{i}."
        for proj in ("q", "k", "v", "out"):
            out[f"{L}self_attn.{proj}_proj.weight"] = (C, C)
            out[f"{L}self_attn.{proj}_proj.bias"] = (C,)
        for ln in ("layer_norm1", "layer_norm2"):
            out[f"{L}{ln}.weight"] = (C,)
            out[f"{L}{ln}.bias"] = (C,)
        out[f"{L}mlp.fc1.weight"] = (C, inter)
        out[f"{L}mlp.fc1.bias"] = (inter,)
        out[f"{L}mlp.fc2.weight"] = (inter, C)
        out[f"{L}mlp.fc2.bias"] = (C,)
    final = "post_layernorm" if prefix == "vision_tower." else "final_layer_norm"
    out[f"{prefix}{final}.weight"] = (C,)
    out[f"{prefix}{final}.bias"] = (C,)
    return out


def expected_shapes(cfg: LlavaConfig) -> dict:
    """{group: {our name: shape in Paddle layout}} for every parameter the model has."""
    v, t, m = cfg.vision, cfg.text, cfg.llm
    groups = {}
    groups["vision_tower"] = _clip_tower("vision_tower.", v, v.num_patches + 1)
    groups["visual_projection"] = {"visual_projection.weight": (v.hidden_size, v.projection_dim)}
    groups["text_tower"] = _clip_tower("text_tower.", t, t.max_position_embeddings)
    groups["text_projection"] = {"text_projection.weight": (t.hidden_size, t.projection_dim)}
    H = m.hidden_size
    groups["projector"] = {
        "projector.linear_1.weight": (v.hidden_size, H), "projector.linear_1.bias": (H,),
        "projector.linear_2.weight": (H, H), "projector.linear_2.bias": (H,),
    }
    hd = m.head_dim
    lm = {"language_model.embed_tokens.weight": (m.vocab_size, H)}
    for i in range(m.num_hidden_layers):
        L = f"language_model.layers.{i}."
        lm[f"{L}self_attn.q_proj.weight"] = (H, m.num_attention_heads * hd)
        lm[f"{L}self_attn.k_proj.weight"] = (H, m.num_key_value_heads * hd)
        lm[f"{L}self_attn.v_proj.weight"] = (H, m.num_key_value_heads * hd)
        lm[f"{L}self_attn.o_proj.weight"] = (m.num_attention_heads * hd, H)
        lm[f"{L}mlp.gate_proj.weight"] = (H, m.intermediate_size)
        lm[f"{L}mlp.up_proj.weight"] = (H, m.intermediate_size)
        lm[f"{L}mlp.down_proj.weight"] = (m.intermediate_size, H)
        lm[f"{L}input_layernorm.weight"] = (H,)
        lm[f"{L}post_attention_layernorm.weight"] = (H,)
    lm["language_model.norm.weight"] = (H,)
    groups["language_model"] = lm
    groups["lm_head"] = {"lm_head.weight": (H, m.vocab_size)}
    return groups
