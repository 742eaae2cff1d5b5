"""LLaVA-1.5: CLIP vision tower (hosting compression) + projector + LLaMA.

Design contract 5: `model(input_ids, pixel_values, attention_mask)` returns logits [B, S-1+T, V] with
the T visual tokens where the single image placeholder stood.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as nnf

from paddle_rc.data.padding import left_pad
from paddle_rc.models.clip import CLIPTextTower, CLIPVisionTower
from paddle_rc.models.config import LlavaConfig
from paddle_rc.models.generation import SplitCache, generate_loop
from paddle_rc.models.llama import LlamaModel, positions_from_mask
from paddle_rc.models.llm_pruning import pruned_step
from paddle_rc.models.projector import MLPProjector
from paddle_rc.positions import check_positions, full_positions, source_positions

def _check_dtype(dtype: str) -> None:
    from paddle_rc.errors import UserError

    if dtype not in ("float32", "float16", "bfloat16"):
        raise UserError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
    if dtype != "float32" and not paddle.get_device().startswith("gpu"):
        raise UserError(f"{dtype} needs a GPU: Paddle's CPU kernels compute in float32 only "
                        "(load with dtype='float32')")


def check_context(prompt_len: int, max_new_tokens: int, context: int) -> None:
    """Refuse a prompt (text + visual tokens) that leaves no room for the answer in the LLM's
    context: past it, LLaMA's rotary positions are ones it never saw, and the work is wasted."""
    from paddle_rc.errors import UserError

    if prompt_len + max_new_tokens > context:
        room = context - prompt_len
        raise UserError(f"the prompt is {prompt_len} tokens (text and visual) and the LLM's context is "
                        f"{context}: " + (f"at most {room} new tokens fit (max_new_tokens is {max_new_tokens})"
                                          if room > 0 else "shorten the question"))


@dataclass
class CompressionSpec:
    method: str = "none"
    budget: Optional[int] = None
    options: dict = field(default_factory=dict)
    positions: str = "compact"


@dataclass
class VisualTokens:
    embeds: paddle.Tensor  # [B, Tmax, H] projected, zero-padded
    lengths: np.ndarray  # [B] int64
    before: int  # patch tokens per image before compression
    result: object = None  # paddle_rc.compression.CompressionResult, or None for `none`
    kept_in_llm: Optional[int] = None  # visual tokens an in-LLM method (FastV) keeps after its layer


@dataclass
class LlavaOutput:
    logits: paddle.Tensor
    attention_mask: paddle.Tensor
    visual: Optional[VisualTokens] = None


@dataclass
class GenerateOutput:
    tokens: np.ndarray  # [B, n] new tokens, pad after EOS
    visual: Optional[VisualTokens]
    timings: dict


# The three functions below are the model's own steps, written at module level so that the exported
# graphs (paddle_rc.export.graphs) can run them on their wrappers and to_static can convert them.
def text_features(model, input_ids):
    """CLIP text embedding [B, D] (CLIPModel.get_text_features)."""
    return model.text_projection(model.text_tower.pooled(input_ids))


def reference_text_features(model, input_ids):
    """rc-reference (released code): the LAST position of last_hidden_state, projected."""
    return model.text_projection(model.text_tower(input_ids)[:, -1, :])


def segment_text_features(model, input_ids):
    """CDPruner's long-question embedding: input_ids [B, M*L] hold M segments of the tower's length L
    (zero-padded, as the authors pad); each segment is pooled and projected, unit-normalised, and the
    segments of a sample are averaged. A segment of zeros only is padding of a shorter sample in the
    batch and is left out. -> [B, D] (not unit length)."""
    length = model.text_tower.config.max_position_embeddings
    seg = input_ids.reshape([-1, length])
    feats = nnf.normalize(text_features(model, seg), p=2, axis=-1)
    feats = feats.reshape([paddle.shape(input_ids)[0], -1, feats.shape[-1]])
    valid = (seg != 0).any(axis=-1).astype(feats.dtype).reshape([paddle.shape(input_ids)[0], -1, 1])
    return (feats * valid).sum(axis=1) / paddle.clip(valid.sum(axis=1), min=1.0)


def question_features(model, input_ids, mode: str):
    """The question's embedding t in the text mode a method declares (registry.TEXT_MODES)."""
    if mode == "prompt-first-line":
        return reference_text_features(model, input_ids)
    if mode == "question-segments":
        return segment_text_features(model, input_ids)
    return text_features(model, input_ids)


