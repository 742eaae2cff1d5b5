"""Dynamic (eager) model against its exported Paddle Inference graphs, stage by stage, in one process.

Random weights: latency depends on shapes, not values (except the adaptive methods' token counts,
which both paths share because they run the same compression). Stages:
  vision   pixels (+ question ids) -> projected, compressed visual tokens
  prefill  the spliced prompt (text + visual tokens) -> last logits + KV cache
  decode   one token with a cache of the prefill length, averaged over `decode_steps` steps
Reported as medians of interleaved repeats and the ratio exported / dynamic (< 1: exported faster).
"""
from __future__ import annotations

import statistics
import tempfile
import time

import numpy as np
import paddle

from paddle_rc.runtime import default_threads

PRESETS = {
    # The test suite's tiny model (56 px image, 16 patches, 2-layer 64-wide LLM).
    "tiny": dict(vision=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                             image_size=56, patch_size=14, projection_dim=16),
                 text=dict(vocab_size=80, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=4, projection_dim=16, bos_token_id=78, eos_token_id=79,
                           pad_token_id=79),
                 llm=dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)),
    # Real LLaVA geometry on the vision side (336 px, 576 patches) and a 1024-wide LLM: wide enough
    # that matmuls, not per-op dispatch, dominate, but still seconds on a 2-core CPU.
    "wide": dict(vision=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=8,
                             image_size=336, patch_size=14, projection_dim=128),
                 text=dict(vocab_size=1000, hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                           num_attention_heads=4, projection_dim=128, bos_token_id=998, eos_token_id=999,
                           pad_token_id=999),
                 llm=dict(vocab_size=8000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=4,
                          num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=4096)),
}


def build_model(preset: str, seed: int = 0):
    from paddle_rc.models import LlavaForConditionalGeneration
    from paddle_rc.models.config import CLIPTextConfig, CLIPVisionConfig, LlamaConfig, LlavaConfig

    p = PRESETS[preset]
    cfg = LlavaConfig(vision=CLIPVisionConfig(**p["vision"]), text=CLIPTextConfig(**p["text"]),
                      llm=LlamaConfig(**p["llm"]))
    paddle.seed(seed)
    model = LlavaForConditionalGeneration(cfg)
    model.eval()
    return model


def _median_ms(samples):
    return 1000.0 * statistics.median(samples)


def decode_run(step, k0, v0, mask, pos, steps: int):
    """A callable that decodes `steps` tokens one at a time from a prefilled cache (k0, v0: tensors, or
    arrays made into fresh tensors on every call) through `step` (a model's decode or an exported
    graph's), as generation does: the mask grows by one and the position advances each step."""
    def run():
        k = paddle.to_tensor(k0) if isinstance(k0, np.ndarray) else k0
        v = paddle.to_tensor(v0) if isinstance(v0, np.ndarray) else v0
        m, p = mask, pos[:, -1:]
        tok = paddle.to_tensor(np.array([[5]], np.int64))
        for _ in range(steps):
            m = paddle.concat([m, paddle.ones([1, 1], "int64")], axis=1)
            p = p + 1
            logits, k, v = step(tok, m, p, k, v)
            logits.numpy()
    return run


