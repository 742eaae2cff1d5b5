"""tools/benchmark.py seven-b's pipeline at toy shapes: random checkpoint -> quantize -> infer.py
processes -> table, and nothing left behind."""
import os

import pytest

from paddle_rc.benchmark.seven_b import (format_seven_b_table, prepare_checkpoints, run_seven_b, seven_b_config,
                                         write_random_checkpoint)


def _small(clip_tok, llm_tok):
    cfg = seven_b_config(clip_tok, llm_tok)
    cfg.vision.hidden_size, cfg.vision.intermediate_size, cfg.vision.num_hidden_layers = 64, 128, 3
    cfg.vision.num_attention_heads, cfg.vision.projection_dim = 4, 32
    cfg.text.hidden_size, cfg.text.intermediate_size, cfg.text.num_hidden_layers = 32, 64, 2
    cfg.text.num_attention_heads, cfg.text.projection_dim, cfg.text.vocab_size = 4, 32, 1000
    cfg.llm.hidden_size, cfg.llm.intermediate_size, cfg.llm.num_hidden_layers = 128, 192, 2
    cfg.llm.num_attention_heads, cfg.llm.num_key_value_heads, cfg.llm.vocab_size = 4, 4, 1000
    return cfg


def test_random_checkpoint_loads_and_never_emits_eos(tmp_path):
    import numpy as np

    from paddle_rc.models import LlavaForConditionalGeneration

    d = str(tmp_path / "ckpt")
    nbytes = write_random_checkpoint(d, make_config=_small)
    model = LlavaForConditionalGeneration.from_pretrained(d)
    cfg = model.config
    assert nbytes > 0 and cfg.weights_dtype == "float16"
    w = model.lm_head.weight.numpy()
    assert np.all(w[:, cfg.llm.eos_token_id] == 0) and w.std() > 0.01
    assert np.all(model.language_model.norm.weight.numpy() == 1)


def test_pipeline_end_to_end(tmp_path):
    # One preset keeps this test short; presets differ only in QuantConfig.preset (tested elsewhere).
    res = run_seven_b(str(tmp_path), presets=("int4-g128",), methods=("none", "rc"),
                      max_new_tokens=3, make_config=_small, deploy=True)
    assert os.listdir(tmp_path) == []  # cleaned up
    assert [(c["weights"], c["method"], c["deployed"]) for c in res["cases"]] == [
        ("int4-g128", "none", False), ("int4-g128", "rc", False), ("int4-g128", "rc", True)]
    # The export stores the checkpoint's weights once: at most the float16 -> float32 growth of
    # the float tensors (here most of this toy model), never a second LLM.
    assert 1.0 < res["export"]["int4-g128"]["ratio"] < 2.5
    for c in res["cases"]:
        assert c["new_tokens"] == 3 and c["decode_s_per_token"] > 0 and c["peak_rss_gb"] > 0.1
        assert c["visual_tokens"] == (576 if c["method"] == "none" else c["visual_tokens"])
    assert res["cases"][1]["visual_tokens"] < 576
    # the text part of the prompt is the same for both methods
    assert [c["prompt_tokens"] - c["visual_tokens"] for c in res["cases"]] == [res["cases"][0]["prompt_tokens"] - 576] * 3
    # the float32 GEMM reference is timed at the none prefill's tokens, for the toy model's 2 layers
    bound = res["gemm_bound"]
    assert bound["rows"] == res["cases"][0]["prompt_tokens"] and bound["prefill_s"] == pytest.approx(2 * bound["layer_s"])
    assert res["quant_bytes"]["int4-g128"] < res["fp16_bytes"]
    table = format_seven_b_table(res)
    assert "| int4-g128 | rc | dynamic |" in table and "| int4-g128 | rc | deployed |" in table
    assert "rc prefill speed-up" in table and "int4-g128 export (rc)" in table
    assert "int4-g128: none prefill" in table and "the GEMM-bound time" in table


def test_prepared_checkpoints_are_reused(tmp_path):
    """--checkpoints DIR: written once (float16 source removed), reused by later runs with the
    same shapes and presets, written again for other shapes; the runs leave them in place."""
    d = str(tmp_path / "ck")
    first = prepare_checkpoints(d, ("int8",), make_config=_small)
    assert first["reused"] == [] and first["fp16_bytes"] > 0
    stamp = os.path.getmtime(os.path.join(first["paths"]["int8"], "model.safetensors"))
    second = prepare_checkpoints(d, ("int8", "int4-g128"), make_config=_small)
    assert second["reused"] == ["int8"] and second["fp16_bytes"] == first["fp16_bytes"]
    assert os.path.getmtime(os.path.join(first["paths"]["int8"], "model.safetensors")) == stamp
    assert sorted(os.listdir(d)) == ["llava-7b-random-int4-g128", "llava-7b-random-int8", "seven-b.json"]

    res = run_seven_b(str(tmp_path / "work"), presets=("int8",), methods=("rc",), max_new_tokens=2,
                      make_config=_small, checkpoints=d)
    assert res["reused"] == ["int8"] and [c["method"] for c in res["cases"]] == ["rc"]
    assert "int8 prepared by an earlier run" in format_seven_b_table(res)
    assert os.listdir(tmp_path / "work") == [] and os.path.isdir(first["paths"]["int8"])

    def one_layer(clip_tok, llm_tok):
        cfg = _small(clip_tok, llm_tok)
        cfg.llm.num_hidden_layers = 1
        return cfg

    assert prepare_checkpoints(d, ("int8",), make_config=one_layer)["reused"] == []


def test_churn_measurement_counts_the_portable_paths_fresh_memory():
    """With glibc's default malloc (a MALLOC_* variable set keeps paddle_rc from tuning it)."""
    import json
    import subprocess
    import sys

    code = ("import json; from paddle_rc.benchmark.seven_b import format_churn_table, measure_decode_churn\n"
            "rows = measure_decode_churn(layers=1, long_prefill=16, short_prefill=4, steps=1, intermediate=4096)\n"
            "print(json.dumps([rows, format_churn_table(rows)]))\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root, MALLOC_TOP_PAD_="131072", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    rows, table = json.loads(out.stdout.strip().splitlines()[-1])
    assert all(r["malloc_keeps_freed_memory"] is False for r in rows)
    by = {(r["path"], r["after"]): r for r in rows}
    # The portable path faults in a float copy of every weight on every token (7 Linears of 4096x4096:
    # 64 MB each, above glibc's mmap threshold, so each is a fresh mapping: ~16k 4 KiB pages); the
    # operator allocates only activations.
    assert by[("portable", "none")]["minor_faults_per_token"] > 20000
    assert by[("operator", "none")]["minor_faults_per_token"] < 2000
    assert "| operator | rc (4 tokens) |" in table


def test_benchmark_prompt_is_as_long_as_llavas_tokenizer_makes_it(tmp_path):
    """The random 7B's tokenizer turns the benchmark prompt into about as many tokens as LLaVA's real one
    (~75-80), not the ~190 letter pairs of a 400-piece model: the text part of a prefill sets how much
    `rc` can save."""
    from paddle_rc.benchmark.seven_b import QUESTION, write_llm_tokenizer
    from paddle_rc.data.conversation import get_template
    from paddle_rc.data.llama_tokenizer import LlamaTokenizer

    write_llm_tokenizer(str(tmp_path))
    tok = LlamaTokenizer.from_dir(str(tmp_path / "tokenizer"))
    n = len(tok.tokenize_with_image(get_template("vicuna_v1").prompt(QUESTION, with_image=True), -200))
    assert 60 <= n <= 90, n