def run_vision_tower(model, pixel_values, spec, options):
    """One tower pass with the extras the method declares it reads."""
    from paddle_rc.compression.registry import CLS_STATS

    return model.vision_tower(pixel_values.astype(model.projector.linear_1.weight.dtype),
                              model.config.vision_feature_layer,
                              need_qkp=spec.needs_next_layer(options),
                              need_cls_stats=CLS_STATS in spec.inputs(options))


def compression_inputs(model, feats, spec, options, text_embeds=None, has_text=None) -> dict:
    """compress()/compress_tensors() keyword arguments for the method, from one tower pass."""
    from paddle_rc.compression.registry import CLS_STATS, P_FEATURE, P_NEXT, TEXT

    reads = spec.inputs(options)
    F = model.projector(feats.F) if spec.after_projector else feats.F
    args = {"F": F, "Q": feats.Q, "K": feats.K, "P": None, "t": None, "options": dict(options)}
    if CLS_STATS in reads:
        args["options"].update(cls_attn=feats.cls_attn, metric=feats.metric)
    # P and t go together or not at all (no question: the text stages are skipped).
    if TEXT in reads and text_embeds is not None:
        if P_NEXT in reads:
            args["P"] = model.visual_projection(feats.P)
        elif P_FEATURE in reads:
            args["P"] = model.visual_projection(model.vision_tower.post_layernorm(feats.F))
        args["t"] = text_embeds
        args["has_text"] = has_text
    return args


# The parameters only the question's CLIP embedding needs (from_pretrained(defer_text=True)).
TEXT_SIDE = ("text_tower.", "text_projection.")


