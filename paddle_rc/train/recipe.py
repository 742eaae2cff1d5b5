"""The demo model's recipe: architecture, tokenizer corpus and training schedule, all from one seed.

Architecture is LLaVA-1.5's (CLIP ViT + CLIP text tower + both projections + mlp2x_gelu projector +
LLaMA, vicuna_v1 template, feature layer -2), scaled down to train on a 2-core CPU. The one departure
from LLaVA-1.5's geometry is the image size: 224 px in 14 px patches = 256 visual tokens, not 336 px =
576. On this machine a training step of the ViT at 577 tokens cost about 3-4x the step at 257 (attention
grows with the square of the tokens), which would push the full recipe past the 90-minute limit.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Recipe:
    seed: int = 0
    image_size: int = 224
    patch_size: int = 14
    vision_width: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    projection_dim: int = 64
    llm_width: int = 192
    llm_layers: int = 3
    llm_heads: int = 4
    llm_intermediate: int = 512
    llm_vocab: int = 640
    clip_merges: int = 400
    # stage 1: CLIP towers (global contrastive + patch-text alignment + patch attribute heads)
    stage1_steps: int = 900
    stage1_batch: int = 16
    stage1_lr: float = 2e-3
    # stage 2: projector + LLM on all visual tokens, towers frozen (LLaVA-1.5's second stage)
    stage2_steps: int = 2200
    stage2_batch: int = 16
    stage2_lr: float = 1.5e-3
    # auxiliary grounding loss in stage 2: the reply's first query should attend to the asked objects'
    # visual tokens (decoder layers 2 and up). Without it the LLM sat at the answer prior for 500 steps.
    grounding_weight: float = 1.0
    # ... and in decoder layer 0 that position should read the question's tokens (the first hop), from
    # stage-2 step `question_start` on: switched on at step 0 (2800 steps) the run ended at 34.3% held-out,
    # switched on at step 400 (the shipped model's history) it reached 43.3%
    question_weight: float = 1.0
    question_start: int = 400
    # auxiliary per-token attribute heads on the projector's output in stage 2 (discarded after training)
    token_label_weight: float = 1.0
    # auxiliary heads on the reply position's hidden state after decoder layers 1 and up: it should carry the
    # asked objects' colour, shape and word (discarded after training). Without it the grounding loss put ~46%
    # of that position's attention on the asked object while a linear probe of its state told the colour in
    # ~26% of cases: the attention found the object, the values did not bring its attributes back.
    query_label_weight: float = 1.0
    # stage 1: colour/shape/word heads on each small object's mean feature-layer patch (what an attention
    # that found the object reads). Without them the per-patch word head told the sign's word in ~21% of the
    # sign's patches (no single patch holds a whole word) and the model answered 32% of word questions;
    # with them the mean patch tells it in ~88% and word questions went to 88% (held-out 58.7 -> 70.7).
    object_label_weight: float = 1.0
    # type_mix: stage 2 draws each item's question type with these weights (a type left out: 1), e.g.
    # {shape: 2, exist: 2, colour: 0.5}: more of the stream for the types the model has not learnt,
    # the same scenes and balanced answers per type. Empty (the shipped recipe): the balanced stream.
    type_mix: dict = field(default_factory=dict)
    warmup: int = 100
    checkpoint_every: int = 100
    # held-out evaluation at the end (a seed no training batch uses)
    eval_seed: int = 90_001
    eval_items: int = 300
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def model_config(recipe: Recipe, clip_tok, llm_tok):
    from paddle_rc.models.config import CLIPTextConfig, CLIPVisionConfig, LlamaConfig, LlavaConfig

    r = recipe
    return LlavaConfig(
        vision=CLIPVisionConfig(hidden_size=r.vision_width, intermediate_size=4 * r.vision_width,
                                num_hidden_layers=r.vision_layers, num_attention_heads=r.vision_heads,
                                image_size=r.image_size, patch_size=r.patch_size,
                                projection_dim=r.projection_dim),
        text=CLIPTextConfig(vocab_size=clip_tok.vocab_size, hidden_size=r.text_width,
                            intermediate_size=4 * r.text_width, num_hidden_layers=r.text_layers,
                            num_attention_heads=r.text_heads, projection_dim=r.projection_dim,
                            bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id,
                            pad_token_id=clip_tok.pad_token_id),
        llm=LlamaConfig(vocab_size=llm_tok.vocab_size, hidden_size=r.llm_width,
                        intermediate_size=r.llm_intermediate, num_hidden_layers=r.llm_layers,
                        num_attention_heads=r.llm_heads, num_key_value_heads=r.llm_heads,
                        max_position_embeddings=2048, bos_token_id=llm_tok.bos_token_id,
                        eos_token_id=llm_tok.eos_token_id, pad_token_id=llm_tok.pad_token_id),
        image_token_index=-200, conv_mode="vicuna_v1", source="synthvqa-demo", weights_dtype="float32",
    )
