"""fp32 vs int8 vs int4 weight-only checkpoints: bytes on disk, resident memory, logits error.

Every quantized checkpoint here is written by the same code path as tools/quantize.py
(paddle_rc.quant.checkpoint.quantize_checkpoint) and read back with from_pretrained, so what is
measured is what a user gets.

Three models:

* ``demo``: the built-in demo model (paddle_rc.demo.default_model: a small LLaVA trained on the
  synthetic task), or the checkpoint given as ``demo_dir``; measured on random prompts.
* ``trained``: the same checkpoint with its LLM further trained on the tokenizer corpus
  (paddle_rc.benchmark.tiny_lm), so that its next-token distributions on those lines are peaked;
  measured on the corpus lines and on the random prompts.
* ``slice``: a LLaVA checkpoint whose LLM has LLaVA-7B's widths (hidden 4096, intermediate 11008,
  32 heads, vocab 32000) but only a few decoder layers, with tiny vision/text towers (they are
  skipped by quantization and not used by text prompts). Its weights are random but drawn like
  real ones: Student-t (5 degrees of freedom, heavier tails than a Gaussian, as trained weights
  have) scaled to std 0.02, which is about what LLaMA-7B's projections have; at that scale each
  layer's output dominates the residual stream, so quantization error is not hidden by the input.

Random weights (``slice``) and random prompts (which no model was trained on) make near-ties between
the top logits far more common than on a trained model's own inputs, so top-1 agreement on random
prompts is a pessimistic figure for the same relative weight error.

Resident memory is measured in a fresh subprocess per checkpoint (RSS after ``import`` vs after
from_pretrained, and the peak), so the models do not pollute each other's numbers. from_pretrained
first builds the float model and then swaps in the quantized layers, so the peak includes the
float model for a moment; the steady-state RSS is what the quantization saves.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

from paddle_rc.quant.checkpoint import checkpoint_weight_bytes, quantize_checkpoint
from paddle_rc.quant.config import QuantConfig

PRECISIONS = ("fp32", "int8", "int4")


def quant_configs(int4_group_size: int = 128, clip_search: bool = False) -> dict:
    g = int4_group_size
    return {"int8": QuantConfig(weight_bits=8, clip_search=clip_search),
            "int4": QuantConfig(weight_bits=4, group_size=g, clip_search=clip_search,
                                weight_quantize_type="channel_wise_abs_max" if g == -1 else "group_wise_abs_max")}


# --------------------------------------------------------------------------------- the 7B slice

def slice_config(layers: int = 2):
    from paddle_rc.models.config import CLIPTextConfig, CLIPVisionConfig, LlamaConfig, LlavaConfig

    return LlavaConfig(
        vision=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, image_size=28, patch_size=14, projection_dim=16),
        text=CLIPTextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, projection_dim=16, bos_token_id=62, eos_token_id=63,
                            pad_token_id=63),
        llm=LlamaConfig(num_hidden_layers=layers, max_position_embeddings=4096),
        image_token_index=-200, source="random-7b-slice")


def write_slice_checkpoint(directory: str, layers: int = 2, seed: int = 0, std: float = 0.02) -> str:
    import paddle

    from paddle_rc.models import LlavaForConditionalGeneration
    from paddle_rc.models.weights import save_weights

    cfg = slice_config(layers)
    paddle.seed(seed)
    model = LlavaForConditionalGeneration(cfg)
    rng = np.random.default_rng(seed)
    df = 5.0
    t_std = np.sqrt(df / (df - 2))
    for name, p in model.language_model.named_parameters():
        if p.ndim == 2:
            w = rng.standard_t(df, size=p.shape).astype(np.float32) * np.float32(std / t_std)
            p.set_value(paddle.to_tensor(w))
    w = rng.standard_t(df, size=model.lm_head.weight.shape).astype(np.float32) * np.float32(std / t_std)
    model.lm_head.weight.set_value(paddle.to_tensor(w))
    cfg.save(directory)
    save_weights(model, directory)
    return directory


# ---------------------------------------------------------------------------------- measurements

_RSS_SCRIPT = r"""
import gc, json, sys
def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
import paddle
from paddle_rc.models import LlavaForConditionalGeneration
gc.collect()
base = status("VmRSS")
model = LlavaForConditionalGeneration.from_pretrained(sys.argv[1])
# paddle_rc keeps freed heap memory resident (runtime.keep_freed_memory): hand the loader's freed
# temporaries back first, so that the figure is the model's steady-state footprint.
from paddle_rc.runtime import release_freed_memory
gc.collect()
release_freed_memory()
loaded = status("VmRSS")
peak_load = status("VmHWM")
with paddle.no_grad():
    model(paddle.to_tensor([[1, 5, 9, 13, 20, 30, 7, 3]], dtype="int64")).logits.numpy()
