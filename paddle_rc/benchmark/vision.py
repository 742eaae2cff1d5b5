"""Vision-tower time with compression against without, in one process (ratios, not absolutes).

Random weights at the real CLIP ViT-L/14-336 shape: time depends on shapes, not on values, except
for the data-dependent token counts of the adaptive methods, which random towers also produce.
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import paddle


def _tower(width, layers, heads, image_size, patch, projection_dim, seed):
    from paddle_rc.models.clip import CLIPVisionTower
    from paddle_rc.models.config import CLIPVisionConfig

    paddle.seed(seed)
    cfg = CLIPVisionConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                           num_attention_heads=heads, image_size=image_size, patch_size=patch,
                           projection_dim=projection_dim)
    tower = CLIPVisionTower(cfg)
    proj = paddle.nn.Linear(width, projection_dim, bias_attr=False)
    tower.eval()
    return tower, proj


def run_vision_benchmark(methods, *, width=1024, layers=24, heads=16, image_size=336, patch=14,
                         projection_dim=768, batch=1, repeats=5, budget=None, seed=0):
    """-> list of rows {method, seconds (median), ratio_vs_none, ratio_vs_full_tower, tokens}."""
    from paddle_rc.compression import compress
    from paddle_rc.models.llava import _NEEDS_CLS_STATS, _NEEDS_QKP, _NEEDS_TEXT

    tower, proj = _tower(width, layers, heads, image_size, patch, projection_dim, seed)
    rng = np.random.default_rng(seed)
    pixels = paddle.to_tensor(rng.standard_normal((batch, 3, image_size, image_size)).astype("float32"))
    t = paddle.to_tensor(rng.standard_normal((batch, projection_dim)).astype("float32"))

    def plain():
        return tower(pixels, -2).F

    def full_tower():
        # What HF LLaVA computes: every layer, then picks hidden_states[-2].
        return tower(pixels, -1).F

    def with_method(method):
        def fn():
            feats = tower(pixels, -2, need_qkp=method in _NEEDS_QKP, need_cls_stats=method in _NEEDS_CLS_STATS)
            extra = {}
            if method in _NEEDS_CLS_STATS:
                extra.update(cls_attn=feats.cls_attn, metric=feats.metric)
            P = proj(feats.P) if feats.P is not None else None
            res = compress(method, feats.F, feats.Q, feats.K, P=P, t=t if method in _NEEDS_TEXT else None,
                           budget=budget, **extra)
            return res.tokens, res.lengths
        return fn

    cases = [("none (layers to -2)", plain), ("full tower (all layers)", full_tower)]
    cases += [(m, with_method(m)) for m in methods if m != "none"]
    times = {name: [] for name, _ in cases}
    tokens = {}
    with paddle.no_grad():
        for name, fn in cases:  # warm-up: kernels, allocator
            out = fn()
            tokens[name] = _count(out)
        for _ in range(repeats):  # interleaved so that machine noise hits every case alike
            for name, fn in cases:
                t0 = time.perf_counter()
                out = fn()
                _sync(out)
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times[cases[0][0]])
    full = statistics.median(times[cases[1][0]])
    rows = []
    for name, _ in cases:
        med = statistics.median(times[name])
        rows.append({"method": name, "seconds": med, "vs_none": med / base, "vs_full_tower": med / full,
                     "tokens": tokens[name]})
    return rows


def _sync(out):
    first = out[0] if isinstance(out, tuple) else out
    first.numpy()


def _count(out):
    if isinstance(out, tuple):
        return float(np.mean(out[1].numpy()))
    return float(out.shape[1])


def format_vision_table(rows) -> str:
    lines = ["| method | tower + compression (s) | vs `none` | vs full tower | visual tokens |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['seconds']:.3f} | {r['vs_none']:.3f} | {r['vs_full_tower']:.3f} "
                     f"| {r['tokens']:.1f} |")
    return "\n".join(lines)
