"""Analytic cost model for LLaVA-1.5 prefill: FLOPs, weight / KV-cache / activation memory.

Counting conventions (every function returns a dict, every number is for the whole batch):

* A multiply-add is 2 FLOPs. A Linear [in -> out] over s tokens costs 2*s*in*out.
* Attention scores QK^T and the weighted sum AV each cost 2*s*s*head_dim per query head, over the
  full s x s square (what a dense kernel computes; ``causal=True`` counts only the s(s+1)/2 lower
  triangle instead).
* Elementwise work (``elementwise=True``), with the per-element costs the LLM-Viewer roofline tool
  uses: softmax 5 per score (max, sub, exp, sum, div), RMSNorm/LayerNorm 7 per element, residual
  add 1, the gated activation 2 per intermediate element (act + gate multiply). The final norm is
  counted over all positions. These terms are ~0.01% of the total for 7B and change no rounding.
* LM head: ``lm_head="last"`` (only the position that predicts the first answer token, which is
  what generation needs), ``"all"`` (every position, what ``model(...).logits`` computes) or
  ``"none"``.
* Weight-only quantization does not change the FLOPs: weights are dequantized and the matmuls
  run in 16-bit float (this is also how LLM-Viewer reports the INT8/INT4 rows: same OPs,
  smaller weight memory).

Which convention reproduces the RC paper's numbers (LLaVA-1.5-7B: 576 visual tokens -> 8.5 TFLOPs,
~58 -> 1.5 TFLOPs)? The LLM alone (no CLIP, no projector, as LLM-Viewer analyses only the
language model), dense attention, LM head on the last position, plus a text prompt of about 60
tokens: f(576+60) = 8.45 T and f(58+60) = 1.54 T, both of which print as the paper's one-decimal
figures; 60 and 61 are the only integer text lengths for which both round correctly (with the LM
head on every position, 52-55 tokens do). 60 tokens is also about what LLaVA-1.5's vicuna_v1
prompt (system prompt, "USER: <image>\\n", a short question, the answer-format instruction,
"ASSISTANT:") tokenizes to. ``fit_text_tokens`` re-derives this. Counting the visual tokens alone
(text 0) gives only 7.64 T, and including CLIP ViT-L/336 adds ~0.38 T, which no text length
reconciles with both figures.

Memory (bytes):
* weights: decoder Linear weights at the weight bit width (+ their float32 scales when
  quantized, in paddle_rc.quant's format), plus the parts that stay 16-bit: token embedding,
  LM head (skipped by the default QuantConfig), norms.
* KV cache: 2 * layers * s * kv_heads * head_dim * kv_bits/8.
* activations: LLM-Viewer's "tmp activation": the sum of the tensors one decoder layer writes
  during prefill (q/o/MLP projections, attention scores and probabilities, norms, residuals),
  at ``act_bits``. The K/V projections are not in it: they are the KV cache.
* ``total`` = weights + KV cache + activations; ``total_llm_viewer`` counts only the decoder
  Linear weights (no embeddings, LM head or scales), as that tool does.
"""
from __future__ import annotations

import math

from paddle_rc.models.config import CLIPVisionConfig, LlamaConfig

PAPER_TEXT_TOKENS = 60
PAPER_VISUAL_TOKENS = {"none": 576, "rc": 58}
PAPER_TFLOPS = {"none": 8.5, "rc": 1.5}


# The model's own config classes describe the shapes; their defaults are LLaVA-1.5-7B's.
LLAVA_7B = LlamaConfig()
LLAVA_13B = LlamaConfig(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                        num_attention_heads=40, num_key_value_heads=40)
CLIP_L_336 = CLIPVisionConfig()


def _attn_pairs(s: int, causal: bool) -> int:
    return s * (s + 1) // 2 if causal else s * s