print(json.dumps({"rss_base": base, "rss_loaded": loaded, "rss_increase": loaded - base,
                  "peak_during_load": peak_load - base, "peak_after_forward": status("VmHWM") - base}))
"""


def measure_rss(directory: str) -> dict:
    """RSS increase of loading the checkpoint, in a fresh interpreter."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, directory], capture_output=True, text=True,
                         env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"RSS probe failed for {directory}: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_prompts(vocab_size: int, n: int, length: int, seed: int = 0, low: int = 3) -> np.ndarray:
    """n random token sequences (ids >= low: skip pad/bos/eos), starting with BOS id 1."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(low, vocab_size, size=(n, length), dtype=np.int64)
    ids[:, 0] = 1
    return ids


def _logits(model, ids: np.ndarray, batch: int) -> np.ndarray:
    import paddle

    outs = []
    with paddle.no_grad():
        for i in range(0, len(ids), batch):
            outs.append(model(paddle.to_tensor(ids[i:i + batch])).logits.numpy())
    return np.concatenate(outs, axis=0)


def logits_errors(ref: np.ndarray, out: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """Max abs error and top-1 agreement at the real positions (``mask`` [N, L], default all): over
    all of them, and at each prompt's last one (the next token after the whole prompt)."""
    mask = np.ones(ref.shape[:2], bool) if mask is None else mask.astype(bool)
    if not mask[:, 0].all():
        raise ValueError("prompts must be right-padded: every row's first position is real")
    last = mask.sum(axis=1) - 1
    rows = np.arange(ref.shape[0])
    r, o = ref[mask], out[mask]  # [positions, vocab]
    d = np.abs(o - r)
    agree = r.argmax(-1) == o.argmax(-1)
    top2 = np.sort(r, axis=-1)[:, -2:]
    gap = top2[:, 1] - top2[:, 0]
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()),
            "max_abs_rel": float(d.max() / np.abs(r).max()),
            "top1_last": float((ref[rows, last].argmax(-1) == out[rows, last].argmax(-1)).mean()),
            "top1_all": float(agree.mean()),
            "prompts": int(ref.shape[0]), "positions": int(mask.sum()),
            # Only positions whose fp32 top-1/top-2 gap is below the largest error can flip;
            # random-weight models have many more of them than trained ones.
            "near_ties": float((gap < d.max()).mean()),
            "fp32_gap_median": float(np.median(gap))}


WEIGHT_SCHEMES = (("int8", 8, -1), ("int4-g128", 4, 128), ("int4", 4, -1))


