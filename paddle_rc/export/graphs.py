"""The Layers that get traced: thin forward() wrappers over the dynamic model's own code.

Each wrapper holds the model's sub-layers (so their parameters land in the graph's .pdiparams) and
calls the same functions the dynamic path calls, which is what makes exported and dynamic outputs
equal rather than merely close.
"""
from __future__ import annotations

import paddle
import paddle.nn as nn

# Which tower extras a method needs and which text pooling it uses (same sets the model uses).
from paddle_rc.models.llava import _NEEDS_CLS_STATS, _NEEDS_QKP, _NEEDS_TEXT, LlavaForConditionalGeneration

# rc-reference pads/truncates the question to this many CLIP tokens (pipeline.REFERENCE_TEXT_LENGTH).
REFERENCE_TEXT_LENGTH = 20

# The compression core returns these after the tokens (see paddle_rc.compression.result).
INDEX_OUTPUTS = ("kinds", "sources", "stage", "members", "extra_members")


class VisionGraph(nn.Layer):
    """pixels (+ CLIP ids, has_text) -> tower (one pass) -> compression core -> projector.

    Outputs: image_embeds [B,Tmax,H] zero-padded, lengths [B] int64, then for every method but
    `none` the per-stage index tensors (INDEX_OUTPUTS), so the deployed runner can report stage
    counts and draw the kept-token picture without the dynamic model.
    """

    def __init__(self, model, method: str, budget=None, options=None):
        super().__init__()
        self.vision_tower = model.vision_tower
        self.projector = model.projector
        self.feature_layer = model.config.vision_feature_layer
        self.method = method
        self.budget = budget
        self.options = dict(options or {})
        self.uses_text = method in _NEEDS_TEXT
        if method in _NEEDS_QKP:
            self.visual_projection = model.visual_projection
        if self.uses_text:
            self.text_tower = model.text_tower
            self.text_projection = model.text_projection

    # The model's own text-feature code, run on this wrapper (it only needs the two sub-layers).
    get_text_features = LlavaForConditionalGeneration.get_text_features
    reference_text_features = LlavaForConditionalGeneration.reference_text_features

    def _text(self, clip_ids):
        if self.method == "rc-reference":
            return self.reference_text_features(clip_ids)
        return self.get_text_features(clip_ids)

    def _compress(self, pixel_values, clip_ids=None, has_text=None):
        from paddle_rc.compression import compress_tensors

        feats = self.vision_tower(pixel_values.astype(self.projector.linear_1.weight.dtype), self.feature_layer,
                                  need_qkp=self.method in _NEEDS_QKP,
                                  need_cls_stats=self.method in _NEEDS_CLS_STATS)
        if self.method == "none":
            embeds = self.projector(feats.F)
            lengths = paddle.full_like(embeds[:, 0, 0], feats.F.shape[1], dtype="int64")
            return embeds, lengths
        options = dict(self.options)
        if self.method in _NEEDS_CLS_STATS:
            options.update(cls_attn=feats.cls_attn, metric=feats.metric)
        P = t = None
        if self.uses_text:
            P = self.visual_projection(feats.P)
            t = self._text(clip_ids)
        core = compress_tensors(self.method, feats.F, feats.Q, feats.K, P=P, t=t,
                                has_text=has_text if self.uses_text else None,
                                budget=self.budget, options=options)
        tokens, lengths = core[0], core[1]
        return (self.projector(tokens), lengths) + tuple(core[2:])


class VisionNoText(VisionGraph):
    def forward(self, pixel_values):
        return self._compress(pixel_values)


class VisionWithText(VisionGraph):
    def forward(self, pixel_values, clip_ids, has_text):
        return self._compress(pixel_values, clip_ids, has_text)


class _LLMGraph(nn.Layer):
    """The LLM and lm_head only, so that tracing one of the model's LLM steps saves nothing else."""

    def __init__(self, model):
        super().__init__()
        self.language_model = model.language_model
        self.lm_head = model.lm_head


class PrefillGraph(_LLMGraph):
    forward = LlavaForConditionalGeneration.prefill


class DecodeGraph(_LLMGraph):
    forward = LlavaForConditionalGeneration.decode
