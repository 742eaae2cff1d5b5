"""Evaluation throughput: items per second of tools/eval.py's runner at batch 1 and batch N.

The real runner (paddle_rc.eval.runner.run_benchmark) answers the synthetic benchmark
(paddle_rc.synth, written to a temporary folder) with the dynamic model and with its Paddle
Inference export, at each batch size, interleaved and repeated; every run starts from an empty
answer file. Greedy answers must come out identical at every batch size: a difference stops the
benchmark instead of being timed.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time


def _answers(path):
    with open(path, "r", encoding="utf-8") as f:
        return [(r["uid"], r["text"]) for r in map(json.loads, f)]


# "demo" is the built-in demo model (paddle_rc.demo.default_model: trained on the synthetic task, 224 px
# ViT 128 wide x 4, LLM 192 wide x 3: per-call overheads dominate); "wide" is a random-weight checkpoint
# with the deploy benchmark's wide geometry (336 px ViT 256x6, LLM 1024 wide x 4 layers), where the
# matmuls start to dominate. Speed does not depend on the weights, so random ones serve for timing.
PRESETS = {
    "demo": None,
    "wide": dict(vision=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=6,
                             num_attention_heads=8, image_size=336, patch_size=14, projection_dim=128),
                 text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           projection_dim=128),
                 llm=dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=4,
                          num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=2048)),
}
SEED = 0


def write_preset_checkpoint(directory, preset):
    """A random-weight checkpoint of ``preset`` with small generated tokenizers
    (paddle_rc.data.tiny_tokenizers), for timing only."""
    import paddle

    from paddle_rc.data.clip_tokenizer import CLIPTokenizer
    from paddle_rc.data.llama_tokenizer import LlamaTokenizer
    from paddle_rc.data.tiny_tokenizers import build_tiny_clip_bpe, build_tiny_sentencepiece
    from paddle_rc.models import LlavaForConditionalGeneration
    from paddle_rc.models.config import CLIPTextConfig, CLIPVisionConfig, LlamaConfig, LlavaConfig
    from paddle_rc.models.weights import save_weights

    build_tiny_sentencepiece(os.path.join(directory, "tokenizer"))
    build_tiny_clip_bpe(os.path.join(directory, "clip_tokenizer"))
    clip_tok = CLIPTokenizer.from_dir(os.path.join(directory, "clip_tokenizer"))
    llm_tok = LlamaTokenizer.from_dir(os.path.join(directory, "tokenizer"))
    spec = PRESETS[preset]
    cfg = LlavaConfig(
        vision=CLIPVisionConfig(**spec["vision"]),
        text=CLIPTextConfig(vocab_size=clip_tok.vocab_size, bos_token_id=clip_tok.bos_token_id,
                            eos_token_id=clip_tok.eos_token_id, pad_token_id=clip_tok.pad_token_id, **spec["text"]),
        llm=LlamaConfig(vocab_size=llm_tok.vocab_size, bos_token_id=llm_tok.bos_token_id,
                        eos_token_id=llm_tok.eos_token_id, pad_token_id=llm_tok.pad_token_id, **spec["llm"]),
        image_token_index=-200, conv_mode="vicuna_v1", source="random-" + preset, weights_dtype="float32",
    )
    paddle.seed(SEED)
    model = LlavaForConditionalGeneration(cfg)
    cfg.save(directory)
    save_weights(model, directory)
    return directory


def run_eval_batch_benchmark(model_dir=None, batch_sizes=(1, 8), items=32, repeats=3,
                             max_new_tokens=8, method="rc", budget=None, backends=("dynamic", "deploy"),
                             say=print, preset="demo"):
    from paddle_rc.eval.benchmarks import load_benchmark
    from paddle_rc.eval.runner import run_benchmark
    from paddle_rc.predictor import build_predictor
    from paddle_rc.synth.layout import write_synthvqa

    work = tempfile.mkdtemp(prefix="paddle_rc_evalbatch.")
    try:
        write_synthvqa(work, seed=7, n=items, progress=False)
        bench = load_benchmark("synthvqa", work)
        if model_dir is None and PRESETS.get(preset) is not None:
            model_dir = write_preset_checkpoint(os.path.join(work, "ckpt-" + preset), preset)
        predictors = {}
        if "dynamic" in backends:
            predictors["dynamic"] = build_predictor(model_dir, method=method, budget=budget)
        if "deploy" in backends:
            from paddle_rc.demo import default_model
            from paddle_rc.export import export_model

            deploy_dir = os.path.join(work, "deploy")
            say(f"exporting {model_dir or 'the demo model'} (method {method}) ...")
            export_model(model_dir or default_model(), deploy_dir, method=method, budget=budget)
            predictors["deploy"] = build_predictor(deploy_dir=deploy_dir)
        times = {(b, bs): [] for b in predictors for bs in batch_sizes}
        reference = {}
        for rep in range(repeats + 1):            # the first round warms up and is not timed
            for backend, predictor in predictors.items():
                for bs in batch_sizes:
                    out = os.path.join(work, f"out-{backend}-{bs}-{rep}")
                    t0 = time.perf_counter()
                    info = run_benchmark(bench, predictor, method, budget, out, max_new_tokens=max_new_tokens,
                                         progress=False, batch_size=bs,
                                         manifest={"benchmark": "evalbatch", "backend": backend})
                    seconds = time.perf_counter() - t0
                    if info["n_errors"]:
                        raise RuntimeError(f"{backend} batch {bs}: {info['n_errors']} items failed")
                    got = _answers(info["answers"])
                    want = reference.setdefault(backend, got)
                    if got != want:
                        raise RuntimeError(f"{backend}: batch {bs} answers differ from batch {batch_sizes[0]}")
                    if rep:
                        times[(backend, bs)].append(seconds)
                    say(f"{backend} batch {bs} repeat {rep}{' (warm-up)' if not rep else ''}: "
                        f"{items / seconds:.2f} items/s")
        rows = []
        for backend in predictors:
            base = items / statistics.median(times[(backend, batch_sizes[0])])
            for bs in batch_sizes:
                rate = items / statistics.median(times[(backend, bs)])
                rows.append({"backend": backend, "batch_size": bs, "items": items,
                             "median_s": statistics.median(times[(backend, bs)]),
                             "items_per_s": rate, "speedup": rate / base})
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


def format_rows(rows):
    lines = ["| backend | batch size | items/s (median) | vs batch 1 |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['batch_size']} | {r['items_per_s']:.2f} | {r['speedup']:.2f}x |")
    return "\n".join(lines)