def weight_errors(src: str, layer: int = 0) -> list:
    """Relative weight error ||dequant(quant(W)) - W|| / ||W|| over one decoder layer's seven
    Linear weights, and the time to quantize them, per scheme with and without the clip search."""
    import time

    from safetensors import safe_open

    from paddle_rc.models.weights import weight_files
    from paddle_rc.quant.functional import dequantize_weight, quantize_weight

    prefix = f"language_model.layers.{layer}."
    files = weight_files(src)
    weights = []
    for key in sorted(k for k in files if k.startswith(prefix) and k.endswith("_proj.weight")):
        with safe_open(files[key], framework="np") as f:
            weights.append(f.get_tensor(key).astype(np.float32))
    rows = []
    for name, bits, group in WEIGHT_SCHEMES:
        for clip in (False, True):
            t0 = time.perf_counter()
            packed = [quantize_weight(w, bits, group, clip) for w in weights]
            seconds = time.perf_counter() - t0
            err = sum(float(np.square(dequantize_weight(q, s, bits, group, w.shape[0]) - w).sum())
                      for (q, s), w in zip(packed, weights))
            ref = sum(float(np.square(w).sum()) for w in weights)
            rows.append({"scheme": name, "clip_search": clip, "relative_error": (err / ref) ** 0.5,
                         "quantize_seconds": seconds, "matrices": len(weights)})
    return rows


def evaluate_family(src: str, workdir: str, prompt_sets: dict, int4_group_size: int = 128,
                    batch: int = 16, rss: bool = True, progress=None, clip_search: bool = False) -> dict:
    """Quantize ``src`` to int8 and int4 under ``workdir``; bytes, RSS and, for each named prompt
    set ``{name: (ids [N, L], mask [N, L] or None)}``, the logits error against fp32."""
    from paddle_rc.models import LlavaForConditionalGeneration

    say = progress or (lambda m: None)
    dirs = {"fp32": src}
    results = {"fp32": {"checkpoint_bytes": checkpoint_weight_bytes(src)}}
    for name, qc in quant_configs(int4_group_size, clip_search).items():
        dst = os.path.join(workdir, os.path.basename(os.path.normpath(src)) + "-" + name)
        say(f"quantizing {src} -> {dst}")
        r = quantize_checkpoint(src, dst, qc, overwrite=True)
        dirs[name] = dst
        results[name] = {"checkpoint_bytes": r.bytes_after, "quantization": qc.to_dict(),
                         "quantized_layers": len(r.quantized), "linear_bytes_before": r.linear_bytes_before,
                         "linear_bytes_after": r.linear_bytes_after, "linear_ratio": r.linear_ratio}
    for name in PRECISIONS:
        results[name]["ratio"] = results[name]["checkpoint_bytes"] / results["fp32"]["checkpoint_bytes"]
        if rss:
            say(f"resident memory: {name}")
            results[name]["rss"] = measure_rss(dirs[name])
    say("logits: fp32")
    fp32 = LlavaForConditionalGeneration.from_pretrained(src)
    refs = {k: _logits(fp32, ids, batch) for k, (ids, _) in prompt_sets.items()}
    results["fp32"]["logits_abs_max"] = {k: float(np.abs(v).max()) for k, v in refs.items()}
    for name in ("int8", "int4"):
        say(f"logits: {name}")
        model = LlavaForConditionalGeneration.from_pretrained(dirs[name])
        results[name]["logits"] = {k: logits_errors(refs[k], _logits(model, ids, batch), mask)
                                   for k, (ids, mask) in prompt_sets.items()}
    return {"dirs": dirs, "precisions": results}


def synthvqa_accuracy(dirs: dict, seed: int, n: int, methods, say) -> dict:
    """{precision: {method: evaluate_model result}} on the same n synthvqa questions."""
    from paddle_rc.train import evaluate_model

    out = {}
    for name in PRECISIONS:
        out[name] = {}
        for method in methods:
            say(f"synthvqa accuracy: {name}, {method} ({n} questions, seed {seed})")
            out[name][method] = evaluate_model(dirs[name], seed, n, method=method)
    return out