class LlavaForConditionalGeneration(nn.Layer):
    def __init__(self, config: LlavaConfig):
        super().__init__()
        self.config = config
        v, t, l = config.vision, config.text, config.llm
        self.vision_tower = CLIPVisionTower(v)
        self.visual_projection = nn.Linear(v.hidden_size, v.projection_dim, bias_attr=False)
        self.text_tower = CLIPTextTower(t)
        self.text_projection = nn.Linear(t.hidden_size, t.projection_dim, bias_attr=False)
        self.projector = MLPProjector(v.hidden_size, l.hidden_size, config.projector_type)
        self.language_model = LlamaModel(l)
        self.lm_head = nn.Linear(l.hidden_size, l.vocab_size, bias_attr=False)
        self.compression = CompressionSpec()
        self._deferred_text = None  # a checkpoint directory whose text side is not loaded yet

    # ---- loading ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, directory: str, dtype: str = "float32",
                        defer_text: bool = False) -> "LlavaForConditionalGeneration":
        """defer_text: leave the CLIP text tower unloaded until a method that reads the question is set
        (set_compression loads it then). At 7B it is 0.5 GB of float32 that `none` and the CLS-only
        methods never read."""
        from paddle_rc.models.weights import load_weights

        _check_dtype(dtype)
        config = LlavaConfig.load(directory)
        previous = paddle.get_default_dtype()
        paddle.set_default_dtype(dtype)
        try:
            # No random init: every parameter is about to be overwritten (load_weights is strict, so
            # none can stay uninitialised), and for 7B the init alone takes minutes.
            with paddle.LazyGuard():
                model = cls(config)
        finally:
            paddle.set_default_dtype(previous)
        mapped = ()
        if config.quantization:
            from paddle_rc.models.weights import MappedEmbedding, weight_files
            from paddle_rc.quant import QuantConfig, prepare_quantized_model

            prepare_quantized_model(model, QuantConfig.from_dict(config.quantization))
            # Inference only: the token-embedding table (0.5 GB in float32 at 7B, of which a prompt
            # reads ~100 rows) stays in the checkpoint file, memory-mapped (see MappedEmbedding).
            key = "language_model.embed_tokens.weight"
            path = weight_files(directory).get(key)
            if path is not None:
                model.language_model.embed_tokens = MappedEmbedding(path, key)
                mapped = (key,)
        load_weights(model, directory, mapped, skip=TEXT_SIDE if defer_text else ())
        if defer_text:
            model._deferred_text = directory
        from paddle_rc.runtime import release_freed_memory

        release_freed_memory()  # the loader's temporaries: the heap keeps freed memory otherwise
        model.eval()
        return model

    def set_compression(self, method: str, budget: Optional[int] = None, positions: str = "compact",
                        **options) -> None:
        from paddle_rc.compression import check_compression

        check_positions(positions)
        check_compression(method, budget, options)
        from paddle_rc.compression import method_defaults
        from paddle_rc.compression.registry import get_method
        from paddle_rc.errors import UserError

        if get_method(method).stage == "llm":
            from paddle_rc.compression.methods.fastv import check_layer

            opts = dict(method_defaults(method))
            opts.update(options)
            try:
                check_layer(opts, self.config.llm.num_hidden_layers, "layer" in options)
            except ValueError as e:
                raise UserError(str(e)) from None
        if get_method(method).uses_text:
            self._load_text_side()
        self.compression = CompressionSpec(method, budget, dict(options), positions)

    def _load_text_side(self) -> None:
        directory = getattr(self, "_deferred_text", None)
        if directory is not None:
            from paddle_rc.models.weights import load_weights

            load_weights(self, directory, only=TEXT_SIDE)
            self._deferred_text = None

    # ---- text side ---------------------------------------------------------------------------
    def get_text_features(self, input_ids):
        """CLIP text embedding [B, D] (CLIPModel.get_text_features)."""
        return text_features(self, input_ids)

    def reference_text_features(self, input_ids):
        """rc-reference (released code): the LAST position of last_hidden_state, projected."""
        return reference_text_features(self, input_ids)

    def segment_text_features(self, input_ids):
        return segment_text_features(self, input_ids)

    def question_features(self, input_ids, mode: str):
        """The question's embedding t in the text mode a method declares (registry.TEXT_MODES)."""
        return question_features(self, input_ids, mode)

    # ---- vision side -------------------------------------------------------------------------
    def run_vision_tower(self, pixel_values, spec, options):
        return run_vision_tower(self, pixel_values, spec, options)

    def compression_inputs(self, feats, spec, options, text_embeds=None, has_text=None) -> dict:
        return compression_inputs(self, feats, spec, options, text_embeds, has_text)

    def encode_images(self, pixel_values, text_embeds=None, has_text=None) -> VisualTokens:
        """Tower (one pass) -> compression -> projector.

        text_embeds [B, D] is the question's CLIP embedding; has_text [B] bool marks samples with a
        question (text-guided methods skip their text stage for the others).
        """
        from paddle_rc.compression.registry import get_method

        comp = self.compression
        spec = get_method(comp.method)
        feats = self.run_vision_tower(pixel_values, spec, comp.options)
        n = feats.F.shape[1]
        if comp.method == "none" or spec.stage == "llm":
            embeds = self.projector(feats.F)
            return VisualTokens(embeds, np.full([embeds.shape[0]], n, dtype=np.int64), n)
        from paddle_rc.compression import compress

        args = self.compression_inputs(feats, spec, comp.options, text_embeds, has_text)
        opts = args.pop("options")
        if args.get("has_text") is None:
            args.pop("has_text", None)
        result = compress(comp.method, budget=comp.budget, **args, **opts)
        embeds = result.tokens if spec.after_projector else self.projector(result.tokens)
        return VisualTokens(embeds, result.lengths.numpy().astype(np.int64), n, result)

    # ---- splicing ----------------------------------------------------------------------------
    def splice(self, input_ids, attention_mask=None, visual: Optional[VisualTokens] = None,
               with_visual_mask: bool = False):
        """Embeddings with each sample's visual tokens where its image placeholder stood.

        Returns (inputs_embeds [B,L,H], attention_mask [B,L], position_ids [B,L]), left-padded so
        that every sample's last token is at the end (what batched decoding needs); with
        `with_visual_mask` also [B,L] bool marking the visual positions (for in-LLM pruning).
        Position ids follow self.compression.positions (paddle_rc.positions).
        """
        ids = input_ids.numpy()
        batch, seq = ids.shape
        mask = np.ones_like(ids) if attention_mask is None else attention_mask.numpy().astype(bool)
        image_id = self.config.image_token_index
        tmax = 0 if visual is None else int(visual.embeds.shape[1])
        rows = []
        for b in range(batch):
            valid = np.nonzero(mask[b])[0]
            at = valid[ids[b, valid] == image_id]
            if visual is None:
                if len(at):
                    raise ValueError("input_ids hold the image placeholder but no image was given")
                rows.append(b * seq + valid)
                continue
            if len(at) != 1:
                raise ValueError(f"sample {b}: expected the image placeholder ({image_id}) exactly once in "
                                 f"input_ids, found {len(at)}")
            p = at[0]
            vis = batch * seq + b * tmax + np.arange(int(visual.lengths[b]))
            rows.append(np.concatenate([b * seq + valid[valid < p], vis, b * seq + valid[valid > p]]))
        zero_row = batch * seq + batch * tmax
        index, new_mask = left_pad(rows, zero_row)
        length = index.shape[1]
        tokens = np.where((ids == image_id) | (ids < 0), 0, ids)
        text = self.language_model.embed_tokens(paddle.to_tensor(tokens)).reshape([batch * seq, -1])
        parts = [text]
        if visual is not None and tmax > 0:  # reshape([0, -1]) would copy dim 0, not give 0 rows
            parts.append(visual.embeds.astype(text.dtype).reshape([batch * tmax, -1]))
        parts.append(paddle.zeros([1, text.shape[-1]], dtype=text.dtype))
        table = paddle.concat(parts, axis=0)
        embeds = paddle.gather(table, paddle.to_tensor(index.reshape(-1))).reshape([batch, length, -1])
        mask_t = paddle.to_tensor(new_mask)
        is_visual = (index >= batch * seq) & (index < zero_row)
        layout = getattr(self.compression, "positions", "compact")
        if visual is not None and layout == "full":
            pos = paddle.to_tensor(full_positions(new_mask, is_visual, int(visual.before)))
        elif visual is not None and layout == "source":
            slot = np.where(is_visual, index - batch * seq - np.arange(batch)[:, None] * tmax, 0)
            sources = (np.broadcast_to(np.arange(tmax), (batch, tmax)) if visual.result is None
                       else visual.result.sources.numpy())
            pos = paddle.to_tensor(source_positions(new_mask, is_visual,
                                                    np.take_along_axis(sources, slot, axis=1), int(visual.before)))
        else:
            pos = positions_from_mask(mask_t)
        if with_visual_mask:
            return embeds, mask_t, pos, paddle.to_tensor(is_visual)
        return embeds, mask_t, pos

    # ---- forward / generate ----------------------------------------------------------------------
    def forward(self, input_ids, pixel_values=None, attention_mask=None, text_embeds=None, has_text=None):
        visual = None
        if pixel_values is not None:
            visual = self.encode_images(pixel_values, text_embeds, has_text)
        if visual is not None and self._llm_method() is not None:
            # In-LLM pruning: logits for the positions the later layers keep, with their mask.
            embeds, mask, pos, vis_mask = self.splice(input_ids, attention_mask, visual, with_visual_mask=True)
            spec, opts, layer = self._llm_method()
            out = pruned_step(self.language_model, embeds, mask, pos, layer, self._selector(vis_mask))
            return LlavaOutput(self.lm_head(out[0]), out[5], visual)
        embeds, mask, pos = self.splice(input_ids, attention_mask, visual)
        hidden, _, _ = self.language_model(embeds, mask, pos)
        return LlavaOutput(self.lm_head(hidden), mask, visual)

    def step(self, inputs_embeds, attention_mask, position_ids, past_k=None, past_v=None, append=True):
        """One LLM call over new tokens' embeddings (after `past` cached tokens, none for a
        prefill): -> (logits at the last position, k cache, v cache). The exported LLM graph is
        this function, for prefill (empty past) and decode alike, with append=False: it returns
        this call's keys/values, which the deployed runner appends to the cache."""
        hidden, k, v = self.language_model(inputs_embeds, attention_mask, position_ids, past_k, past_v, append)
        return self.lm_head(hidden[:, -1, :]), k, v

    def prefill(self, inputs_embeds, attention_mask, position_ids):
        return self.step(inputs_embeds, attention_mask, position_ids)

    def decode(self, input_ids, attention_mask, position_ids, past_k, past_v):
        return self.step(self.language_model.embed_tokens(input_ids), attention_mask, position_ids, past_k, past_v)

    # ---- in-LLM pruning (registry stage "llm") ----------------------------------------------------
    def _llm_method(self):
        """(spec, options, layer) when the compression method prunes inside the LLM, else None."""
        from paddle_rc.compression.methods.fastv import check_layer
        from paddle_rc.compression.registry import get_method

        spec = get_method(self.compression.method)
        if spec.stage != "llm":
            return None
        opts = dict(spec.defaults)
        opts.update(self.compression.options)
        explicit = "layer" in self.compression.options
        return spec, opts, check_layer(opts, self.config.llm.num_hidden_layers, explicit)

    def _selector(self, visual_mask):
        spec, opts, _ = self._llm_method()
        n = self.config.vision.num_patches
        budget = self.compression.budget
        return lambda scores: spec.fn(scores, visual_mask, n, budget, opts)

    def prefill_pruned(self, inputs_embeds, attention_mask, position_ids, visual_mask):
        """Prefill with in-LLM pruning -> (last logits [B,V], SplitCache, keep_index [B,S'] into the
        prompt's positions) (see paddle_rc.models.llm_pruning)."""
        _, _, layer = self._llm_method()
        hidden, *cache, keep = pruned_step(self.language_model, inputs_embeds, attention_mask, position_ids,
                                           layer, self._selector(visual_mask))
        return self.lm_head(hidden[:, -1, :]), SplitCache(*cache), keep

    def decode_pruned(self, input_ids, attention_mask, position_ids, cache):
        """A decode step over the SplitCache of prefill_pruned -> (last logits [B,V], SplitCache)."""
        _, _, layer = self._llm_method()
        embeds = self.language_model.embed_tokens(input_ids)
        hidden, *cache, _ = pruned_step(self.language_model, embeds, attention_mask, position_ids, layer,
                                        past=cache.tensors())
        return self.lm_head(hidden[:, -1, :]), SplitCache(*cache)

    def llm_steps(self, visual_mask):
        """(prefill, decode, record) for generate_loop / DecodeBatch. For in-LLM pruning the split
        cache travels as the loop's k (v is None); record["keep"] gets the kept positions."""
        if visual_mask is None or self._llm_method() is None:
            return self.prefill, self.decode, None
        record = {}

        def prefill(embeds, mask, pos):
            logits, cache, keep = self.prefill_pruned(embeds, mask, pos, visual_mask)
            record["keep"] = keep
            return logits, cache, None

        def decode(ids, mask, pos, cache, _):
            logits, cache = self.decode_pruned(ids, mask, pos, cache)
            return logits, cache, None
        return prefill, decode, record

    def record_llm_selection(self, visual, visual_mask, keep):
        """Which patches the in-LLM method kept, as a CompressionResult (stats, --save-vis); per
        row the kept patch indices are visual.result.llm_kept (keep: the prefill's kept positions)."""
        from paddle_rc.compression.methods.fastv import kept_count, selection_result

        spec, opts, layer = self._llm_method()
        vm = visual_mask.numpy()
        kept_pos = np.zeros_like(vm)
        np.put_along_axis(kept_pos, keep.numpy(), True, axis=1)
        kept = np.stack([kept_pos[b][vm[b]] for b in range(vm.shape[0])])
        visual.result = selection_result(paddle.to_tensor(kept), self.compression.budget, opts, layer)
        visual.kept_in_llm = kept_count(int(visual.before), self.compression.budget, opts)

    @paddle.no_grad()
    def generate(self, input_ids, pixel_values=None, attention_mask=None, text_embeds=None, has_text=None, *,
                 max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
                 eos_token_id: Optional[int] = None, pad_token_id: Optional[int] = None,
                 seed=0) -> GenerateOutput:
        t0 = time.perf_counter()
        visual = None
        if pixel_values is not None:
            visual = self.encode_images(pixel_values, text_embeds, has_text)
            _ = visual.embeds.numpy()  # finish the (asynchronous) vision work inside its own timing
        t1 = time.perf_counter()
        embeds, mask, pos, vis_mask = self.splice(input_ids, attention_mask, visual, with_visual_mask=True)
        prefill, decode, record = self.llm_steps(vis_mask if visual is not None else None)
        llm = self.config.llm
        check_context(int(embeds.shape[1]), max_new_tokens, llm.max_position_embeddings)
        tokens, timings = generate_loop(
            prefill, decode, embeds, mask, pos, max_new_tokens=max_new_tokens,
            eos_token_id=llm.eos_token_id if eos_token_id is None else eos_token_id,
            pad_token_id=llm.pad_token_id if pad_token_id is None else pad_token_id,
            temperature=temperature, top_p=top_p, seed=seed)
        timings["vision"] = t1 - t0
        if record:
            self.record_llm_selection(visual, vis_mask, record["keep"])
        return GenerateOutput(tokens, visual, timings)
