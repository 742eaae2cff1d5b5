"""paddle_rc against transformers at LLaVA-1.5-7B's real shapes, in one run.

transformers runs in a child process (hf_worker.py, started by file path: it never imports
paddle_rc or Paddle), paddle_rc in this one, and their repeats alternate, so a busy moment of a
shared machine hits both sides alike. Between two timed calls the benchmark pauses briefly: an
OpenMP pool keeps its threads spinning for a while after its last parallel region (Intel's
libiomp5, which Paddle ships, for up to 200 ms), and that would be charged to the other side.

Stages (each frees its models before the next, so peak memory stays one stage's worth):
  vision   CLIP ViT-L/14-336: paddle_rc's tower to LLaVA's feature layer; the same with RC (question
           through the CLIP text tower, the extra layer for Q/K/P, the compression step, the projector
           on the kept tokens); that as an exported graph; transformers' CLIPVisionModel with all
           hidden states (what LLaVA runs); and RC's compression step alone.
  llm      LLaMA at 7B widths (hidden 4096, MLP 11008, 32 heads, vocab 32000), `llm_layers` layers:
           prefill of `seq` tokens (last-position logits, as generation computes) and decode per
           token with a KV cache of that prefill.
  export   the exported prefill/decode graphs against the dynamic model at equal threads
           (`export_layers` layers: every exported graph holds its own copy of the weights).
Random weights: times depend on shapes, not values.
"""
from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional

import numpy as np
import paddle

from paddle_rc.benchmark.deploy import decode_run
from paddle_rc.runtime import default_threads, release_freed_memory

PAUSE_S = 0.3
VIT_L = dict(width=1024, layers=24, heads=16, image_size=336, patch=14, projection=768)
LLAMA_7B = dict(hidden=4096, intermediate=11008, heads=32, vocab=32000)
# Ratio targets (paddle_rc / transformers, or exported / dynamic) from issue 11.
TARGETS = {"tower to the feature layer": 0.95, "tower + rc": 1.0, "prefill": 0.85, "decode, per token": 1.0,
           "exported tower + rc": 1.0, "exported prefill": 1.0, "exported decode, per token": 1.0,
           "rc step alone": 0.05}


def transformers_missing(python: Optional[str]) -> Optional[str]:
    """None when the worker can run; otherwise the one line to print."""
    if python:
        code = "import torch, transformers"
        ok = subprocess.run([python, "-c", code], capture_output=True).returncode == 0
        return None if ok else f"{python} cannot import torch and transformers"
    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        return (f"{' and '.join(missing)} not installed: transformers columns skipped "
                f"(pip install -r requirements-test.txt, or --transformers-python PATH of a venv that has them)")
    return None


class Worker:
    """The transformers process."""

    def __init__(self, python: Optional[str]):
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf_worker.py")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
        self.proc = subprocess.Popen([python or sys.executable, path], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)

    def ask(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the transformers worker exited (code {self.proc.wait()})")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"transformers worker: {reply['error']}")
        return reply

    def close(self):
        try:
            self.ask(cmd="quit")
        except (RuntimeError, BrokenPipeError, OSError):
            pass
        self.proc.wait(timeout=60)


def _timed(fn: Callable) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _llava(vision: Optional[dict], text: Optional[dict], llm: dict, seed: int = 0):
    from paddle_rc.models import LlavaForConditionalGeneration
    from paddle_rc.models.config import CLIPTextConfig, CLIPVisionConfig, LlamaConfig, LlavaConfig

    if vision:
        vcfg = CLIPVisionConfig(hidden_size=vision["width"], intermediate_size=4 * vision["width"],
                                num_hidden_layers=vision["layers"], num_attention_heads=vision["heads"],
                                image_size=vision["image_size"], patch_size=vision["patch"],
                                projection_dim=vision["projection"])
        tcfg = CLIPTextConfig(**(text or {}))  # default: CLIP ViT-L/14's text tower, which embeds RC's question
    else:  # the LLM stage: a token vision side that is never run
        vcfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=28, patch_size=14, projection_dim=16)
        tcfg = CLIPTextConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2, projection_dim=16, bos_token_id=98, eos_token_id=99,
                              pad_token_id=99)
    lcfg = LlamaConfig(vocab_size=llm["vocab"], hidden_size=llm["hidden"], intermediate_size=llm["intermediate"],
                       num_hidden_layers=llm["layers"], num_attention_heads=llm["heads"],
                       num_key_value_heads=llm["heads"], max_position_embeddings=4096)
    paddle.seed(seed)
    model = LlavaForConditionalGeneration(LlavaConfig(vision=vcfg, text=tcfg, llm=lcfg))
    model.eval()
    return model


