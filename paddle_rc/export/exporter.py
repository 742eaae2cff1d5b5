"""Checkpoint -> deployment directory of Paddle Inference graphs (PIR: .json + .pdiparams).

    out/
      vision.json, vision.pdiparams     pixels (+ question CLIP ids, has_text) -> image embeds, lengths[, indices]
      llm.json, llm.pdiparams           inputs_embeds, attention_mask, position_ids, past_k, past_v -> last logits,
                                        this call's k, v (the runner appends them to the cache)
                                        (prefill: a past of length 0; decode: one new token's embedding);
                                        for FastV also past_k_late, past_v_late, late_mask, visual_mask
                                        -> ..., k_late, v_late, kept_mask, keep_index (its split cache)
      embed_tokens.npy                  the LLM token-embedding table, for the splice and decode's new token
      config.json, tokenizer/, clip_tokenizer/
      manifest.json                     what was exported, with which options, and every file's size

Prefill and decode are one program so that the LLM's weights exist once on disk and in memory
(a 7B model does not fit twice); the embedding table is a .npy rather than part of it: the splice is
host-side index logic anyway, and a row gather from a memory-mapped array costs nothing next to a
predictor call.
manifest.json is written last, so a directory without it is an interrupted export.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import warnings
from typing import Optional

import numpy as np
import paddle
from paddle.static import InputSpec

from paddle_rc import native
from paddle_rc.errors import UserError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 3  # 1: separate prefill and decode graphs; 2: llm returned the whole caches
EMBED_FILE = "embed_tokens.npy"
GRAPHS = ("vision", "llm")

def _vision_inputs(config, method: str) -> list:
    size = config.vision.image_size
    specs = [InputSpec([None, 3, size, size], "float32", "pixel_values")]
    from paddle_rc.compression.registry import get_method
    from paddle_rc.export.graphs import REFERENCE_TEXT_LENGTH

    mode = get_method(method).text_mode
    if mode is not None:
        length = REFERENCE_TEXT_LENGTH if mode == "prompt-first-line" else None
        specs += [InputSpec([None, length], "int64", "clip_ids"), InputSpec([None], "bool", "has_text")]
    return specs


def _llm_inputs(config, pruned_layer=None) -> list:
    """The llm program's inputs; with in-LLM pruning after `pruned_layer` (K) layers past_k/past_v
    are the first K layers' cache and the later layers' cache, its mask and the visual positions
    follow."""
    llm = config.llm
    early = llm.num_hidden_layers if pruned_layer is None else pruned_layer
    cache = [early, None, llm.num_key_value_heads, None, llm.head_dim]
    specs = [InputSpec([None, None, llm.hidden_size], "float32", "inputs_embeds"),
             InputSpec([None, None], "int64", "attention_mask"),
             InputSpec([None, None], "int64", "position_ids"),
             InputSpec(cache, "float32", "past_k"),
             InputSpec(cache, "float32", "past_v")]
    if pruned_layer is None:
        return specs
    late = [llm.num_hidden_layers - pruned_layer, None, llm.num_key_value_heads, None, llm.head_dim]
    return specs + [InputSpec(late, "float32", "past_k_late"), InputSpec(late, "float32", "past_v_late"),
                    InputSpec([None, None], "int64", "late_mask"),
                    InputSpec([None, None], "bool", "visual_mask")]


def output_names(method: str) -> dict:
    from paddle_rc.compression.registry import get_method
    from paddle_rc.export.graphs import INDEX_OUTPUTS

    llm = ["logits", "k", "v"]
    if get_method(method).stage == "llm":
        return {"vision": ["image_embeds", "lengths"], "llm": llm + ["k_late", "v_late", "kept_mask", "keep_index"]}
    vision = ["image_embeds", "lengths"] + ([] if method == "none" else list(INDEX_OUTPUTS))
    return {"vision": vision, "llm": llm}


def _spec_json(specs) -> list:
    return [{"name": s.name, "dtype": str(s.dtype).replace("paddle.", ""),
             "shape": [(-1 if d is None else int(d)) for d in s.shape]} for s in specs]


# What Paddle 3.3's PIR tracing prints about its own code on every export, not about ours: a `+` inside
# paddle.add reaches a C++ check for an `out=` argument (a glog line on fd 2), and paddle.full_like
# reads Tensor.place, which PIR values lack (a UserWarning). Neither changes the saved graph.
_TRACING_NOISE = ("Paddle static graph(PIR) not support input out tensor",)
_TRACING_WARNINGS = ("Tensor do not have 'place' interface for pir graph mode",)


@contextlib.contextmanager
def _without_tracing_noise():
    """Run with fd 2 captured; afterwards pass on every line except Paddle's known tracing noise
    (the glog line comes from C++, so only a file-descriptor capture can hold it back)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured, warnings.catch_warnings():
        for text in _TRACING_WARNINGS:
            warnings.filterwarnings("ignore", message=text)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True):
                if not any(n in line for n in _TRACING_NOISE):
                    sys.stderr.write(line)
            sys.stderr.flush()


