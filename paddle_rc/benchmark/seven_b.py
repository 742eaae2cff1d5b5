"""LLaVA-1.5-7B at its real shapes on this machine: write, quantize, time, clean up.

No model hub is reachable here, so the checkpoint holds random weights with exactly LLaVA-1.5-7B's
tensors (CLIP ViT-L/14-336 with its text tower, mlp2x_gelu projector, 32 LLaMA layers at
4096/11008, vocab 32064), written float16 tensor by tensor (streamed: one tensor in memory) in this
project's checkpoint layout, then quantized with tools/quantize.py's code. Each measured case is a
fresh `tools/infer.py --json` process, as a user would run it, and its peak resident memory is the
kernel's count for that process (os.wait4). Timing matters, answers do not: random weights answer
nonsense. The EOS column of lm_head is zero so greedy decoding never stops early.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# 77 prompt tokens with the conversation template and write_llm_tokenizer (LLaVA's own tokenizer: about as many).
QUESTION = ("Describe the picture in detail: what objects are there, what colours do they have, where "
            "is each of them, and what is the weather like in this scene?")
QUANT_PRESETS = ("int8", "int4-g128")


def seven_b_config(clip_tok, llm_tok):
    from paddle_rc.models.config import CLIPTextConfig, CLIPVisionConfig, LlamaConfig, LlavaConfig

    return LlavaConfig(
        vision=CLIPVisionConfig(),  # ViT-L/14 at 336 px: the defaults
        text=CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, projection_dim=768, vocab_size=49408,
                            bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id,
                            pad_token_id=clip_tok.pad_token_id),
        llm=LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                        bos_token_id=llm_tok.bos_token_id, eos_token_id=llm_tok.eos_token_id,
                        pad_token_id=llm_tok.pad_token_id),
        image_token_index=-200, conv_mode="vicuna_v1", source="random-7b", weights_dtype="float16",
    )


class _RandomWeights:
    """N(0, 0.02) float16 tensors, one random draw per distinct shape reused by every tensor of that
    shape (drawing 7 billion normals costs minutes; timings do not depend on the values)."""

    def __init__(self, eos: int, seed: int = 0):
        self.eos, self.seed, self.cache = eos, seed, {}

    def __call__(self, name: str, shape: tuple) -> np.ndarray:
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "bias":
            return np.zeros(shape, np.float16)
        if "norm" in name:  # RMSNorm and LayerNorm weights (their biases are zeros above)
            return np.ones(shape, np.float16)
        if name == "lm_head.weight":
            a = self._draw(shape).copy()
            a[:, self.eos] = 0.0  # [hidden, vocab]: EOS logit 0, below the maximum of 32k random logits
            return a
        return self._draw(shape)

    def _draw(self, shape: tuple) -> np.ndarray:
        if shape not in self.cache:
            rng = np.random.default_rng([self.seed, len(self.cache)])
            a = rng.standard_normal(shape, dtype=np.float32)
            a *= 0.02
            self.cache[shape] = a.astype(np.float16)
        return self.cache[shape]


def write_llm_tokenizer(directory: str) -> None:
    """The checkpoint's LLaMA tokenizer: a small sentencepiece model that also learnt the prompt template
    and QUESTION, so that the benchmark's prompt is 77 tokens, about what LLaVA's real tokenizer makes of
    it. The 400-piece default split it into 194 (letters and pairs), which tripled the text part of every
    prefill and held `rc`'s measured speed-up under 3x whatever the kernels did. Written again into
    reused checkpoints, so every run measures the same prompt."""
    from paddle_rc.data.conversation import get_template
    from paddle_rc.data.tiny_tokenizers import CORPUS, build_tiny_sentencepiece

    template = get_template("vicuna_v1")
    build_tiny_sentencepiece(os.path.join(directory, "tokenizer"), vocab_size=800,
                             corpus=f"{CORPUS}\n{template.system}\nUSER: ASSISTANT:\n{QUESTION}\n")


def write_random_checkpoint(directory: str, progress: Optional[Callable] = None,
                            make_config: Callable = seven_b_config) -> int:
    """The float16 checkpoint (7B shapes unless `make_config` says otherwise) in `directory`;
    returns its weight bytes."""
    import paddle

    from paddle_rc.convert.writer import PlannedTensor, write_sharded
    from paddle_rc.data.clip_tokenizer import CLIPTokenizer
    from paddle_rc.data.llama_tokenizer import LlamaTokenizer
    from paddle_rc.data.tiny_tokenizers import build_tiny_clip_bpe
    from paddle_rc.models import LlavaForConditionalGeneration
    from paddle_rc.quant.checkpoint import checkpoint_weight_bytes

    os.makedirs(directory, exist_ok=True)
    write_llm_tokenizer(directory)
    build_tiny_clip_bpe(os.path.join(directory, "clip_tokenizer"))
    config = make_config(CLIPTokenizer.from_dir(os.path.join(directory, "clip_tokenizer")),
                            LlamaTokenizer.from_dir(os.path.join(directory, "tokenizer")))
    with paddle.LazyGuard():  # shapes only, no storage
        model = LlavaForConditionalGeneration(config)
    draw = _RandomWeights(config.llm.eos_token_id)
    plan = [PlannedTensor(name, "F16", tuple(int(d) for d in t.shape),
                          lambda n=name, s=tuple(int(d) for d in t.shape): draw(n, s))
            for name, t in model.state_dict().items()]
    del model
    write_sharded(directory, plan, 2 * 10 ** 9, on_tensor=(lambda t: progress(t.name)) if progress else None)
    config.save(directory)
    return checkpoint_weight_bytes(directory)


FP16_NAME = "llava-7b-random-fp16"


def checkpoint_name(preset: str) -> str:
    return f"llava-7b-random-{preset}"


def _matches(directory: str, make_config: Callable, preset: str) -> bool:
    """Whether `directory` holds a finished quantized checkpoint of `make_config`'s shapes at `preset`
    (quantize_checkpoint renames a checkpoint into place only once it is complete)."""
    from paddle_rc.data.clip_tokenizer import CLIPTokenizer
    from paddle_rc.data.llama_tokenizer import LlamaTokenizer
    from paddle_rc.models.config import LlavaConfig
    from paddle_rc.quant import QuantConfig

    if not os.path.isfile(os.path.join(directory, "config.json")):
        return False
    try:
        have = LlavaConfig.load(directory)
        want = make_config(CLIPTokenizer.from_dir(os.path.join(directory, "clip_tokenizer")),
                           LlamaTokenizer.from_dir(os.path.join(directory, "tokenizer")))
    except Exception:  # unreadable or foreign: written again
        return False
    want.quantization = QuantConfig.preset(preset).to_dict()
    return have.to_dict() == want.to_dict()


def prepare_checkpoints(directory: str, presets=QUANT_PRESETS, progress: Callable = lambda m: None,
                        make_config: Callable = seven_b_config) -> dict:
    """The quantized random checkpoints in `directory` (`llava-7b-random-<preset>`), reusing those
    already there from an earlier run with the same shapes; the float16 source is written only if
    a preset is missing and removed afterwards (~14 GB for 7B). Returns sizes and times, including
    `reused` (the presets found ready)."""
    from paddle_rc.quant import QuantConfig
    from paddle_rc.quant.checkpoint import checkpoint_weight_bytes, quantize_checkpoint

    os.makedirs(directory, exist_ok=True)
    info = {"paths": {}, "reused": [], "quantize_s": {}, "quant_bytes": {}}
    todo = []
    for preset in presets:
        dst = os.path.join(directory, checkpoint_name(preset))
        info["paths"][preset] = dst
        if _matches(dst, make_config, preset):
            write_llm_tokenizer(dst)
            info["reused"].append(preset)
            info["quant_bytes"][preset] = checkpoint_weight_bytes(dst)
            progress(f"reusing {dst}")
        else:
            todo.append(preset)
    sidecar = os.path.join(directory, "seven-b.json")  # the float16 size, known only when written
    try:
        with open(sidecar, encoding="utf-8") as f:
            info["fp16_bytes"] = int(json.load(f)["fp16_bytes"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if not todo:
        return info
    fp16 = os.path.join(directory, FP16_NAME)
    shutil.rmtree(fp16, ignore_errors=True)  # a half-written one from an interrupted run
    done = [0]

    def tick(name):
        done[0] += 1
        if done[0] % 50 == 0:
            progress(f"  {done[0]} tensors written ({name})")

    try:
        t0 = time.perf_counter()
        progress("writing the random float16 7B checkpoint (streamed)")
        info["fp16_bytes"] = write_random_checkpoint(fp16, tick, make_config)
        info["write_s"] = time.perf_counter() - t0
        with open(sidecar, "w", encoding="utf-8") as f:
            json.dump({"fp16_bytes": info["fp16_bytes"]}, f)
        for preset in todo:
            progress(f"quantizing to {preset}")
            t0 = time.perf_counter()
            dst = info["paths"][preset]
            quantize_checkpoint(fp16, dst, QuantConfig.preset(preset), overwrite=os.path.exists(dst))
            info["quantize_s"][preset] = time.perf_counter() - t0
            info["quant_bytes"][preset] = checkpoint_weight_bytes(dst)
    finally:
        shutil.rmtree(fp16, ignore_errors=True)  # not needed for inference
    return info


def _tool(name: str, args: list, threads=None) -> tuple:
    """Run tools/<name>.py in a fresh process -> (stdout, peak RSS in GB of that process)."""
    cmd = [sys.executable, os.path.join(ROOT, "tools", f"{name}.py")] + list(args)
    if threads:
        cmd += ["--threads", str(threads)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({code}):\n{stderr[-2000:]}")
    return stdout, usage.ru_maxrss * 1024 / 1e9


def infer_case(model_dir: str, image: str, method: str, max_new_tokens: int, threads=None,
               deployed: bool = False) -> dict:
    """One `tools/infer.py --json` run in a fresh process: its timings, peak RSS and wall time."""
    t0 = time.perf_counter()
    stdout, rss = _tool("infer", ["--deploy" if deployed else "--model", model_dir, "--image", image,
                                  "--question", QUESTION, "--method", method,
                                  "--max-new-tokens", str(max_new_tokens), "--json"], threads)
    result = json.loads(stdout)
    t = result["timings"]
    steps = max(int(t["new_tokens"]) - 1, 0)  # the first token comes from the prefill
    return {"method": method, "visual_tokens": result["visual_tokens_after"],
            "prompt_tokens": result["prompt_tokens"], "vision_s": t["vision"], "prefill_s": t["prefill"],
            "decode_s_per_token": t["decode"] / steps if steps else None, "new_tokens": t["new_tokens"],
            "peak_rss_gb": rss, "wall_s": time.perf_counter() - t0, "deployed": deployed}


def time_llm_gemms(rows: int, hidden: int, intermediate: int, layers: int, repeats: int = 3) -> dict:
    """The float32 GEMM-bound time of a prefill of `rows` tokens: Paddle's float32 matmul on one decoder
    layer's seven projections (q, k, v, o: hidden x hidden; gate, up: hidden x intermediate; down:
    intermediate x hidden; distinct random weights, so each comes from memory as a model's do), best of
    `repeats`, times `layers`. What a weight-only prefill is held to (dequantizing costs at least this)."""
    import paddle

    rng = np.random.default_rng(0)
    shapes = [(hidden, hidden)] * 4 + [(hidden, intermediate)] * 2 + [(intermediate, hidden)]
    weights = [paddle.to_tensor(rng.standard_normal(s, dtype=np.float32) * 0.02) for s in shapes]
    xs = {k: paddle.to_tensor(rng.standard_normal((rows, k), dtype=np.float32)) for k in {s[0] for s in shapes}}
    best = float("inf")
    for _ in range(repeats + 1):  # the first pass warms MKL up
        t = time.perf_counter()
        for w in weights:
            paddle.matmul(xs[w.shape[0]], w)
        best = min(best, time.perf_counter() - t)
    return {"rows": rows, "layer_s": best, "prefill_s": best * layers}


def _gemm_case(model_dir: str, rows: int, threads=None) -> dict:
    """time_llm_gemms for the checkpoint's LLM in a fresh process, at the threads the cases ran with."""
    with open(os.path.join(model_dir, "config.json")) as f:
        llm = json.load(f)["llm"]
    code = ("import json, sys, paddle_rc.runtime as rt; rt.configure(int(sys.argv[1]) or None); "
            "from paddle_rc.benchmark.seven_b import time_llm_gemms; "
            "print(json.dumps(time_llm_gemms(*map(int, sys.argv[2:]))))")
    out = subprocess.run([sys.executable, "-c", code, str(threads or 0), str(rows), str(llm["hidden_size"]),
                          str(llm["intermediate_size"]), str(llm["num_hidden_layers"])],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _deploy_case(result, preset, model_dir, out, image, max_new_tokens, threads, progress):
    from paddle_rc.quant.checkpoint import checkpoint_weight_bytes

    progress(f"tools/export.py --model <{preset}> --method rc")
    _, rss = _tool("export", ["--model", model_dir, "--out", out, "--method", "rc"], threads)
    size = sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out) if n.endswith((".pdiparams", ".npy")))
    ckpt = checkpoint_weight_bytes(model_dir)
    result.setdefault("export", {})[preset] = {"weight_bytes": size, "checkpoint_bytes": ckpt,
                                              "ratio": size / ckpt, "export_peak_rss_gb": rss}
    progress("  " + json.dumps(result["export"][preset]))
    try:
        case = infer_case(out, image, "rc", max_new_tokens, threads, deployed=True)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    case["weights"] = preset
    result["cases"].append(case)
    progress("  " + json.dumps(case))


