"""Vision-tower time with compression against without, in one process (ratios, not absolutes).

Random weights at the real CLIP ViT-L/14-336 shape: time depends on shapes, not on values, except
for the data-dependent token counts of the adaptive methods, which random towers also produce.
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import paddle


class VisionSide(paddle.nn.Layer):
    """The tower, the CLIP projection and LLaVA's projector: the vision half of the model, with the
    model's own code for the tower pass and the method's inputs (what the registry says it reads)."""

    def __init__(self, width, layers, heads, image_size, patch, projection_dim, llm_width, seed):
        super().__init__()
        from paddle_rc.models.clip import CLIPVisionTower
        from paddle_rc.models.config import CLIPVisionConfig, LlavaConfig
        from paddle_rc.models.projector import MLPProjector

        paddle.seed(seed)
        vision = CLIPVisionConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                                  num_attention_heads=heads, image_size=image_size, patch_size=patch,
                                  projection_dim=projection_dim)
        self.config = LlavaConfig(vision=vision)
        self.vision_tower = CLIPVisionTower(vision)
        self.visual_projection = paddle.nn.Linear(width, projection_dim, bias_attr=False)
        self.projector = MLPProjector(width, llm_width)
        self.eval()

    def run_vision_tower(self, pixel_values, spec, options):
        from paddle_rc.models.llava import run_vision_tower

        return run_vision_tower(self, pixel_values, spec, options)

    def compression_inputs(self, feats, spec, options, text_embeds=None, has_text=None):
        from paddle_rc.models.llava import compression_inputs

        return compression_inputs(self, feats, spec, options, text_embeds, has_text)


def run_vision_benchmark(methods, *, width=1024, layers=24, heads=16, image_size=336, patch=14,
                         projection_dim=768, llm_width=4096, batch=1, repeats=5, budget=None, seed=0,
                         progress=None):
    """-> rows {method, seconds (min over repeats), median, vs_none, vs_full_tower, tokens,
    compress_seconds (the compression step alone), compress_vs_none}.

    Every case ends with the tokens in the LLM's space (LLaVA's projector applied), so a method that
    reads projected features (CDPruner) pays for projecting all N patches and the others for
    projecting what they keep. In-LLM methods (FastV) leave the tower as `none` does.
    `progress(done, total)` is called after every tower pass and every method's step timing."""
    from paddle_rc.compression import compress, method_defaults
    from paddle_rc.compression.registry import get_method

    side = VisionSide(width, layers, heads, image_size, patch, projection_dim, llm_width, seed)
    tower = side.vision_tower
    rng = np.random.default_rng(seed)
    pixels = paddle.to_tensor(rng.standard_normal((batch, 3, image_size, image_size)).astype("float32"))
    t = paddle.to_tensor(rng.standard_normal((batch, projection_dim)).astype("float32"))

    def plain():
        return side.projector(tower(pixels, -2).F)

    def full_tower():
        # What HF LLaVA computes: every layer, then picks hidden_states[-2].
        return side.projector(tower(pixels, -1).F)

    def step_fn(method, feats):
        spec = get_method(method)

        def step():
            args = side.compression_inputs(feats, spec, method_defaults(method),
                                           t if spec.uses_text else None, None)
            args.pop("has_text", None)
            opts = args.pop("options")
            res = compress(method, budget=budget, **args, **opts)
            out = res.tokens if spec.after_projector else side.projector(res.tokens)
            return out, res.lengths
        return step

    def with_method(method):
        spec = get_method(method)
        if spec.stage == "llm":
            return plain

        def fn():
            feats = side.run_vision_tower(pixels, spec, method_defaults(method))
            return step_fn(method, feats)()
        return fn

    cases = [("none (layers to -2)", plain), ("full tower (all layers)", full_tower)]
    cases += [(m, with_method(m)) for m in methods if m != "none"]
    times = {name: [] for name, _ in cases}
    tokens = {}
    timed = [m for m in methods if m != "none" and get_method(m).stage != "llm"]
    total, done = len(cases) * (repeats + 1) + len(timed), 0

    def tick():
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    with paddle.no_grad():
        for name, fn in cases:  # warm-up: kernels, allocator
            out = fn()
            tokens[name] = _count(out)
            tick()
        for _ in range(repeats):  # interleaved so that machine noise hits every case alike
            for name, fn in cases:
                t0 = time.perf_counter()
                out = fn()
                _sync(out)
                times[name].append(time.perf_counter() - t0)
                tick()
        # The compression step alone, on fixed tower outputs: small next to the tower, so it is
        # timed separately (many repeats) rather than read off the difference of two noisy totals.
        compress_s = {}
        for m in timed:
            step = step_fn(m, side.run_vision_tower(pixels, get_method(m), method_defaults(m)))
            _sync(step())
            compress_s[m] = _best_of(step, max(10, 4 * repeats))
            tick()
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