def _save_graph(layer, specs, prefix: str) -> None:
    layer.eval()
    # full_graph=True: the AST path; the model code has no Python branches on tensor values, so
    # the whole forward becomes one program (SOT would silently split on anything it cannot trace).
    static = paddle.jit.to_static(layer, input_spec=specs, full_graph=True)
    with _without_tracing_noise():
        paddle.jit.save(static, prefix)
    for ext in (".json", ".pdiparams"):
        if not os.path.isfile(prefix + ext):
            raise RuntimeError(f"paddle.jit.save did not write {prefix + ext}")


def _copy_tree(src: str, dst: str, what: str) -> None:
    if not os.path.isdir(src):
        raise UserError(f"{os.path.dirname(src)} has no {what}/ folder; convert the model with tools/convert.py")
    shutil.copytree(src, dst)


def export_model(model_dir: str, out_dir: str, method: str = "none", budget: Optional[int] = None,
                 options: Optional[dict] = None, overwrite: bool = False, portable: bool = False,
                 progress=None) -> dict:
    """Export the checkpoint in `model_dir` to `out_dir`; returns the manifest.

    The compression method, budget and options are fixed at export time: they decide the
    vision graph's inputs and its traced control flow (token counts are static per method).
    The graphs call paddle_rc's C++ operators where this machine has them, unless `portable`.
    """
    from paddle_rc.compression import check_compression
    from paddle_rc.models import LlavaForConditionalGeneration
    from paddle_rc.models.config import LlavaConfig

    say = progress or (lambda msg: None)
    options = dict(options or {})
    check_compression(method, budget, options)
    LlavaConfig.load(model_dir)  # not a checkpoint: say so before --out is touched
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--out {out_dir} is a file; give a directory")
    if os.path.exists(out_dir) and os.listdir(out_dir):
        if not overwrite:
            raise UserError(f"{out_dir} exists and is not empty; pick another --out or pass --overwrite")
        if not os.path.isfile(os.path.join(out_dir, MANIFEST)) and not _looks_like_partial_export(out_dir):
            # Refuse to wipe a folder that is not ours: --overwrite is for re-exports.
            raise UserError(f"{out_dir} is not an export directory (no {MANIFEST}); refusing to overwrite it")
        shutil.rmtree(out_dir)
    os.makedirs(out_dir, exist_ok=True)

    say(f"loading {model_dir}")
    model = LlavaForConditionalGeneration.from_pretrained(model_dir)
    model.set_compression(method, budget, **options)
    with native.disabled() if portable else contextlib.nullcontext():
        manifest = export_loaded_model(model, out_dir, method, budget, options, say)
    _copy_tree(os.path.join(model_dir, "tokenizer"), os.path.join(out_dir, "tokenizer"), "tokenizer")
    _copy_tree(os.path.join(model_dir, "clip_tokenizer"), os.path.join(out_dir, "clip_tokenizer"), "clip_tokenizer")
    manifest["model_dir"] = os.path.abspath(model_dir)
    return finish_manifest(out_dir, manifest)


def _looks_like_partial_export(directory: str) -> bool:
    names = set(os.listdir(directory))
    return bool(names) and names <= ({f"{g}{e}" for g in GRAPHS for e in (".json", ".pdiparams")}
                                     | {EMBED_FILE, "config.json", "tokenizer", "clip_tokenizer",
                                        MANIFEST + ".tmp"})


def export_vision(model, out_dir: str, method: str, budget=None, options=None, name: str = "vision") -> list:
    """Trace and save the vision graph; returns its input specs."""
    from paddle_rc.compression.registry import get_method
    from paddle_rc.export.graphs import VisionNoText, VisionWithText

    specs = _vision_inputs(model.config, method)
    cls = VisionWithText if get_method(method).uses_text else VisionNoText
    _save_graph(cls(model, method, budget, dict(options or {})), specs, os.path.join(out_dir, name))
    return specs


def _pruned_layer(model):
    """K of the model's in-LLM pruning method (FastV), or None."""
    pruning = model._llm_method()
    return None if pruning is None else pruning[2]


def export_llm(model, out_dir: str) -> None:
    """The one LLM program (prefill and decode); for an in-LLM pruning method (FastV) the pruning
    and the split cache are inside it, for every other method it is the plain step."""
    from paddle_rc.export.graphs import LLMGraph, PrunedLLMGraph

    layer = _pruned_layer(model)
    graph = LLMGraph(model) if layer is None else PrunedLLMGraph(model)
    _save_graph(graph, _llm_inputs(model.config, layer), os.path.join(out_dir, "llm"))