def run_seven_b(workdir: Optional[str] = None, presets=QUANT_PRESETS, methods=("none", "rc"),
                max_new_tokens: int = 8, threads=None, keep: bool = False,
                progress: Callable = lambda m: None, make_config: Callable = seven_b_config,
                deploy: bool = False, checkpoints: Optional[str] = None, deploy_presets=None) -> dict:
    """With `deploy`, each quantized checkpoint (or those in `deploy_presets`) is also exported
    (method rc, tools/export.py) and run through Paddle Inference (`tools/infer.py --deploy`).
    With `checkpoints`, the quantized checkpoints live in that folder: reused when an earlier run
    left them there (prepare_checkpoints), written there otherwise, and never removed."""
    from paddle_rc.demo import demo_image
    from paddle_rc.quant import kernel

    if workdir:
        os.makedirs(workdir, exist_ok=True)
    base = tempfile.mkdtemp(prefix="paddle_rc_7b_", dir=workdir)
    result = {"cases": [], "kernel": kernel.status()}
    try:
        image = os.path.join(base, "image.png")
        demo_image().resize((640, 480)).save(image)
        info = prepare_checkpoints(checkpoints or base, presets, progress, make_config)
        quantized = info.pop("paths")
        result.update(info)
        for preset in presets:
            for method in methods:
                progress(f"tools/infer.py --model <{preset}> --method {method}")
                case = infer_case(quantized[preset], image, method, max_new_tokens, threads)
                case["weights"] = preset
                result["cases"].append(case)
                progress("  " + json.dumps(case))
            if "none" in methods and "gemm_bound" not in result:
                rows = next(c["prompt_tokens"] for c in result["cases"] if c["method"] == "none")
                progress(f"float32 GEMM-bound time of a {rows}-token prefill")
                result["gemm_bound"] = _gemm_case(quantized[preset], rows, threads)
                progress("  " + json.dumps(result["gemm_bound"]))
            if deploy and (deploy_presets is None or preset in deploy_presets):
                try:
                    _deploy_case(result, preset, quantized[preset], os.path.join(base, f"deploy-{preset}"),
                                 image, max_new_tokens, threads, progress)
                except RuntimeError as e:  # e.g. killed for memory: record it, measure the rest
                    result.setdefault("export", {})[preset] = {"error": str(e).strip().splitlines()[0][:300]}
                    progress(f"  deploy failed: {e}")
    finally:
        if keep:
            progress(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return result


def format_seven_b_table(result: dict) -> str:
    lines = ["| weights | method | run | visual tokens | vision s | prefill s | decode s/token | peak RSS GB |",
             "|---|---|---|---|---|---|---|---|"]
    for c in result["cases"]:
        per = "" if c["decode_s_per_token"] is None else f"{c['decode_s_per_token']:.2f}"
        run = "deployed" if c.get("deployed") else "dynamic"
        lines.append(f"| {c['weights']} | {c['method']} | {run} | {c['visual_tokens']} | {c['vision_s']:.1f} | "
                     f"{c['prefill_s']:.1f} | {per} | {c['peak_rss_gb']:.1f} |")
    by = {(c["weights"], c["method"]): c for c in result["cases"] if not c.get("deployed")}
    notes = []
    for w in dict.fromkeys(c["weights"] for c in result["cases"]):
        if (w, "none") in by and (w, "rc") in by:
            notes.append(f"{w}: rc prefill speed-up {by[(w, 'none')]['prefill_s'] / by[(w, 'rc')]['prefill_s']:.2f}x")
    bound = result.get("gemm_bound")
    if bound:
        notes.append(f"float32 GEMM-bound prefill of {bound['rows']} tokens: {bound['prefill_s']:.1f} s")
        for w in dict.fromkeys(c["weights"] for c in result["cases"]):
            if (w, "none") in by:
                notes.append(f"{w}: none prefill {by[(w, 'none')]['prefill_s'] / bound['prefill_s']:.2f}x "
                             "the GEMM-bound time")
    sizes = ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in result.get("quant_bytes", {}).items())
    if result.get("fp16_bytes"):
        sizes = f"float16 {result['fp16_bytes'] / 1e9:.2f} GB, " + sizes
    if result.get("reused"):
        sizes += f" ({', '.join(result['reused'])} prepared by an earlier run)"
    return "\n".join(lines + ["", f"checkpoints: {sizes}; "
                              f"kernel: {result['kernel']['kernel']}"] + notes
                     + [_export_line(k, v) for k, v in result.get("export", {}).items()])


