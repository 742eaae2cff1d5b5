"""Run an exported deployment directory through paddle.inference.

The deployed model offers the dynamic model's interface to paddle_rc.pipeline.Predictor
(config, compression, set_compression, question_features, generate), so
prompt building, tokenization, splicing and the sampling loop are the very same code; only the
two networks (vision, LLM) are Paddle Inference predictors instead of Layers. paddle_rc.predictor.build_predictor
puts a Predictor on top; this module does not know about it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import paddle

from paddle_rc.errors import UserError
from paddle_rc.models.generation import SplitCache
from paddle_rc.runtime import default_threads, restore_threads
from paddle_rc.export.exporter import EMBED_FILE, GRAPHS, MANIFEST, MANIFEST_FORMAT

FIX = "re-run tools/export.py"


@dataclass
class RunnerOptions:
    """How the predictors run. device: "cpu" or "gpu" (needs a CUDA build of Paddle)."""
    device: str = "cpu"
    threads: Optional[int] = None
    # Off by default: Paddle 3.3.0/3.3.1's oneDNN + PIR executor fails on some graphs with
    # "ConvertPirAttribute2RuntimeAttribute not support [pir::ArrayAttribute<pir::DoubleAttribute>]"
    # (Paddle #77340); see paddle_rc/export/README.md for what it does on ours.
    onednn: bool = False
    gpu_memory_mb: int = 1024
    gpu_id: int = 0
    ir_optim: bool = True


# ---- validation ---------------------------------------------------------------------------------

def read_manifest(directory: str) -> dict:
    """The manifest, after checking that every file it lists is present with its recorded size."""
    if not os.path.isdir(directory):
        raise UserError(f"deployment directory not found: {directory} (write one with tools/export.py)")
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        raise UserError(f"{directory} is not a complete export: {MANIFEST} is missing (it is written last, "
                        f"so the export was interrupted or this is not an export directory); {FIX}")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is unreadable ({e}); {FIX}") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != "paddle_rc_deploy":
        raise UserError(f"{path} is not a paddle_rc export manifest; {FIX}")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise UserError(f"{path} has export format {manifest.get('format')!r}, this version reads "
                        f"{MANIFEST_FORMAT}; {FIX}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise UserError(f"{path} lists no files; {FIX}")
    required = [f"{g}{ext}" for g in GRAPHS for ext in (".json", ".pdiparams")] + [EMBED_FILE, "config.json"]
    for name in required:
        if name not in files:
            raise UserError(f"{path} does not list {name}; {FIX}")
    for name, size in files.items():
        full = os.path.join(directory, name)
        if not os.path.isfile(full):
            raise UserError(f"{full} is missing; {FIX}")
        actual = os.path.getsize(full)
        if actual != size:
            raise UserError(f"{full} is {actual} bytes, the export wrote {size} (truncated or replaced); {FIX}")
    for sub in ("tokenizer", "clip_tokenizer"):
        if not any(n.startswith(sub + "/") for n in files):
            raise UserError(f"{directory} has no {sub}/ files in its manifest; {FIX}")
    return manifest


# ---- predictors -----------------------------------------------------------------------------------

def require_custom_ops(manifest: dict, directory: str) -> None:
    """Register the custom operators the programs call (built from paddle_rc's sources if this
    machine has not built them yet); without them Paddle Inference cannot load the programs."""
    from paddle_rc import native

    for name in manifest.get("custom_ops", []):
        if name not in native.OPS:
            raise UserError(f"{directory} needs the custom operator {name!r}, which this version of "
                            f"paddle_rc does not provide; {FIX}")
    if manifest.get("custom_ops") and not native.library():
        raise UserError(f"{directory} was exported with paddle_rc's C++ operators "
                        f"({', '.join(manifest['custom_ops'])}), which cannot be built here "
                        f"({native.status()['reason']}); install a C++ compiler (g++) or export again "
                        "with tools/export.py --portable (Paddle's own ops only)")


def make_config(prefix: str, opts: RunnerOptions):
    cfg = paddle.inference.Config(prefix + ".json", prefix + ".pdiparams")
    if opts.device == "gpu":
        if not paddle.is_compiled_with_cuda():
            raise UserError("--device gpu needs a CUDA build of Paddle (paddlepaddle-gpu); this one is CPU-only")
        cfg.enable_use_gpu(int(opts.gpu_memory_mb), int(opts.gpu_id))
    elif opts.device == "cpu":
        cfg.disable_gpu()
        cfg.set_cpu_math_library_num_threads(int(opts.threads or default_threads()))
        if opts.onednn:
            cfg.enable_mkldnn()
        else:
            cfg.disable_mkldnn()
    else:
        raise UserError(f"unknown device {opts.device!r}: use cpu or gpu")
    cfg.switch_ir_optim(bool(opts.ir_optim))
    cfg.disable_glog_info()
    return cfg


class Graph:
    """One exported program: run(list of paddle tensors) -> list of paddle tensors, in manifest order.

    The outputs share memory with the predictor's own variables, and a later run of the same
    program writes into that memory whenever its output fits (Paddle 3.3: the output tensors hold
    the variables' allocations, which the kernels reuse). So nothing a run returns is kept across
    another run: callers copy (clone) what they keep, and the LLM's keys/values are copied into the
    caller's cache on the host (run_step, append_step), the one copy a step makes of them anyway.
    """

    def __init__(self, directory: str, name: str, spec: dict, opts: RunnerOptions):
        self.name = name
        self.prefix = os.path.join(directory, name)
        self.input_names = [i["name"] for i in spec["inputs"]]
        self.output_names = list(spec["outputs"])
        try:
            self.predictor = paddle.inference.create_predictor(make_config(self.prefix, opts))
        except UserError:
            raise
        except Exception as e:  # a damaged program or parameter file surfaces here as a C++ error
            raise UserError(f"cannot load {self.prefix}.json / .pdiparams ({_first_line(e)}); {FIX}") from None
        got = list(self.predictor.get_input_names())
        if got != self.input_names:
            raise UserError(f"{self.prefix}.json takes inputs {got}, the manifest says {self.input_names}; {FIX}")
        n_out = len(self.predictor.get_output_names())
        if n_out != len(self.output_names):
            raise UserError(f"{self.prefix}.json has {n_out} outputs, the manifest says "
                            f"{len(self.output_names)}; {FIX}")

    def __call__(self, *inputs):
        try:
            return self.predictor.run([x if isinstance(x, paddle.Tensor) else paddle.to_tensor(x) for x in inputs])
        finally:
            restore_threads()  # the run leaves one math thread to the dynamic ops that follow it


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


# ---- the deployed model ---------------------------------------------------------------------------

class HostEmbedding:
    """What splice() and decode use of nn.Embedding (calling it on ids), over the exported table."""

    def __init__(self, table: np.ndarray):
        self.table = table

    def __call__(self, ids):
        index = ids.numpy() if isinstance(ids, paddle.Tensor) else np.asarray(ids)
        return paddle.to_tensor(np.ascontiguousarray(self.table[index.astype(np.int64)]))


class ClipIds:
    """What the deployed model's question_features returns: the exported vision graph embeds the
    question itself, so the "text embedding" handed to generate() is the CLIP token ids."""

    def __init__(self, ids):
        self.ids = ids


def _model_class():
    from paddle_rc.models.llava import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration


class DeployedLlava:
    """The dynamic model's interface over two Paddle Inference predictors (vision, LLM)."""

    def __init__(self, directory: str, opts: Optional[RunnerOptions] = None):
        from paddle_rc.models.config import LlavaConfig
        from paddle_rc.models.llava import CompressionSpec

        self.directory = directory
        self.options = opts or RunnerOptions()
        self.manifest = read_manifest(directory)
        self.config = LlavaConfig.load(directory)
        comp = self.manifest["compression"]
        self.compression = CompressionSpec(comp["method"], comp["budget"], dict(comp["options"]))
        require_custom_ops(self.manifest, directory)
        self.graphs = {g: Graph(directory, g, self.manifest["graphs"][g], self.options) for g in GRAPHS}
        # splice() and decode read self.language_model.embed_tokens: rows of the saved table.
        self.language_model = paddle.nn.Layer()
        self.language_model.embed_tokens = HostEmbedding(self._load_table())
        llm = self.config.llm
        # An in-LLM pruning export (FastV) splits the cache after its layer K: K layers, then the rest.
        self._layer = comp.get("llm_layer")
        early = llm.num_hidden_layers if self._layer is None else self._layer
        self._slot_shape = [early, 0, llm.num_key_value_heads, 1, llm.head_dim]
        self._late_slot_shape = None if self._layer is None else \
            [llm.num_hidden_layers - self._layer, 0, llm.num_key_value_heads, 1, llm.head_dim]

    def _load_table(self) -> np.ndarray:
        path = os.path.join(self.directory, EMBED_FILE)
        try:
            table = np.load(path, mmap_mode="r")  # pages in the rows used, not 0.5 GB (7B) up front
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {path} ({_first_line(e)}); {FIX}") from None
        want = [self.config.llm.vocab_size, self.config.llm.hidden_size]
        if list(table.shape) != want:
            raise UserError(f"{path} has shape {list(table.shape)}, config.json implies {want}; {FIX}")
        return table if table.dtype == np.float32 else table.astype(np.float32)

    # ---- what Predictor calls -----------------------------------------------------------------------
    def set_compression(self, method: str, budget: Optional[int] = None, positions: str = "compact",
                        **options) -> None:
        """The method is baked into the vision graph: asking for another one is an error, not a switch.
        The position layout is not: the LLM graph takes position ids as an input."""
        from paddle_rc.positions import check_positions

        check_positions(positions)
        spec = self.compression
        if method != spec.method or budget != spec.budget or (options and options != spec.options):
            want = f"{method}" + ("" if budget is None else f" budget {budget}")
            have = f"{spec.method}" + ("" if spec.budget is None else f" budget {spec.budget}")
            raise UserError(f"{self.directory} was exported with method {have}; for {want} export again: "
                            f"tools/export.py --method {method}" + ("" if budget is None else f" --budget {budget}"))
        spec.positions = positions

    def question_features(self, input_ids, mode):
        return ClipIds(input_ids)

    def encode_images(self, pixel_values, text_embeds=None, has_text=None):
        from paddle_rc.models.llava import VisualTokens

        comp = self.manifest["compression"]
        inputs = [pixel_values.astype("float32")]
        if comp["uses_text"]:
            ids, has_text = self._text_inputs(text_embeds, has_text, int(pixel_values.shape[0]))
            inputs += [ids, has_text]
        # Copies (small next to the tower): the result is read after later runs of the program.
        outs = [o.clone() for o in self.graphs["vision"](*inputs)]
        embeds = outs[0]
        lengths = outs[1].numpy().astype(np.int64)
        n = int(comp["n_patches"])
        if len(outs) == 2:  # none, or a method that prunes inside the LLM
            return VisualTokens(embeds, lengths, n)
        return VisualTokens(embeds, lengths, n, self._result(outs, has_text if comp["uses_text"] else None))

    def _text_inputs(self, text_embeds, has_text, batch):
        if isinstance(text_embeds, ClipIds):
            ids = text_embeds.ids
        elif text_embeds is None:
            # No sample has a question: any ids do, has_text=False skips every text stage in the graph.
            mode = self.manifest["compression"].get("text_mode")
            length = {"prompt-first-line": 20,
                      "question-segments": self.config.text.max_position_embeddings}.get(mode, 1)
            ids = paddle.full([batch, length], self.config.text.eos_token_id, dtype="int64")
        else:
            raise TypeError("the deployed model takes the question as CLIP token ids (question_features)")
        if has_text is None:
            has_text = paddle.full([batch], text_embeds is not None, dtype="bool")
        return ids.astype("int64"), has_text.astype("bool")

    def _result(self, outs, has_text):
        from paddle_rc.compression import CompressionResult
        from paddle_rc.compression.registry import get_method

        comp = self.manifest["compression"]
        spec = get_method(comp["method"])
        notes = []
        n = int(comp["n_patches"])
        if comp["budget"] is not None:
            if not spec.takes_budget:
                notes.append(f"budget {comp['budget']} ignored: method '{comp['method']}' keeps all {n} tokens")
            elif comp["budget_applied"] < comp["budget"]:
                notes.append(f"budget {comp['budget']} > N={n}: clamped to {n}")
        text_note = "text recovery skipped: empty question" if spec.uses_text else None
        # The projected embeds stand in for the pre-projector tokens: the result only reads their shape.
        return CompressionResult(list(outs), comp["method"], budget=comp["budget_applied"] if spec.takes_budget else None,
                                 notes=notes, has_text=has_text, text_note=text_note)

    # Prefill and decode run the one LLM program, which always takes a past. The prefill's past is
    # one masked-out slot (zeros, attention mask 0) rather than an empty one: oneDNN's concat
    # rejects zero-length inputs. The slot stays at the front of the caches, so every call puts a
    # 0 in front of the attention mask; a masked key gets weight exactly 0, so outputs are unchanged.
    # The program returns this call's keys/values; run_step writes them into the cache here.
    def prefill(self, inputs_embeds, attention_mask, position_ids):
        if self._layer is not None:  # a FastV export without an image: its program, pruning nothing
            visual = paddle.zeros(inputs_embeds.shape[:2], dtype="bool")
            logits, cache, _ = self.prefill_pruned(inputs_embeds, attention_mask, position_ids, visual)
            return logits, cache, None
        slot = self._slot(self._slot_shape, inputs_embeds)
        return self._step(inputs_embeds, attention_mask, position_ids, slot, slot)

    def decode(self, input_ids, attention_mask, position_ids, past_k, past_v):
        if self._layer is not None:
            logits, cache = self.decode_pruned(input_ids, attention_mask, position_ids, past_k)
            return logits, cache, None
        return self._step(self.language_model.embed_tokens(input_ids), attention_mask, position_ids, past_k, past_v)

    # FastV: the same program over the split cache (generation.SplitCache). Its later layers' cache
    # starts with a masked slot too, which late_mask (carried in the cache) covers with its own 0.
    def prefill_pruned(self, inputs_embeds, attention_mask, position_ids, visual_mask):
        early, late = self._slot(self._slot_shape, inputs_embeds), self._slot(self._late_slot_shape, inputs_embeds)
        late_mask = paddle.zeros([int(inputs_embeds.shape[0]), 1], dtype="int64")
        logits, cache, keep = self._step_pruned(inputs_embeds, attention_mask, position_ids,
                                                SplitCache(early, early, late, late, late_mask), visual_mask)
        return logits, cache, keep

    def decode_pruned(self, input_ids, attention_mask, position_ids, cache):
        embeds = self.language_model.embed_tokens(input_ids)
        visual = paddle.zeros(embeds.shape[:2], dtype="bool")  # a decode step drops nothing
        logits, cache, _ = self._step_pruned(embeds, attention_mask, position_ids, cache, visual)
        return logits, cache

    @staticmethod
    def _slot(shape, inputs_embeds):
        shape = list(shape)
        shape[1] = int(inputs_embeds.shape[0])
        return paddle.zeros(shape, dtype="float32")

    @staticmethod
    def _slot_mask(attention_mask):
        mask = attention_mask.astype("int64")
        return paddle.concat([paddle.zeros([mask.shape[0], 1], dtype="int64"), mask], axis=1)

    def _run_llm(self, inputs_embeds, attention_mask, position_ids, *past):
        return self.graphs["llm"](inputs_embeds.astype("float32"), self._slot_mask(attention_mask),
                                  position_ids.astype("int64"), *past)

    def _step(self, inputs_embeds, attention_mask, position_ids, past_k, past_v):
        return run_step(self.graphs["llm"], inputs_embeds.astype("float32"), self._slot_mask(attention_mask),
                        position_ids.astype("int64"), past_k, past_v)

    def _step_pruned(self, inputs_embeds, attention_mask, position_ids, cache, visual_mask):
        outs = self._run_llm(inputs_embeds, attention_mask, position_ids, *cache.tensors(),
                             visual_mask.astype("bool"))
        logits, k, v = append_step(outs[:3], cache.k, cache.v)
        _, kl, vl = append_step(outs[:1] + outs[3:5], cache.k_late, cache.v_late)
        late_mask = paddle.concat([cache.late_mask, outs[5]], axis=1)
        return logits, SplitCache(k, v, kl, vl, late_mask), outs[6].clone()


def run_step(graph, inputs_embeds, attention_mask, position_ids, past_k, past_v):
    """One run of the exported LLM program -> (logits, past + this call's keys/values), the cache kept
    as the dynamic model keeps it (paddle_rc.models.llama): a buffer with room for CACHE_ROOM more
    tokens, written in place. When the past has room, the program attends over its whole buffer, the
    room masked out (attention_mask gets zeros there), so the program's input is the buffer itself and
    a decode step copies nothing but its own keys/values; append_step's concatenation copied the whole
    cache per step (the exported decode was 1.06-1.08x the dynamic model's for that alone).
    `attention_mask` covers the past and this call's tokens, as the program takes it."""
    from paddle_rc.models import llama
    from paddle_rc.models.host_copy import write

    past_len = int(past_k.shape[3])
    length = past_len + int(inputs_embeds.shape[1])
    if llama.appendable(past_k, length) and llama.appendable(past_v, length):
        full_k, full_v = llama.whole_buffer(past_k), llama.whole_buffer(past_v)
        room = paddle.zeros([int(attention_mask.shape[0]), int(full_k.shape[3]) - past_len], dtype="int64")
        mask = paddle.concat([attention_mask[:, :past_len], room, attention_mask[:, past_len:]], axis=1)
        logits, k, v = graph(inputs_embeds, mask, position_ids, full_k, full_v)
    else:
        # A predictor reads its inputs' memory as dense: a cache view shorter than its buffer (a step
        # from a cache that was appended to already) is copied first.
        dense = [c if c.is_contiguous() else c.contiguous() for c in (past_k, past_v)]
        logits, k, v = graph(inputs_embeds, attention_mask, position_ids, *dense)
        layers = int(k.shape[0])
        full_k, full_v = llama.new_buffer(past_k, k[0], layers, length), llama.new_buffer(past_v, v[0], layers, length)
    at = (slice(None),) * 3 + (slice(past_len, length),)
    write(full_k, at, k)  # copied out of the predictor's memory, which its next run reuses
    write(full_v, at, v)
    llama.forget(past_k)  # appended to: another step from it must copy, not overwrite
    llama.forget(past_v)
    return logits.clone(), llama.remember(full_k, length), llama.remember(full_v, length)


def append_step(outs, past_k, past_v):
    """(logits, k, v) of one llm-program run -> (logits, past_k + k, past_v + v): this call's keys and
    values appended to the cache on the host. The concatenation is the one cache copy a step makes
    anyway (the dynamic model makes it inside LlamaModel.forward); made here, the cache is the
    caller's memory, which later runs of the program cannot overwrite (see Graph)."""
    logits, k, v = outs
    return logits.clone(), paddle.concat([past_k, k], axis=3), paddle.concat([past_v, v], axis=3)


# The dynamic model's host-side code, shared rather than copied: both only touch attributes the
# deployed model has (config, compression, language_model.embed_tokens, encode_images, prefill,
# decode, prefill_pruned, decode_pruned).
DeployedLlava.splice = _model_class().splice
DeployedLlava.generate = _model_class().generate
DeployedLlava._llm_method = _model_class()._llm_method
DeployedLlava.llm_steps = _model_class().llm_steps
DeployedLlava.record_llm_selection = _model_class().record_llm_selection