def _linear_macs_per_token(m: LlamaConfig) -> dict:
    kv = m.num_key_value_heads * m.head_dim
    return {"q_proj": m.hidden_size * m.hidden_size, "k_proj": m.hidden_size * kv, "v_proj": m.hidden_size * kv,
            "o_proj": m.hidden_size * m.hidden_size, "gate_proj": m.hidden_size * m.intermediate_size,
            "up_proj": m.hidden_size * m.intermediate_size, "down_proj": m.intermediate_size * m.hidden_size}


def llm_prefill_flops(m: LlamaConfig, seq_len: int, batch: int = 1, lm_head: str = "last",
                      elementwise: bool = True, causal: bool = False) -> dict:
    """FLOPs of one LLaMA prefill over ``seq_len`` tokens (see module docstring)."""
    if lm_head not in ("last", "all", "none"):
        raise ValueError(f"lm_head must be 'last', 'all' or 'none', got {lm_head!r}")
    s, b = int(seq_len), int(batch)
    pairs = _attn_pairs(s, causal)
    linear = 2 * b * s * sum(_linear_macs_per_token(m).values())
    qk = 2 * b * pairs * m.head_dim * m.num_attention_heads
    av = 2 * b * pairs * m.head_dim * m.num_attention_heads
    softmax = norm = residual = act = 0
    if elementwise:
        softmax = 5 * b * m.num_attention_heads * pairs
        norm = 2 * 7 * b * s * m.hidden_size
        residual = 2 * b * s * m.hidden_size
        act = 2 * b * s * m.intermediate_size
    per_layer = {"linear": linear, "attn_qk": qk, "attn_av": av, "softmax": softmax,
                 "norm": norm, "residual": residual, "act": act}
    layer_total = sum(per_layer.values())
    final_norm = 7 * b * s * m.hidden_size if elementwise else 0
    head_positions = {"last": 1, "all": s, "none": 0}[lm_head]
    head = 2 * b * head_positions * m.hidden_size * m.vocab_size
    out = {f"{k}": v * m.num_hidden_layers for k, v in per_layer.items()}
    out.update(per_layer_total=layer_total, final_norm=final_norm, lm_head=head,
               total=layer_total * m.num_hidden_layers + final_norm + head, seq_len=s, batch=b)
    return out


def vision_flops(v: CLIPVisionConfig, batch: int = 1, elementwise: bool = True) -> dict:
    """CLIP ViT forward (patch embedding, pre-norm, ``v.num_hidden_layers`` encoder layers) on one image."""
    b, n = int(batch), v.num_patches
    s = n + 1  # CLS
    patch = 2 * b * n * v.num_channels * v.patch_size ** 2 * v.hidden_size
    linear = 2 * b * s * (4 * v.hidden_size * v.hidden_size + 2 * v.hidden_size * v.intermediate_size)
    attn = 2 * 2 * b * s * s * v.hidden_size
    elem = 0
    if elementwise:
        elem = (5 * b * v.num_attention_heads * s * s + 2 * 7 * b * s * v.hidden_size + 2 * b * s * v.hidden_size
                + 2 * b * s * v.intermediate_size)
    pre_norm = 7 * b * s * v.hidden_size if elementwise else 0
    total = patch + pre_norm + v.num_hidden_layers * (linear + attn + elem)
    return {"patch_embed": patch, "linear": linear * v.num_hidden_layers, "attention": attn * v.num_hidden_layers,
            "elementwise": elem * v.num_hidden_layers + pre_norm, "total": total}


def projector_flops(vision_hidden: int, llm_hidden: int, tokens: int, batch: int = 1,
                    elementwise: bool = True) -> dict:
    """mlp2x_gelu projector on the ``tokens`` visual tokens that reach the LLM."""
    t, b = int(tokens), int(batch)
    linear = 2 * b * t * (vision_hidden * llm_hidden + llm_hidden * llm_hidden)
    act = 2 * b * t * llm_hidden if elementwise else 0
    return {"linear": linear, "act": act, "total": linear + act}


