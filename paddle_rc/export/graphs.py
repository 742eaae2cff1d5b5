"""The Layers that get traced: thin forward() wrappers over the dynamic model's own code.

Each wrapper holds the model's sub-layers (so their parameters land in the graph's .pdiparams) and
calls the same functions the dynamic path calls, which is what makes exported and dynamic outputs
equal rather than merely close.
"""
from __future__ import annotations

import paddle
import paddle.nn as nn

from paddle_rc.compression.registry import P_FEATURE, P_NEXT, get_method
from paddle_rc.models.llava import (LlavaForConditionalGeneration, compression_inputs, question_features,
                                    run_vision_tower)
from paddle_rc.models.llm_pruning import pruned_step

# rc-reference pads/truncates the question to this many CLIP tokens (pipeline.REFERENCE_TEXT_LENGTH).
REFERENCE_TEXT_LENGTH = 20

# The compression core returns these after the tokens (see paddle_rc.compression.result).
INDEX_OUTPUTS = ("kinds", "sources", "stage", "members", "extra_members")


class VisionGraph(nn.Layer):
    """pixels (+ CLIP ids, has_text) -> tower (one pass) -> compression core -> projector.

    Outputs: image_embeds [B,Tmax,H] zero-padded, lengths [B] int64, then for every method that
    compresses before the LLM the per-stage index tensors (INDEX_OUTPUTS), so the deployed runner
    can report stage counts and draw the kept-token picture without the dynamic model.
    """

    def __init__(self, model, method: str, budget=None, options=None):
        super().__init__()
        self.config = model.config
        self.vision_tower = model.vision_tower
        self.projector = model.projector
        self.method = method
        self.spec = get_method(method)
        if self.spec.inputs(options) & {P_NEXT, P_FEATURE}:
            self.visual_projection = model.visual_projection
        self.budget = budget
        self.options = dict(options or {})
        if self.spec.uses_text:
            self.text_tower = model.text_tower
            self.text_projection = model.text_projection

    # The model's own steps (module-level functions of paddle_rc.models.llava, which to_static can
    # convert) run on this wrapper: they only need the sub-layers held above.

    def _compress(self, pixel_values, clip_ids=None, has_text=None):
        from paddle_rc.compression import compress_tensors

        feats = run_vision_tower(self, pixel_values, self.spec, self.options)
        if self.method == "none" or self.spec.stage == "llm":
            embeds = self.projector(feats.F)
            lengths = paddle.full_like(embeds[:, 0, 0], feats.F.shape[1], dtype="int64")
            return embeds, lengths
        t = question_features(self, clip_ids, self.spec.text_mode) if self.spec.uses_text else None
        args = compression_inputs(self, feats, self.spec, self.options, t, has_text)
        core = compress_tensors(self.method, args["F"], args["Q"], args["K"], P=args["P"], t=args["t"],
                                has_text=args.get("has_text"), budget=self.budget,
                                options=args["options"])
        tokens, lengths = core[0], core[1]
        embeds = tokens if self.spec.after_projector else self.projector(tokens)
        return (embeds, lengths) + tuple(core[2:])


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


class LLMGraph(_LLMGraph):
    """Prefill and decode in one program (a prefill is a step with an empty past), so the LLM's
    weights are stored and loaded once; token embeddings come from the host-side table. It returns
    this call's keys/values; the runner appends them to the cache (runner.append_step)."""

    def forward(self, inputs_embeds, attention_mask, position_ids, past_k, past_v):
        return LlavaForConditionalGeneration.step(self, inputs_embeds, attention_mask, position_ids, past_k,
                                                  past_v, append=False)


class PrunedLLMGraph(_LLMGraph):
    """The LLM program of an in-LLM pruning method (FastV), still one program for prefill and
    decode (the weights once): paddle_rc.models.llm_pruning.pruned_step over the split cache, with
    the method's layer, budget and options fixed at export. visual_mask marks the new positions the
    method may drop: the image's in a prefill, none in a decode step (which then keeps its token).
    Like LLMGraph it returns this call's parts of the caches (and of late_mask), which the runner appends.
    Only FastV exports carry this program; every other method's `llm` is LLMGraph, unchanged."""

    def __init__(self, model):
        super().__init__(model)
        spec, opts, layer = model._llm_method()
        n = model.config.vision.num_patches
        budget = model.compression.budget
        self.layer = layer
        self._select = lambda scores, visual: spec.fn(scores, visual, n, budget, opts)

    def forward(self, inputs_embeds, attention_mask, position_ids, past_k, past_v, past_k_late, past_v_late,
                late_mask, visual_mask):
        hidden, k, v, kl, vl, kept_mask, keep = pruned_step(
            self.language_model, inputs_embeds, attention_mask, position_ids, self.layer,
            lambda scores: self._select(scores, visual_mask), past=(past_k, past_v, past_k_late, past_v_late, late_mask),
            append=False)
        return self.lm_head(hidden[:, -1, :]), k, v, kl, vl, kept_mask, keep