def export_loaded_model(model, out_dir: str, method: str, budget, options: dict, say=None) -> dict:
    """Trace and save the two graphs (vision, LLM), the embedding table and the config of an in-memory model.

    The caller adds tokenizers and then calls finish_manifest (split so tests can export a model
    built in memory without writing a checkpoint first).
    """
    from paddle_rc.compression.registry import get_method

    say = say or (lambda msg: None)
    spec = get_method(method)
    config = model.config
    n_patches = config.vision.num_patches
    budget_used = None if budget is None else min(int(budget), n_patches)
    vision_specs = _vision_inputs(config, method)
    layer = _pruned_layer(model)
    llm_specs = _llm_inputs(config, layer)

    say(f"exporting vision graph (method {method}{'' if budget is None else f', budget {budget}'})")
    export_vision(model, out_dir, method, budget, options)
    say("exporting the LLM graph (prefill and decode)")
    export_llm(model, out_dir)
    embed = model.language_model.embed_tokens
    table = embed.table() if hasattr(embed, "table") else embed.weight.numpy().astype(np.float32)
    np.save(os.path.join(out_dir, EMBED_FILE), table)
    config.save(out_dir)

    names = output_names(method)
    return {
        "format": MANIFEST_FORMAT,
        "kind": "paddle_rc_deploy",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"paddle": paddle.__version__, "python": platform.python_version(),
                     "numpy": np.__version__, "paddle_rc": _package_version()},
        "ir": "pir",
        "dtype": "float32",
        "compression": {"method": method, "budget": budget, "budget_applied": budget_used,
                        "options": _jsonable(options), "n_patches": n_patches,
                        "uses_text": spec.uses_text, "text_mode": spec.text_mode,
                        "stage": spec.stage, "llm_layer": layer},
        "graphs": {
            "vision": {"inputs": _spec_json(vision_specs), "outputs": names["vision"],
                       "notes": "image_embeds [B,Tmax,H] zero-padded after each sample's lengths[b] tokens"},
            "llm": {"inputs": _spec_json(llm_specs), "outputs": names["llm"],
                    "notes": "logits [B,V] at the last position; k, v [layers,B,kv_heads,S,head_dim]: the new "
                             "tokens' keys/values, which the caller appends to past_k, past_v; "
                             "attention_mask covers past + new tokens; prefill passes a past of length 0"
                             + ("" if layer is None else
                                f"; in-LLM pruning after layer {layer}: past_k/v, k/v are layers 0..{layer - 1} "
                                "over every position, past_k/v_late, k/v_late the later layers over the kept "
                                "ones under late_mask (kept_mask: the kept new positions' part); visual_mask "
                                "marks the new positions it may drop (none in decode); keep_index [B,S'] the "
                                "kept new positions")},
        },
        "embed_tokens": {"file": EMBED_FILE, "shape": list(table.shape), "dtype": "float32"},
        # paddle_rc's C++ operators in the programs (the weight-only matmul of quantized layers, the
        # fused softmax / rotary / SwiGLU / quick_gelu), when they were available at export time; the
        # runner builds/loads them before creating the predictors.
        "custom_ops": custom_ops_used(out_dir),
    }


def custom_ops_used(out_dir: str) -> list:
    """paddle_rc's C++ operators the saved programs call (the predictor must have them registered)."""
    from paddle_rc.native import OPS

    text = ""
    for name in GRAPHS:
        path = os.path.join(out_dir, name + ".json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                text += f.read()
    # a program names an operator "<dialect id>.<name>" ("3.rc_softmax")
    return [op for op in OPS if re.search(r'"\d+\.' + op + '"', text)]


def finish_manifest(out_dir: str, manifest: dict) -> dict:
    """Record every file's size (the runner's truncation check) and write manifest.json last."""
    files = {}
    for root, _, names in os.walk(out_dir):
        for name in sorted(names):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, out_dir).replace(os.sep, "/")
            if rel in (MANIFEST, MANIFEST + ".tmp"):
                continue
            files[rel] = os.path.getsize(path)
    manifest["files"] = dict(sorted(files.items()))
    path = os.path.join(out_dir, MANIFEST)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    os.replace(path + ".tmp", path)
    return manifest


def _jsonable(options: dict) -> dict:
    out = {}
    for k, v in options.items():
        if isinstance(v, (np.generic,)):
            v = v.item()
        out[k] = v
    json.dumps(out)  # fail here, not after the export, if an option cannot be recorded
    return out


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("paddle_rc")
    except Exception:
        return "source"
