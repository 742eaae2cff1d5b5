"""paddle_rc.benchmark.compute on a tiny LLaMA: analytic columns agree with flops.py (and a hand
count), measured columns are present, the plot is written; the CLI in analytic-only mode."""
import importlib.util
import json
import os

import pytest

from paddle_rc.benchmark.compute import ComputeSettings, format_compute_table, plot_compute, run_compute_benchmark
from paddle_rc.benchmark.flops import fastv_prefill_flops, memory_bytes, prefill_flops
from paddle_rc.errors import UserError
from paddle_rc.models.config import LlamaConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=50)


def _bench_tool():
    spec = importlib.util.spec_from_file_location("bench_tool", os.path.join(ROOT, "tools", "benchmark.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_compute_tiny_analytic_and_measured(tmp_path):
    s = ComputeSettings(llm=TINY, layers=2, visual_tokens=(20, 5), text_tokens=7, bits=(32, 8, 4),
                        repeats=2, sweep=(20, 10, 5), sweep_bits=(32, 8), fastv_kept=5, fastv_layer=2)
    res = run_compute_benchmark(s)
    rows = res["rows"]
    assert [(r["method"], r["precision"]) for r in rows] == [
        ("none", "fp32"), ("none", "int8"), ("none", "int4"), ("rc", "fp32"), ("rc", "int8"), ("rc", "int4"),
        ("fastv", "fp32"), ("fastv", "int8"), ("fastv", "int4")]
    for r in rows[6:]:
        # FastV: the first 2 of 3 layers over 20 + 7 tokens, the last over 5 + 7.
        assert r["tflops"] == fastv_prefill_flops(TINY, 20, 5, 2, 7)["total"] / 1e12
        assert rows[3]["tflops"] < r["tflops"] < rows[0]["tflops"]
        # KV cache by hand: 2 (K,V) * (2 layers * 27 tokens + 1 layer * 12 tokens) * 2 heads * 16 * 4 B.
        assert r["kv_cache_bytes"] == pytest.approx(2 * (2 * 27 + 12) * 2 * 16 * 4)
        assert r["activation_bytes"] == rows[0]["activation_bytes"]
        assert r["prefill_s"] > 0
    for r in rows[:6]:
        fl = prefill_flops(TINY, r["visual_tokens"], 7)
        assert r["tflops"] == fl["total"] / 1e12
        mem = memory_bytes(TINY, r["visual_tokens"] + 7, weight_bits=16 if r["bits"] == 32 else r["bits"],
                           kv_bits=32, act_bits=32, float_bits=32)
        assert r["kv_cache_bytes"] == mem["kv_cache"]
        assert r["activation_bytes"] == mem["activations"]
        if r["bits"] != 32:
            assert r["weights_bytes"] == mem["weights"]
        assert r["total_bytes"] == r["weights_bytes"] + r["kv_cache_bytes"] + r["activation_bytes"]
        # Measured columns exist for every cell; no assertion on their size (timing is machine noise).
        assert r["prefill_s"] > 0 and len(r["prefill_s_all"]) == 2
        assert r["speedup_vs_none"] > 0
    # Hand count of float32 weights: decoder Linears per layer q 64*64 + k,v 64*32 each + o 64*64 +
    # gate, up, down 64*96 each = 30720; 3 layers; + embedding and LM head 2*50*64 + norms (2*3+1)*64.
    fp32 = rows[0]
    assert fp32["weights_bytes"] == 4 * (3 * 30720 + 2 * 50 * 64 + 7 * 64)
    # KV cache by hand: 2 (K,V) * 3 layers * 27 tokens * 2 kv heads * 16 dims * 4 bytes.
    assert fp32["kv_cache_bytes"] == 2 * 3 * 27 * 2 * 16 * 4
    int8 = rows[1]
    # int8 Linears: one byte per weight + one float32 scale per output channel.
    scales = 3 * 4 * (64 + 32 + 32 + 64 + 96 + 96 + 64)
    assert int8["weights_bytes"] == 3 * 30720 + scales + 4 * (2 * 50 * 64 + 7 * 64)
    assert all(r["speedup_vs_none"] == 1.0 for r in rows if r["method"] == "none")
    assert rows[3]["flops_ratio_vs_none"] == pytest.approx(rows[0]["tflops"] / rows[3]["tflops"])
    assert [p["visual_tokens"] for p in res["sweep"]] == [20, 10, 5]
    assert set(res["sweep"][0]["prefill_s"]) == {"fp32", "int8"}

    table = format_compute_table(res)
    assert table.count("\n| rc |") == 3 and "speed-up vs none" in table
    png = tmp_path / "c.png"
    plot_compute(res, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compute_cli_analytic_7b(tmp_path, capsys):
    js, png = tmp_path / "c.json", tmp_path / "c.png"
    tool = _bench_tool()
    assert tool.main(["compute", "--no-measure", "--bits", "16,8,4", "--json", str(js), "--plot", str(png)]) == 0
    res = json.loads(js.read_text())
    by = {(r["method"], r["precision"]): r for r in res["rows"]}
    # The paper's figures: 576 visual tokens -> 8.5 TFLOPs, rc's 58 -> 1.5 (60 text tokens).
    assert round(by["none", "fp16"]["tflops"], 1) == 8.5 and round(by["rc", "int4"]["tflops"], 1) == 1.5
    # FP16 LLaVA-7B: 6.48e9 decoder Linear weights at 2 bytes + embeddings/head/norms.
    assert by["none", "fp16"]["weights_bytes"] == pytest.approx(13.48e9, rel=1e-3)
    assert by["none", "int8"]["weights_bytes"] < 0.55 * by["none", "fp16"]["weights_bytes"]
    assert "prefill_s" not in by["none", "fp16"]
    assert png.exists()
    assert "| rc | 58 | int4 | 1.54 |" in capsys.readouterr().out


@pytest.mark.parametrize("argv,msg", [
    (["compute", "--visual-tokens", "576"], "NONE,RC"),
    (["compute", "--bits", "32,2"], "32, 16, 8 or 4"),
    (["compute", "--layers", "0"], "at least 1"),
    (["quant", "--prompts", "0"], "at least 1"),
    (["quant", "--train-steps", "-1"], "0 or more"),
    (["quant", "--accuracy-methods", "nonsense"], "unknown nonsense"),
])
def test_compute_cli_errors(argv, msg):
    with pytest.raises(UserError, match=msg):
        _bench_tool().main(argv)


def test_quant_eval_on_demo(tmp_path, monkeypatch):
    from paddle_rc.benchmark.quant_eval import format_quant_report, measure_rss, run_quant_eval

    monkeypatch.setenv("PADDLE_RC_HOME", str(tmp_path / "home"))
    res = run_quant_eval(prompts=50, prompt_len=8, slice_eval=False, train_steps=0, rss=False,
                         workdir=str(tmp_path / "w"), accuracy_items=16, accuracy_seed=777,
                         accuracy_methods=("none",))
    assert "trained" not in res and "slice" not in res
    from paddle_rc.demo import default_model
    from paddle_rc.train import evaluate_model
    acc = res["demo"]["accuracy"]
    assert set(acc) == {"fp32", "int8", "int4"} and all(set(a) == {"none"} for a in acc.values())
    assert acc["fp32"]["none"] == evaluate_model(default_model(), 777, 16)
    assert all(a["none"]["questions"] == 16 for a in acc.values())
    assert "| int4 | none | " in format_quant_report(res)
    p = res["demo"]["precisions"]
    assert p["int8"]["linear_ratio"] <= 0.27 and p["int4"]["linear_ratio"] <= 0.15
    assert p["fp32"]["checkpoint_bytes"] > p["int8"]["checkpoint_bytes"] > p["int4"]["checkpoint_bytes"]
    for name in ("int8", "int4"):
        lg = p[name]["logits"]["random"]
        assert lg["prompts"] == 50 and lg["positions"] == 50 * 8
        assert 0 < lg["max_abs"] and 0 <= lg["near_ties"] <= 1
    assert p["int8"]["logits"]["random"]["max_abs"] < p["int4"]["logits"]["random"]["max_abs"]
    assert p["int8"]["logits"]["random"]["top1_all"] >= 0.9
    assert "| int8 | random (50) |" in format_quant_report(res)
    we = {(r["scheme"], r["clip_search"]): r["relative_error"] for r in res["demo"]["weight_errors"]}
    assert len(we) == 6
    for scheme in ("int8", "int4-g128", "int4"):
        assert 0 < we[(scheme, True)] <= we[(scheme, False)] * (1 + 1e-6)
    assert we[("int8", False)] < we[("int4", False)] / 10
    assert "| int4-g128 |" in format_quant_report(res)
    rss = measure_rss(res["demo"]["dirs"]["int8"])
    assert rss["rss_increase"] > 0 and rss["peak_during_load"] >= rss["rss_increase"]