def run_quant_eval(prompts: int = 64, prompt_len: int = 24, slice_layers: int = 2, group_size: int = 128,
                   workdir: str | None = None, slice_eval: bool = True, demo_dir: str | None = None,
                   train_steps: int = 80, clip_search: bool = False, rss: bool = True, progress=None,
                   accuracy_items: int = 0, accuracy_seed: int = 90_002, accuracy_methods=("none", "rc")) -> dict:
    """Families: ``demo`` (``demo_dir``, default the built-in demo model), ``trained`` (the same with
    its LLM trained on the tokenizer corpus, train_steps > 0) and ``slice`` (7B widths, slice_eval).
    accuracy_items > 0 also scores the demo family's fp32/int8/int4 checkpoints on that many synthvqa
    questions (``generate(accuracy_seed, n)``) for each of ``accuracy_methods``: what quantization costs
    in answers, not only in logits."""
    from paddle_rc.benchmark.tiny_lm import corpus_prompts, write_trained_demo
    from paddle_rc.data.llama_tokenizer import LlamaTokenizer
    from paddle_rc.demo import default_model
    from paddle_rc.models.config import LlavaConfig

    say = progress or (lambda m: None)
    own = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="paddle_rc_quant_eval.")
    os.makedirs(workdir, exist_ok=True)
    try:
        out = {"settings": {"prompts": prompts, "prompt_len": prompt_len, "int4_group_size": group_size,
                            "int8": "per channel", "slice_layers": slice_layers, "train_steps": train_steps,
                            "clip_search": clip_search}}
        demo = demo_dir or default_model()
        demo_config = LlavaConfig.load(demo)
        vocab = demo_config.llm.vocab_size
        random_set = {"random": (make_prompts(vocab, prompts, prompt_len), None)}
        out["demo"] = evaluate_family(demo, workdir, random_set, group_size, rss=rss, progress=say,
                                      clip_search=clip_search)
        out["demo"]["model"] = (f"{'the built-in demo model' if demo_dir is None else demo} (source "
                                f"{demo_config.source}, LLM hidden {demo_config.llm.hidden_size}, "
                                f"{demo_config.llm.num_hidden_layers} layers)")
        out["demo"]["weight_errors"] = weight_errors(demo)
        if accuracy_items > 0:
            out["demo"]["accuracy"] = synthvqa_accuracy(out["demo"]["dirs"], accuracy_seed, accuracy_items,
                                                        accuracy_methods, say)
        if train_steps > 0:
            trained = os.path.join(workdir, "demo-trained")
            say(f"training the demo's LLM for {train_steps} steps -> {trained}")
            training = write_trained_demo(trained, steps=train_steps, src=demo)
            corpus = corpus_prompts(LlamaTokenizer.from_dir(os.path.join(trained, "tokenizer")))
            out["trained"] = evaluate_family(trained, workdir, {"corpus": corpus, **random_set}, group_size,
                                             rss=False, progress=say, clip_search=clip_search)
            out["trained"]["training"] = training
            out["trained"]["model"] = (f"demo with its LLM trained {train_steps} steps on the tokenizer corpus "
                                       f"(loss {training['first_loss']:.2f} -> {training['final_loss']:.3f})")
        if slice_eval:
            src = os.path.join(workdir, "slice7b")
            say(f"writing the 4096-wide slice ({slice_layers} layers) to {src}")
            if os.path.isdir(src):
                shutil.rmtree(src)
            write_slice_checkpoint(src, slice_layers)
            out["slice"] = evaluate_family(src, workdir,
                                           {"random": (make_prompts(32000, prompts, prompt_len, seed=1), None)},
                                           group_size, batch=8, rss=rss, progress=say, clip_search=clip_search)
            say("weight errors of the slice's first layer")
            out["slice"]["weight_errors"] = weight_errors(src)
            out["slice"]["model"] = (f"LLaVA-7B-width LLM slice: {slice_layers} layers at hidden 4096 / "
                                     "intermediate 11008 + embed/lm_head 32000, Student-t weights std 0.02")
        return out
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)