class _Runner:
    """Interleaves the cases of one stage; keeps every sample."""

    def __init__(self, worker: Optional[Worker], repeats: int, progress, pause: float):
        self.worker, self.repeats, self.progress, self.pause = worker, repeats, progress, pause
        self.samples = {}

    def run(self, stage: str, paddle_cases: dict, hf_cases: dict, per: dict):
        """hf_cases: the worker's case -> the rows its samples stand against (one transformers tower
        pass serves both tower rows)."""
        for fn in paddle_cases.values():  # warm-up: kernels, allocator, the predictors' first run
            fn()
        if self.worker:
            for case in hf_cases:
                self.worker.ask(cmd="run", case=case)
        for r in range(self.repeats):
            self.progress(f"{stage}: repeat {r + 1}/{self.repeats}")
            for name, fn in paddle_cases.items():
                time.sleep(self.pause)
                self.samples.setdefault(("paddle_rc", name), []).append(_timed(fn) / per.get(name, 1))
            if self.worker:
                for case, names in hf_cases.items():
                    time.sleep(self.pause)
                    s = self.worker.ask(cmd="run", case=case)["seconds"]
                    for name in names:
                        self.samples.setdefault(("transformers", name), []).append(s / per.get(name, 1))


def run_versus(*, repeats: int = 5, llm_layers: int = 4, export_layers: int = 2, seq: int = 636,
               decode_steps: int = 16, stages=("vision", "llm", "export"), transformers_python=None,
               threads: Optional[int] = None, progress=None, vit: dict = VIT_L, text: Optional[dict] = None,
               llama: dict = LLAMA_7B, pause: float = PAUSE_S) -> dict:
    """-> {"info": settings and versions, "rows": [{case, paddle_rc_min_s, paddle_rc_median_s, versus,
    ref_min_s, ref_median_s, ratio_min, ratio_median, target}]}. vit / text / llama: shapes (the
    defaults are LLaVA-1.5-7B's; the tests pass tiny ones)."""
    from paddle_rc.compression import compress
    from paddle_rc.export import exporter
    from paddle_rc.export.runner import Graph, RunnerOptions, run_step
    from paddle_rc.models.llama import positions_from_mask

    say = progress or (lambda msg: None)
    threads = threads or default_threads()
    note = transformers_missing(transformers_python)
    worker = None if note else Worker(transformers_python)
    runner = _Runner(worker, repeats, say, pause)
    rng = np.random.default_rng(0)
    info = {"vit": vit, "llama": llama, "threads": threads, "paddle": paddle.__version__, "repeats": repeats, "seq": seq,
            "decode_steps": decode_steps, "llm_layers": llm_layers, "export_layers": export_layers,
            "transformers_note": note}
    extra = {}
    try:
        if "vision" in stages:
            say("vision: building paddle_rc's and transformers' CLIP towers (random weights)")
            # No LLM layers and a small vocabulary: this stage runs the projector, never the LLM.
            model = _llava(vit, text, dict(llama, layers=0, vocab=1000))
            model.set_compression("rc")
            if worker:
                info.update(worker.ask(cmd="build", what="vision", threads=threads, **vit))
            size = vit["image_size"]
            pixels = paddle.to_tensor(rng.standard_normal((1, 3, size, size)).astype(np.float32))
            # A 12-token question (BOS ... EOS), as LLaVA's prompts are short.
            tc = model.config.text
            ids = rng.integers(0, min(tc.bos_token_id, tc.eos_token_id), size=(1, 12))
            ids[0, 0], ids[0, -1] = tc.bos_token_id, tc.eos_token_id
            clip_ids = paddle.to_tensor(ids.astype(np.int64))
            has_text = paddle.ones([1], dtype="bool")
            with tempfile.TemporaryDirectory(prefix="paddle_rc_versus_") as out:
                say("vision: exporting the tower + rc graph")
                specs = exporter.export_vision(model, out, "rc")
                graph = Graph(out, "vision", {"inputs": exporter._spec_json(specs),
                                              "outputs": exporter.output_names("rc")["vision"]},
                              RunnerOptions(threads=threads))
                with paddle.no_grad():
                    feats = model.vision_tower(pixels, -2, need_qkp=True)
                    P = model.visual_projection(feats.P)
                    t = model.get_text_features(clip_ids)

                    def rc_step():
                        res = compress("rc", feats.F, feats.Q, feats.K, P=P, t=t)
                        res.tokens.numpy()

                    def tower_rc():
                        text = model.get_text_features(clip_ids)
                        model.encode_images(pixels, text, has_text).embeds.numpy()

                    cases = {"tower to the feature layer": lambda: model.vision_tower(pixels, -2).F.numpy(),
                             "tower + rc": tower_rc,
                             "exported tower + rc": lambda: graph(pixels, clip_ids, has_text)[0].numpy(),
                             "rc step alone": rc_step}
                    hf = {"tower": ["tower to the feature layer", "tower + rc"]}
                    runner.run("vision", cases, hf, {})
                    extra["visual_tokens_rc"] = int(model.encode_images(
                        pixels, model.get_text_features(clip_ids), has_text).lengths[0])
                del graph
            del model, feats, P, t
            release_freed_memory()
            if worker:
                worker.ask(cmd="free")

        if "llm" in stages or "export" in stages:
            x = paddle.to_tensor(rng.standard_normal((1, seq, llama["hidden"])).astype(np.float32) * 0.02)
            mask = paddle.ones([1, seq], dtype="int64")
            pos = positions_from_mask(mask)

            def decode_loop(step):
                return decode_run(step, k0, v0, mask, pos, decode_steps)

        if "llm" in stages:
            say(f"llm: building {llm_layers}-layer LLaMA at 7B widths on both sides (random weights)")
            model = _llava(None, None, dict(llama, layers=llm_layers))
            if worker:
                info.update(worker.ask(cmd="build", what="llm", threads=threads, layers=llm_layers, seq=seq,
                                       decode_steps=decode_steps, **llama))
            with paddle.no_grad():
                _, k0, v0 = model.prefill(x, mask, pos)
                cases = {"prefill": lambda: model.prefill(x, mask, pos)[0].numpy(),
                         "decode, per token": decode_loop(model.decode)}
                runner.run("llm", cases, {"prefill": ["prefill"], "decode": ["decode, per token"]},
                           {"decode, per token": decode_steps})
            del model, k0, v0
            release_freed_memory()
            if worker:
                worker.ask(cmd="free")

        if "export" in stages:
            say(f"export: {export_layers}-layer LLaMA at 7B widths, dynamic vs exported graphs")
            model = _llava(None, None, dict(llama, layers=export_layers))
            with tempfile.TemporaryDirectory(prefix="paddle_rc_versus_") as out:
                exporter.export_llm(model, out)
                opts = RunnerOptions(threads=threads)
                llm_g = Graph(out, "llm", {"inputs": exporter._spec_json(exporter._llm_inputs(model.config)),
                                           "outputs": exporter.output_names("none")["llm"]}, opts)
                # As the deployed runner calls the one LLM graph: the prefill with a masked-out past
                # slot, decode with the new token embedded on the host.
                lc = model.config.llm
                slot = paddle.zeros([lc.num_hidden_layers, x.shape[0], lc.num_key_value_heads, 1, lc.head_dim])
                slot_mask = paddle.concat([paddle.zeros([x.shape[0], 1], "int64"), mask], axis=1)
                embed = model.language_model.embed_tokens
                with paddle.no_grad():
                    _, k0, v0 = model.prefill(x, mask, pos)
                    cases = {"dynamic prefill": lambda: model.prefill(x, mask, pos)[0].numpy(),
                             "exported prefill": lambda: run_step(llm_g, x, slot_mask, pos, slot, slot)[0].numpy(),
                             "dynamic decode, per token": decode_loop(model.decode),
                             "exported decode, per token": decode_loop(
                                 lambda ids, m, p, k, v: run_step(llm_g, embed(ids), m, p, k, v))}
                    per = {"dynamic decode, per token": decode_steps, "exported decode, per token": decode_steps}
                    runner.run("export", cases, {}, per)
                del llm_g
            del model
    finally:
        if worker:
            worker.close()
    info.update(extra)
    return {"info": info, "rows": _rows(runner.samples)}