def prefill_flops(llm: LlamaConfig = LLAVA_7B, visual_tokens: int = 576, text_tokens: int = PAPER_TEXT_TOKENS,
                  batch: int = 1, lm_head: str = "last", elementwise: bool = True,
                  causal: bool = False, vision: CLIPVisionConfig | None = None,
                  include_projector: bool = False) -> dict:
    """LLaVA prefill FLOPs: LLM over visual+text tokens, optionally + CLIP tower and projector.

    ``vision=None`` counts the LLM only (the paper-table convention)."""
    seq = int(visual_tokens) + int(text_tokens)
    llm_part = llm_prefill_flops(llm, seq, batch, lm_head, elementwise, causal)
    out = {"visual_tokens": int(visual_tokens), "text_tokens": int(text_tokens), "seq_len": seq,
           "llm": llm_part["total"], "llm_breakdown": llm_part, "vision": 0, "projector": 0}
    if vision is not None:
        out["vision"] = vision_flops(vision, batch, elementwise)["total"]
    if include_projector:
        vh = vision.hidden_size if vision is not None else CLIP_L_336.hidden_size
        out["projector"] = projector_flops(vh, llm.hidden_size, visual_tokens, batch, elementwise)["total"]
    out["total"] = out["llm"] + out["vision"] + out["projector"]
    out["tflops"] = out["total"] / 1e12
    return out


def fastv_prefill_flops(llm: LlamaConfig = LLAVA_7B, visual_tokens: int = 576, kept: int = 288,
                        layer: int = 2, text_tokens: int = PAPER_TEXT_TOKENS, batch: int = 1,
                        lm_head: str = "last", elementwise: bool = True, causal: bool = False) -> dict:
    """LLM prefill FLOPs with FastV: the first ``layer`` decoder layers over visual + text tokens,
    the other layers over kept + text, plus the ranking (the last position's q in layer K-1 and its
    attention row, heads averaged); final norm and LM head after the pruning."""
    if not 1 <= int(layer) < llm.num_hidden_layers:
        raise ValueError(f"layer must be in [1, {llm.num_hidden_layers - 1}], got {layer}")
    full = llm_prefill_flops(llm, int(visual_tokens) + int(text_tokens), batch, lm_head, elementwise, causal)
    short = llm_prefill_flops(llm, int(kept) + int(text_tokens), batch, lm_head, elementwise, causal)
    s, b, k = full["seq_len"], int(batch), int(layer)
    rank = 2 * b * llm.hidden_size * llm.hidden_size + 2 * b * s * llm.head_dim * llm.num_attention_heads
    if elementwise:
        rank += 7 * b * llm.hidden_size + 5 * b * llm.num_attention_heads * s + b * llm.num_attention_heads * s
    layers = k * full["per_layer_total"] + (llm.num_hidden_layers - k) * short["per_layer_total"]
    total = layers + rank + short["final_norm"] + short["lm_head"]
    return {"visual_tokens": int(visual_tokens), "kept": int(kept), "layer": k, "text_tokens": int(text_tokens),
            "seq_len": s, "seq_len_after": short["seq_len"], "layers": layers, "ranking": rank,
            "total": total, "tflops": total / 1e12}


def _scale_rows(n_in: int, group_size: int) -> int:
    return 1 if group_size == -1 else math.ceil(n_in / group_size)


