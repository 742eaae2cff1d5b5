import pytest

from paddle_rc.benchmark.flops import (CLIP_L_336, LLAVA_7B, fit_text_tokens, llm_prefill_flops, memory_bytes,
                                       paper_table_rows, prefill_flops, projector_flops,
                                       vision_flops)
from paddle_rc.models.config import CLIPVisionConfig, LlamaConfig

# Tiny LLaMA: H=8, I=16, 2 layers, 2 heads (head_dim 4), 1 KV head (GQA), vocab 10.
TINY = LlamaConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=1, vocab_size=10)


def test_llm_prefill_flops_hand_count():
    # s = 3 visual + 2 text = 5 tokens.
    # Linear MACs per token per layer: q 8*8=64, k 8*4=32, v 32, o 64, gate 128, up 128,
    # down 128 -> 576; FLOPs = 2 * 5 * 576 = 5760.
    # QK^T: 2 heads * 5*5 pairs * 4 dims = 200 MACs = 400 FLOPs; AV the same: 400.
    # Elementwise: softmax 5*2*25 = 250; two norms 2*7*8*5 = 560; two residuals 2*8*5 = 80;
    # act 2*16*5 = 160 -> 1050.
    # Per layer 5760 + 800 + 1050 = 7610; 2 layers 15220; final norm 7*8*5 = 280.
    # LM head last position 2*8*10 = 160 -> 15660. All positions: 5*160 = 800 -> 16300.
    r = prefill_flops(TINY, visual_tokens=3, text_tokens=2)
    assert r["seq_len"] == 5
    assert r["llm_breakdown"]["linear"] == 2 * 5760
    assert r["llm_breakdown"]["attn_qk"] == 2 * 400
    assert r["llm_breakdown"]["per_layer_total"] == 7610
    assert r["total"] == 15660
    assert prefill_flops(TINY, 3, 2, lm_head="all")["total"] == 16300
    assert prefill_flops(TINY, 3, 2, lm_head="none")["total"] == 15500
    # Matmuls only: 2 * (5760 + 800) + 160 = 13280.
    assert prefill_flops(TINY, 3, 2, elementwise=False)["total"] == 13280
    # Causal: 15 of the 25 pairs -> QK and AV 240 each, softmax 150 per layer.
    c = llm_prefill_flops(TINY, 5, causal=True, elementwise=False, lm_head="none")
    assert c["total"] == 2 * (5760 + 480)
    # Batch scales everything linearly.
    assert prefill_flops(TINY, 3, 2, batch=3)["total"] == 3 * 15660
    with pytest.raises(ValueError):
        prefill_flops(TINY, 3, 2, lm_head="first")


def test_vision_and_projector_hand_count():
    # ViT: C=4, I=8, 1 layer, 2 heads, image 4 / patch 2 -> 4 patches + CLS = 5 tokens.
    v = CLIPVisionConfig(hidden_size=4, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2,
                         image_size=4, patch_size=2)
    # Patch conv: 4 patches * (3*2*2) * 4 MACs = 192 -> 384.
    # Layer linears: (4*16 + 2*32) = 128 MACs/token * 5 * 2 = 1280.
    # Attention: QK and AV 5*5*4 MACs each -> 2 * 200 = 400.
    # Elementwise: softmax 5*2*25 = 250, norms 2*7*4*5 = 280, residual 2*4*5 = 40, act 2*8*5 = 80;
    # pre-norm 7*4*5 = 140.
    r = vision_flops(v)
    assert r["patch_embed"] == 384
    assert r["total"] == 384 + 140 + 1280 + 400 + 650
    # Projector 4 -> 8 -> 8 on 3 tokens: 2*3*(32 + 64) = 576, GELU 2*3*8 = 48.
    assert projector_flops(4, 8, 3)["total"] == 624


