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
    """-> rows {method, seconds (min over repeats), median, vs_none, vs_full_tower, tokens,
    compress_seconds (the compression step alone), compress_vs_none}."""
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
        # The compression step alone, on fixed tower outputs: small next to the tower, so it is
        # timed separately (many repeats) rather than read off the difference of two noisy totals.
        feats = tower(pixels, -2, need_qkp=True, need_cls_stats=True)
        P = proj(feats.P)
        compress_s = {}
        for m in methods:
            if m == "none":
                continue
            extra = {"cls_attn": feats.cls_attn, "metric": feats.metric} if m in _NEEDS_CLS_STATS else {}
            def step(m=m, extra=extra):
                res = compress(m, feats.F, feats.Q, feats.K, P=P, t=t if m in _NEEDS_TEXT else None,
                               budget=budget, **extra)
                return res.tokens, res.lengths
            _sync(step())
            compress_s[m] = _best_of(step, max(10, 4 * repeats))
    # Minimum over repeats: the cost of the work itself; slower repeats measure other load.
    base = min(times[cases[0][0]])
    full = min(times[cases[1][0]])
    rows = []
    for name, _ in cases:
        best = min(times[name])
        rows.append({"method": name, "seconds": best, "median": statistics.median(times[name]),
                     "vs_none": best / base, "vs_full_tower": best / full, "tokens": tokens[name],
                     "compress_seconds": compress_s.get(name),
                     "compress_vs_none": compress_s[name] / base if name in compress_s else None})
    return rows


def _best_of(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        _sync(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def _sync(out):
    first = out[0] if isinstance(out, tuple) else out
    first.numpy()


def _count(out):
    if isinstance(out, tuple):
        return float(np.mean(out[1].numpy()))
    return float(out.shape[1])


def format_vision_table(rows) -> str:
    lines = ["| method | tower + compression, min (s) | median (s) | vs `none` | vs full tower "
             "| compression alone (ms) | compression / `none` | visual tokens |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["compress_seconds"]
        comp = "" if c is None else f"{1000 * c:.1f}"
        rel = "" if c is None else f"{100 * r['compress_vs_none']:.1f}%"
        lines.append(f"| {r['method']} | {r['seconds']:.3f} | {r['median']:.3f} | {r['vs_none']:.3f} "
                     f"| {r['vs_full_tower']:.3f} | {comp} | {rel} | {r['tokens']:.1f} |")
    return "\n".join(lines)