def memory_bytes(llm: LlamaConfig = LLAVA_7B, seq_len: int = 576 + PAPER_TEXT_TOKENS, weight_bits: int = 16,
                 batch: int = 1, kv_bits: int = 16, act_bits: int = 16, group_size: int = -1,
                 float_bits: int = 16, causal: bool = False) -> dict:
    """Weight, KV-cache and prefill-activation memory of the LLM (see module docstring)."""
    if weight_bits not in (16, 8, 4):
        raise ValueError(f"weight_bits must be 16, 8 or 4, got {weight_bits}")
    s, b = int(seq_len), int(batch)
    macs = _linear_macs_per_token(llm)
    n_linear = sum(macs.values()) * llm.num_hidden_layers
    w_linear = n_linear * weight_bits / 8
    scales = 0
    if weight_bits < 16:
        in_dims = {"q_proj": llm.hidden_size, "k_proj": llm.hidden_size, "v_proj": llm.hidden_size,
                   "o_proj": llm.hidden_size, "gate_proj": llm.hidden_size, "up_proj": llm.hidden_size,
                   "down_proj": llm.intermediate_size}
        for name, n in macs.items():
            n_out = n // in_dims[name]
            scales += _scale_rows(in_dims[name], group_size) * n_out * 4
        scales *= llm.num_hidden_layers
    other = (2 * llm.vocab_size * llm.hidden_size + (2 * llm.num_hidden_layers + 1) * llm.hidden_size) * float_bits / 8
    kv_dim = llm.num_key_value_heads * llm.head_dim
    kv = 2 * llm.num_hidden_layers * b * s * kv_dim * kv_bits / 8
    pairs = _attn_pairs(s, causal)
    a = act_bits / 8
    act_elems = b * (s * llm.hidden_size                       # q_proj
                     + 2 * llm.num_attention_heads * pairs              # scores, probabilities
                     + s * llm.hidden_size                     # attention output (AV)
                     + s * llm.hidden_size                     # o_proj
                     + 2 * s * llm.intermediate_size           # gate, up
                     + s * llm.intermediate_size               # act(gate) * up
                     + s * llm.hidden_size                     # down_proj
                     + 2 * s * llm.hidden_size                 # two norms
                     + 2 * s * llm.hidden_size)                # two residual adds
    act = act_elems * a
    weights = w_linear + scales + other
    return {"weights": weights, "weights_linear": w_linear, "weights_scales": scales,
            "weights_float_other": other, "kv_cache": kv, "activations": act,
            "total": weights + kv + act, "total_llm_viewer": w_linear + kv + act,
            "seq_len": s, "weight_bits": weight_bits}


BITS_NAMES = {16: "FP16", 8: "INT8", 4: "INT4"}


def paper_table_rows(llm: LlamaConfig = LLAVA_7B, rc_visual_tokens: int = PAPER_VISUAL_TOKENS["rc"],
                     text_tokens: int = PAPER_TEXT_TOKENS, full_visual_tokens: int = 576,
                     bits=(16, 8, 4), lm_head: str = "last", group_size: int = -1) -> list:
    """Rows of the paper-style cost table: (none, rc at T tokens) x (FP16, INT8, INT4)."""
    rows = []
    for method, vt in (("none", full_visual_tokens), ("rc", rc_visual_tokens)):
        fl = prefill_flops(llm, vt, text_tokens, lm_head=lm_head)
        for wb in bits:
            mem = memory_bytes(llm, vt + text_tokens, weight_bits=wb,
                               group_size=group_size if wb < 16 else -1)
            rows.append({"method": method, "visual_tokens": vt, "text_tokens": text_tokens,
                         "quantization": BITS_NAMES[wb], "tflops": fl["total"] / 1e12,
                         "weights_gb": mem["weights"] / 1e9, "kv_cache_gb": mem["kv_cache"] / 1e9,
                         "activations_gb": mem["activations"] / 1e9, "total_gb": mem["total"] / 1e9,
                         "total_llm_viewer_gb": mem["total_llm_viewer"] / 1e9})
    return rows


def fit_text_tokens(llm: LlamaConfig = LLAVA_7B, targets=None, max_text: int = 256, decimals: int = 1,
                    **flop_kwargs) -> list:
    """Text lengths t for which prefill_flops(visual+t) rounds to every target TFLOPs figure.

    ``targets`` maps visual token count -> reported TFLOPs (default: the RC paper's 576 -> 8.5,
    58 -> 1.5)."""
    targets = targets or {PAPER_VISUAL_TOKENS["none"]: PAPER_TFLOPS["none"],
                          PAPER_VISUAL_TOKENS["rc"]: PAPER_TFLOPS["rc"]}
    found = []
    for t in range(max_text + 1):
        if all(round(prefill_flops(llm, vt, t, **flop_kwargs)["total"] / 1e12, decimals) == want
               for vt, want in targets.items()):
            found.append(t)
    return found