def _rows(samples: dict) -> list:
    def stat(side, name):
        s = samples.get((side, name))
        return (min(s), statistics.median(s)) if s else (None, None)

    rows = []
    names = list(dict.fromkeys(name for _, name in samples))
    for name in names:
        if name.startswith("dynamic "):
            continue
        p_min, p_med = stat("paddle_rc", name)
        row = {"case": name, "paddle_rc_min_s": p_min, "paddle_rc_median_s": p_med, "target": TARGETS.get(name)}
        if name.startswith("exported "):
            base = name.replace("exported ", "dynamic ", 1)
            if ("paddle_rc", base) in samples:
                ref = base
                row["versus"] = "dynamic paddle_rc"
                r_min, r_med = stat("paddle_rc", ref)
            else:  # the exported tower + rc runs against the dynamic tower + rc of the same stage
                ref = name.replace("exported ", "", 1)
                row["versus"] = "dynamic paddle_rc"
                r_min, r_med = stat("paddle_rc", ref)
        elif name == "rc step alone":
            row["versus"] = "paddle_rc tower to the feature layer"
            r_min, r_med = stat("paddle_rc", "tower to the feature layer")
        else:
            row["versus"] = "transformers" + (" full tower" if name.startswith("tower") else "")
            r_min, r_med = stat("transformers", name)
        row.update(ref_min_s=r_min, ref_median_s=r_med,
                   ratio_min=None if r_min is None else p_min / r_min,
                   ratio_median=None if r_med is None else p_med / r_med)
        rows.append(row)
    return rows