def _export_line(preset: str, v: dict) -> str:
    if "error" in v:
        return f"{preset} export (rc): failed: {v['error']}"
    return (f"{preset} export (rc): weights {v['weight_bytes'] / 1e9:.2f} GB = {v['ratio']:.2f}x the checkpoint, "
            f"export peak RSS {v['export_peak_rss_gb']:.1f} GB")


def measure_decode_churn(layers: int = 2, long_prefill: int = 636, short_prefill: int = 106,
                         steps: int = 6, seed: int = 0, intermediate: int = 11008) -> list:
    """Why decode was slow (and rc's no faster than none's) on the pure-Paddle path: per decode
    token after a long (`none`) and a short (`rc`) prefill, wall time, minor page faults and system
    / user CPU time, for `layers` int8 LLaMA layers at 7B width, portable path vs the operator.
    Page faults count memory the process touches fresh: the portable path's float weight copies,
    unless malloc keeps freed memory (paddle_rc.runtime.keep_freed_memory; any MALLOC_* variable in
    the environment turns that off, e.g. MALLOC_TOP_PAD_=131072, glibc's default)."""
    import resource

    import paddle

    from paddle_rc.models.config import LlamaConfig
    from paddle_rc.models.llama import LlamaModel, positions_from_mask
    from paddle_rc.quant import QuantConfig, kernel, quantize_model
    from paddle_rc.runtime import settings

    paddle.seed(seed)
    model = LlamaModel(LlamaConfig(vocab_size=1000, num_hidden_layers=layers, intermediate_size=intermediate))
    model.eval()
    quantize_model(model, QuantConfig(weight_bits=8, skip=[]))
    rng = np.random.default_rng(seed)
    hidden = model.norm.weight.shape[0]

    def embeds(n):
        return paddle.to_tensor(rng.standard_normal((1, n, hidden)).astype(np.float32) * 0.02)

    def one(seq):
        mask = paddle.ones([1, seq], dtype="int64")
        with paddle.no_grad():
            _, k, v = model(embeds(seq), mask, positions_from_mask(mask))
            pos = paddle.full([1, 1], seq - 1, dtype="int64")
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            for _ in range(steps):
                mask = paddle.concat([mask, paddle.ones([1, 1], dtype="int64")], axis=1)
                pos = pos + 1
                h, k, v = model(embeds(1), mask, pos, k, v)
                h.numpy()
            t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        return {"ms_per_token": (t1 - t0) / steps * 1e3, "minor_faults_per_token": (r1.ru_minflt - r0.ru_minflt) / steps,
                "sys_ms_per_token": (r1.ru_stime - r0.ru_stime) / steps * 1e3,
                "user_ms_per_token": (r1.ru_utime - r0.ru_utime) / steps * 1e3}

    rows = []
    for path in ("portable", "operator"):
        for method, seq in (("none", long_prefill), ("rc", short_prefill)):
            if path == "portable":
                with kernel.disabled():
                    r = one(seq)
            else:
                r = one(seq)
            rows.append({"path": path, "after": method, "prefill_tokens": seq, "layers": layers,
                         "malloc_keeps_freed_memory": settings().get("malloc_keeps_freed_memory"), **r})
    return rows


def format_churn_table(rows: list) -> str:
    lines = ["| path | decode after | ms / token | minor page faults / token | system CPU ms / token | user CPU ms / token |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['path']} | {r['after']} ({r['prefill_tokens']} tokens) | {r['ms_per_token']:.0f} | "
                     f"{r['minor_faults_per_token']:.0f} | {r['sys_ms_per_token']:.0f} | {r['user_ms_per_token']:.0f} |")
    return "\n".join(lines)