def run_deploy_benchmark(preset: str = "tiny", method: str = "rc", budget=None, prompt_len: int = 48,
                         decode_steps: int = 16, repeats: int = 5, warmup: int = 2, threads=None,
                         onednn: bool = False, seed: int = 0) -> dict:
    from paddle_rc.export import exporter
    from paddle_rc.export.runner import Graph, RunnerOptions, run_step
    from paddle_rc.models.llama import positions_from_mask

    model = build_model(preset, seed)
    model.set_compression(method, budget)
    cfg = model.config
    rng = np.random.default_rng(seed)
    threads = threads or default_threads()
    with tempfile.TemporaryDirectory(prefix="paddle_rc_bench_") as out:
        t0 = time.perf_counter()
        manifest = exporter.export_loaded_model(model, out, method, budget, {})
        export_s = time.perf_counter() - t0
        opts = RunnerOptions(threads=threads, onednn=onednn)
        graphs = {g: Graph(out, g, manifest["graphs"][g], opts) for g in exporter.GRAPHS}

        size = cfg.vision.image_size
        pixels = paddle.to_tensor(rng.standard_normal((1, 3, size, size)).astype(np.float32))
        ids = rng.integers(0, cfg.text.eos_token_id - 1, size=(1, 12))
        ids[0, -1] = cfg.text.eos_token_id
        clip = paddle.to_tensor(ids.astype(np.int64))
        has_text = paddle.ones([1], dtype="bool")
        uses_text = manifest["compression"]["uses_text"]
        mode = manifest["compression"]["text_mode"]
        if mode == "prompt-first-line":
            clip = paddle.to_tensor(np.resize(ids, (1, 20)).astype(np.int64))
        elif mode == "question-segments":
            seg = np.zeros((1, cfg.text.max_position_embeddings), dtype=np.int64)
            seg[0, :ids.shape[1]] = ids[0]
            clip = paddle.to_tensor(seg)

        def dyn_vision():
            t = model.question_features(clip, mode) if uses_text else None
            v = model.encode_images(pixels, t, has_text)
            return v.embeds.numpy(), v.lengths

        def exp_vision():
            outs = graphs["vision"](*([pixels, clip, has_text] if uses_text else [pixels]))
            return outs[0].numpy(), outs[1].numpy()

        with paddle.no_grad():
            embeds, lengths = dyn_vision()
            seq = prompt_len + int(lengths[0])
            x = paddle.to_tensor(rng.standard_normal((1, seq, cfg.llm.hidden_size)).astype(np.float32) * 0.02)
            mask = paddle.ones([1, seq], dtype="int64")
            pos = positions_from_mask(mask)
            _, k0, v0 = model.prefill(x, mask, pos)
            k0, v0 = k0.numpy(), v0.numpy()

            def decode_loop(step_fn):
                return decode_run(step_fn, k0, v0, mask, pos, decode_steps)

            # As the runner calls the LLM graph (DeployedLlava.prefill / decode): a masked-out past
            # slot for the prefill, the host-side embedding for decode.
            llm = cfg.llm
            slot = paddle.zeros([llm.num_hidden_layers, 1, llm.num_key_value_heads, 1, llm.head_dim])
            slot_mask = paddle.concat([paddle.zeros([1, 1], "int64"), mask], axis=1)

            def exp_decode(tok, m, p, k, v):
                return run_step(graphs["llm"], model.language_model.embed_tokens(tok), m, p, k, v)

            cases = {
                "vision": (dyn_vision, exp_vision),
                "prefill": (lambda: model.prefill(x, mask, pos)[0].numpy(),
                            lambda: run_step(graphs["llm"], x, slot_mask, pos, slot, slot)[0].numpy()),
                "decode": (decode_loop(model.decode), decode_loop(exp_decode)),
            }
            times = {name: ([], []) for name in cases}
            for name, (dyn, exp) in cases.items():
                for _ in range(warmup):
                    dyn()
                    exp()
            for _ in range(repeats):
                # Interleaved so that a slow moment of the machine hits both paths alike.
                for name, (dyn, exp) in cases.items():
                    for fn, bucket in ((dyn, times[name][0]), (exp, times[name][1])):
                        t = time.perf_counter()
                        fn()
                        bucket.append(time.perf_counter() - t)

    rows = []
    for name, (d, e) in times.items():
        per = decode_steps if name == "decode" else 1
        dm, em = _median_ms(d) / per, _median_ms(e) / per
        rows.append({"stage": name + (" (per token)" if name == "decode" else ""), "dynamic_ms": round(dm, 3),
                     "exported_ms": round(em, 3), "ratio_exported_over_dynamic": round(em / dm, 3)})
    return {"preset": preset, "method": method, "budget": budget, "visual_tokens": int(lengths[0]),
            "n_patches": cfg.vision.num_patches, "prefill_len": seq, "decode_steps": decode_steps,
            "repeats": repeats, "threads": threads, "onednn": onednn, "export_seconds": round(export_s, 2),
            "paddle": paddle.__version__, "rows": rows}


def format_deploy_table(result: dict) -> str:
    head = (f"preset {result['preset']}, method {result['method']}"
            + ("" if result["budget"] is None else f" budget {result['budget']}")
            + f": {result['n_patches']} -> {result['visual_tokens']} visual tokens, prefill length "
            f"{result['prefill_len']}, {result['threads']} threads, oneDNN {'on' if result['onednn'] else 'off'}, "
            f"median of {result['repeats']}")
    lines = [head, f"{'stage':22s} {'dynamic ms':>11s} {'exported ms':>12s} {'exported/dynamic':>17s}"]
    for r in result["rows"]:
        lines.append(f"{r['stage']:22s} {r['dynamic_ms']:11.2f} {r['exported_ms']:12.2f} "
                     f"{r['ratio_exported_over_dynamic']:17.2f}")
    return "\n".join(lines)