def test_memory_hand_count():
    # s = 5. Decoder linear params 576 per layer * 2 = 1152.
    m = memory_bytes(TINY, seq_len=5, weight_bits=16)
    assert m["weights_linear"] == 2304
    # Embedding + LM head 2*10*8 = 160, norms (2*2+1)*8 = 40 -> 200 params, fp16.
    assert m["weights_float_other"] == 400
    # KV: 2 (K,V) * 2 layers * 5 tokens * 4 (1 kv head * 4) * 2 bytes.
    assert m["kv_cache"] == 160
    # Activations of one layer: q 40, scores+probs 2*2*25 = 100, AV 40, o 40, gate+up 160,
    # act 80, down 40, norms 80, residuals 80 -> 660 elements * 2 bytes.
    assert m["activations"] == 1320
    assert m["total"] == 2304 + 400 + 160 + 1320
    assert m["total_llm_viewer"] == 2304 + 160 + 1320
    q8 = memory_bytes(TINY, seq_len=5, weight_bits=8)
    # Per-channel fp32 scales: out dims 8+4+4+8+16+16+8 = 64 per layer -> 2*64*4 bytes.
    assert q8["weights_linear"] == 1152 and q8["weights_scales"] == 512
    q4 = memory_bytes(TINY, seq_len=5, weight_bits=4, group_size=4)
    # Groups of 4: q,k,v,o,gate,up have in=8 -> 2 scale rows x out 8+4+4+8+16+16 = 56;
    # down has in=16 -> 4 rows x out 8. fp32, 2 layers.
    assert q4["weights_linear"] == 576
    assert q4["weights_scales"] == 2 * (2 * 56 + 4 * 8) * 4


def test_llava_7b_matches_paper_within_5_percent():
    """RC paper: 576 visual tokens -> 8.5 TFLOPs, ~58 -> 1.5 TFLOPs (LLM only, LM head on the
    last position, ~60 text tokens)."""
    full = prefill_flops(LLAVA_7B, 576, 60)["tflops"]
    rc = prefill_flops(LLAVA_7B, 58, 60)["tflops"]
    assert abs(full - 8.5) / 8.5 < 0.05 and round(full, 1) == 8.5
    assert abs(rc - 1.5) / 1.5 < 0.05 and round(rc, 1) == 1.5
    assert fit_text_tokens() == [60, 61]
    # Visual tokens alone fall short, and adding the CLIP tower overshoots: neither convention
    # gives both figures.
    assert round(prefill_flops(LLAVA_7B, 576, 0)["tflops"], 1) == 7.6
    assert fit_text_tokens(vision=CLIP_L_336) == []


def test_paper_table_rows():
    rows = paper_table_rows()
    assert [(r["method"], r["quantization"]) for r in rows] == [
        ("none", "FP16"), ("none", "INT8"), ("none", "INT4"),
        ("rc", "FP16"), ("rc", "INT8"), ("rc", "INT4")]
    by = {(r["method"], r["quantization"]): r for r in rows}
    assert by[("none", "FP16")]["tflops"] == by[("none", "INT4")]["tflops"]
    # 6.48 B decoder Linear params: 12.95 GB at fp16, about half at int8 (+ scales).
    lin16 = memory_bytes(LLAVA_7B, 636, 16)["weights_linear"]
    assert lin16 == pytest.approx(2 * 32 * 202_375_168)
    assert by[("none", "INT8")]["weights_gb"] < 0.55 * by[("none", "FP16")]["weights_gb"]
    assert by[("rc", "FP16")]["kv_cache_gb"] < by[("none", "FP16")]["kv_cache_gb"] / 5
    assert by[("rc", "INT4")]["total_gb"] < by[("none", "INT4")]["total_gb"]


def test_fastv_flops_split_the_layers():
    from paddle_rc.benchmark.flops import LLAVA_7B, fastv_prefill_flops, llm_prefill_flops

    full = llm_prefill_flops(LLAVA_7B, 636)
    short = llm_prefill_flops(LLAVA_7B, 348)
    fv = fastv_prefill_flops(LLAVA_7B, 576, 288, layer=2, text_tokens=60)
    assert fv["layers"] == 2 * full["per_layer_total"] + 30 * short["per_layer_total"]
    # The ranking is one q projection and one attention row: tiny next to a layer.
    assert 0 < fv["ranking"] < 1e-3 * full["per_layer_total"]
    assert fv["total"] == fv["layers"] + fv["ranking"] + short["final_norm"] + short["lm_head"]
    # The paper's setting (K=2, R=50%) removes about 43% of the 7B prefill FLOPs here.
    assert 0.40 < 1 - fv["total"] / full["total"] < 0.46
    # Keeping everything costs the dense prefill plus the ranking.
    keep_all = fastv_prefill_flops(LLAVA_7B, 576, 576, layer=2, text_tokens=60)
    assert keep_all["total"] == full["total"] + keep_all["ranking"]
    with pytest.raises(ValueError, match="layer"):
        fastv_prefill_flops(LLAVA_7B, 576, 288, layer=32)