def format_versus_table(result: dict) -> str:
    i = result["info"]
    head = (f"{i['threads']} threads, Paddle {i['paddle']}"
            + (f", torch {i['torch']}, transformers {i['transformers']}" if "transformers" in i else "")
            + f"; min and median of {i['repeats']} interleaved repeats; prefill {i['seq']} tokens, "
            f"decode {i['decode_steps']} tokens on that cache; ViT {i['vit']['width']} wide, {i['vit']['layers']} layers, "
            f"{i['vit']['image_size']} px; LLaMA {i['llama']['hidden']} wide (MLP {i['llama']['intermediate']}, "
            f"vocab {i['llama']['vocab']}) with {i['llm_layers']} layers ({i['export_layers']} for the exported graphs)")
    if i.get("transformers_note"):
        head += f"\n{i['transformers_note']}"

    def ms(x):
        return "" if x is None else f"{1000 * x:.0f}" if x >= 0.1 else f"{1000 * x:.1f}"

    def ratio(x):
        return "" if x is None else f"{x:.2f}"

    lines = [head, "", "| case | paddle_rc min / median (ms) | against | its min / median (ms) | ratio of mins "
             "| ratio of medians | target |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        ref = "" if r["ref_min_s"] is None else f"{ms(r['ref_min_s'])} / {ms(r['ref_median_s'])}"
        target = "" if r["target"] is None else f"<= {r['target']:.2f}"
        lines.append(f"| {r['case']} | {ms(r['paddle_rc_min_s'])} / {ms(r['paddle_rc_median_s'])} | {r['versus']} "
                     f"| {ref} | {ratio(r['ratio_min'])} | {ratio(r['ratio_median'])} | {target} |")
    return "\n".join(lines)