def format_quant_report(result: dict) -> str:
    mb = 1e6
    lines = []
    for key in ("demo", "trained", "slice"):
        if key not in result:
            continue
        fam = result[key]
        p = fam["precisions"]
        lines += [f"## {fam['model']}", "",
                  "| weights | checkpoint MB | vs fp32 | quantized layers MB (vs fp32) | RSS increase MB | peak MB |",
                  "|" + "---|" * 6]
        for name in PRECISIONS:
            r = p[name]
            lin = (f"{r['linear_bytes_after'] / mb:.2f} ({100 * r['linear_ratio']:.1f}%)"
                   if "linear_ratio" in r else f"{p['int8']['linear_bytes_before'] / mb:.2f} (100%)")
            rs = r.get("rss")
            rss_txt = f"{rs['rss_increase'] / mb:.0f} | {rs['peak_during_load'] / mb:.0f}" if rs else "- | -"
            lines.append(f"| {name} | {r['checkpoint_bytes'] / mb:.2f} | {100 * r['ratio']:.1f}% | {lin} | {rss_txt} |")
        lines += ["", "| weights | prompts | max abs logit error | top-1 agree (last pos) | top-1 agree (all pos) "
                      "| near ties |", "|" + "---|" * 6]
        for name in ("int8", "int4"):
            for set_name, lg in p[name]["logits"].items():
                ref_max = p["fp32"]["logits_abs_max"][set_name]
                lines.append(f"| {name} | {set_name} ({lg['prompts']}) | {lg['max_abs']:.4f} "
                             f"({100 * lg['max_abs'] / ref_max:.2f}% of max) | {100 * lg['top1_last']:.1f}% | "
                             f"{100 * lg['top1_all']:.1f}% of {lg['positions']} | {100 * lg['near_ties']:.1f}% |")
        if fam.get("accuracy"):
            acc = fam["accuracy"]
            methods = list(acc["fp32"])
            first = acc["fp32"][methods[0]]
            types = list(first["per_type"])
            lines += ["", f"synthvqa accuracy (`generate({first['seed']}, {first['questions']})`, exact match), "
                          "overall and per question type:", "",
                      "| weights | method | visual tokens | overall | " + " | ".join(types) + " |",
                      "|" + "---|" * (4 + len(types))]
            for name in PRECISIONS:
                for method in methods:
                    a = acc[name][method]
                    lines.append(f"| {name} | {method} | {a['mean_visual_tokens']} | {a['accuracy']:.1f} | "
                                 + " | ".join(f"{a['per_type'].get(t, 0):.1f}" for t in types) + " |")
        if fam.get("weight_errors"):
            lines += ["", "| scheme | relative weight error (absmax) | with clip search | quantize s (absmax / clip) |",
                      "|---|---|---|---|"]
            by = {(r["scheme"], r["clip_search"]): r for r in fam["weight_errors"]}
            for name, _, _ in WEIGHT_SCHEMES:
                a, c = by[(name, False)], by[(name, True)]
                lines.append(f"| {name} | {a['relative_error']:.4f} | {c['relative_error']:.4f} | "
                             f"{a['quantize_seconds']:.2f} / {c['quantize_seconds']:.2f} |")
        lines.append("")
    st = result["settings"]
    int4 = "per-channel" if st["int4_group_size"] == -1 else f"group {st['int4_group_size']}"
    clip = " (both with the clip search)" if st.get("clip_search") else ""
    lines.append(f"int8: per-channel scales; int4: {int4} scales{clip}; lm_head and vision side stay float32 "
                 f"(default skip list). random: {st['prompts']} random prompts of {st['prompt_len']} tokens; "
                 "corpus: the lines the trained model learnt (each position that predicts a token of its "
                 "line, EOS included). near ties: share of positions whose fp32 top-1/top-2 gap is below "
                 "the max abs error (the only ones that can flip).")
    return "\n".join(lines)
