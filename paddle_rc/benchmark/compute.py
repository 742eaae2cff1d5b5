"""The paper-style compute table: none vs rc x weight precision, analytic (7B) and measured (CPU).

Analytic columns come from paddle_rc.benchmark.flops for the full model (LLaVA-1.5-7B by default):
prefill TFLOPs, KV cache, prefill activations, weights and their total. Weight-only quantization
leaves FLOPs, KV cache and activations unchanged (the matmuls run in the float compute dtype) and
shrinks only the weights.

The measured column is the prefill time of an N-layer LLaMA at the model's layer widths with random
weights (time depends on shapes, not values): N decoder layers + final norm + LM head on the last
position, fed ``visual + text`` embeddings. The full 32 layers do not fit in memory in float32
next to their quantized copies, and the speed-up none/rc is a ratio of per-layer costs, which the
layer count leaves unchanged (the LM head on one position is ~0.03% of a layer). Cases are
interleaved within each repeat, so drift in machine load hits all of them alike; medians are
reported.

On CPU, WeightOnlyLinear dequantizes its weight inside forward and then runs a float32 matmul, so
int8/int4 prefill is *slower* than float32 here: a fixed per-layer dequantization cost is added
that does not shrink with the token count, which also lowers the measured none/rc speed-up at
those precisions. Fused weight-only GPU kernels are where the precision saves time; this table
reports what this machine does.
"""
from __future__ import annotations


import os
import statistics
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from paddle_rc.benchmark.flops import (LLAVA_7B, PAPER_TEXT_TOKENS, fastv_prefill_flops, memory_bytes,
                                       prefill_flops)
from paddle_rc.models.config import LlamaConfig

SWEEP_VISUAL_TOKENS = (576, 432, 288, 192, 128, 64, 32)
BITS_LABEL = {32: "fp32", 16: "fp16", 8: "int8", 4: "int4"}
# Bytes of one float32 decoder layer at 7B widths: (4*4096^2 + 3*4096*11008) * 4 ~ 0.81 GB.
DEFAULT_LAYERS = 4


@dataclass
class ComputeSettings:
    llm: LlamaConfig = field(default_factory=lambda: LLAVA_7B)   # analytic model
    layers: int = DEFAULT_LAYERS          # measured model: llm's widths, this many layers
    visual_tokens: tuple = (576, 58)      # none, rc
    fastv_kept: int = 58                  # FastV row: visual tokens kept after its layer (0: no row)
    fastv_layer: int = 2                  # FastV's K: layers that see every visual token
    text_tokens: int = PAPER_TEXT_TOKENS
    bits: tuple = (32, 8, 4)
    act_bits: int | None = None           # KV / activations / unquantized weights; None: widest float in bits
    group_size: int = -1                  # int4/int8 scales: -1 per channel, or 64/128 groups
    repeats: int = 3
    sweep: tuple = SWEEP_VISUAL_TOKENS
    sweep_bits: tuple = (32,)
    measure: bool = True
    seed: int = 0

    def float_bits(self) -> int:
        if self.act_bits:
            return int(self.act_bits)
        floats = [b for b in self.bits if b in (32, 16)]
        return max(floats) if floats else 32


def analytic_row(s: ComputeSettings, visual_tokens: int, bits: int, fastv_from: int | None = None) -> dict:
    """FLOPs and memory (bytes) of the full model in s.llm for one (tokens, weight bits) cell.

    fastv_from: FastV from this many visual tokens down to `visual_tokens` after s.fastv_layer
    layers: those layers run (and cache) the full sequence, the rest the pruned one; the prefill's
    activation peak is that of the full-length layers."""
    fb = s.float_bits()
    seq = visual_tokens + s.text_tokens
    wb = 16 if bits == 32 else bits
    mem = memory_bytes(s.llm, seq, weight_bits=wb, kv_bits=fb, act_bits=fb, float_bits=fb,
                       group_size=s.group_size if bits in (8, 4) else -1)
    if fastv_from is None:
        fl = prefill_flops(s.llm, visual_tokens, s.text_tokens)
    else:
        fl = fastv_prefill_flops(s.llm, fastv_from, visual_tokens, s.fastv_layer, s.text_tokens)
        full = memory_bytes(s.llm, fastv_from + s.text_tokens, weight_bits=wb, kv_bits=fb, act_bits=fb,
                            float_bits=fb, group_size=s.group_size if bits in (8, 4) else -1)
        share = s.fastv_layer / s.llm.num_hidden_layers
        mem = dict(mem, kv_cache=share * full["kv_cache"] + (1 - share) * mem["kv_cache"],
                   activations=full["activations"])
    weights = mem["weights"]
    if bits == 32:
        # memory_bytes knows 16/8/4-bit Linear weights; float32 ones are the 16-bit bytes twice.
        weights += mem["weights_linear"]
    return {"tflops": fl["total"] / 1e12, "seq_len": seq, "weights_bytes": weights,
            "kv_cache_bytes": mem["kv_cache"], "activation_bytes": mem["activations"],
            "total_bytes": weights + mem["kv_cache"] + mem["activations"]}


# ------------------------------------------------------------------------------------ measurement

class _Prefill:
    """Random-weight LLaMA slice at the analytic model's widths, in each requested precision."""

    def __init__(self, s: ComputeSettings, bits_needed):
        import paddle

        from paddle_rc.models.llama import LlamaModel
        from paddle_rc.quant import QuantConfig, quantize_model

        m = s.llm
        # vocab 16: forward never reads embed_tokens (it is fed embeddings), so keep it tiny.
        cfg = replace(m, vocab_size=16, num_hidden_layers=s.layers, max_position_embeddings=4096)
        self.models = {}
        for bits in sorted(set(bits_needed), reverse=True):
            # Same seed for every precision: the quantized models are quantized copies of the float one.
            paddle.seed(s.seed)
            model = LlamaModel(cfg)
            model.eval()
            if bits in (8, 4):
                g = s.group_size
                quantize_model(model, QuantConfig(
                    weight_bits=bits, group_size=g,
                    weight_quantize_type="channel_wise_abs_max" if g == -1 else "group_wise_abs_max"))
            elif bits == 16:
                # No CPU float16 matmul worth timing; a float16 case is the float32 model.
                pass
            self.models[bits] = model
        paddle.seed(s.seed + 1)
        # The LM head is skipped by quantization, so one float32 head serves every precision.
        self.lm_head = paddle.nn.Linear(m.hidden_size, m.vocab_size, bias_attr=False)
        self.hidden = m.hidden_size
        self.rng = np.random.default_rng(s.seed)
        self._inputs = {}

    def inputs(self, seq_len: int):
        import paddle

        if seq_len not in self._inputs:
            x = self.rng.standard_normal((1, seq_len, self.hidden)).astype("float32") * 0.02
            mask = np.ones((1, seq_len), np.int64)
            self._inputs[seq_len] = (paddle.to_tensor(x), paddle.to_tensor(mask),
                                     paddle.to_tensor(np.arange(seq_len, dtype=np.int64)[None]))
        return self._inputs[seq_len]

    def run(self, bits: int, seq_len: int, fastv=None) -> float:
        """Timed prefill; fastv = (visual tokens, kept, layer) prunes inside the slice (the visual
        block sits after the first text tokens, as LLaVA's system prompt precedes the image)."""
        import paddle

        x, mask, pos = self.inputs(seq_len)
        with paddle.no_grad():
            t0 = time.perf_counter()
            if fastv is None:
                hidden, k, v = self.models[bits](x, mask, pos)
            else:
                from paddle_rc.compression.methods.fastv import FASTV_DEFAULTS, fastv_keep
                from paddle_rc.models.llm_pruning import pruned_prefill

                n, kept, layer = fastv
                start = min(35, seq_len - n)
                visual = paddle.zeros([1, seq_len], dtype="bool")
                visual[:, start:start + n] = True
                hidden, k, _, _, v, _, _ = pruned_prefill(
                    self.models[bits], x, mask, pos,
                    lambda sc: fastv_keep(sc, visual, n, kept, FASTV_DEFAULTS), layer)
            logits = self.lm_head(hidden[:, -1, :])
            # .numpy() waits for the result (and for the KV cache, which prefill must produce).
            logits.numpy()
            k.numpy()
            return time.perf_counter() - t0


def _measure(cases, runner: _Prefill, repeats: int, progress=None) -> dict:
    """cases: list of (bits, seq_len, fastv or None). -> {case: [seconds, ...]}.

    One untimed warm-up per precision, at its shortest length: first calls pay for kernel
    selection and allocator growth, and the shortest length is the cheapest way to pay it."""
    times = {c: [] for c in cases}
    for bits in dict.fromkeys(c[0] for c in cases):
        runner.run(bits, min(c[1] for c in cases if c[0] == bits))
    for r in range(repeats):
        # Rotate the order too, so no case always runs right after the same neighbour.
        order = cases[r % len(cases):] + cases[:r % len(cases)]
        for c in order:
            times[c].append(runner.run(*c))
            if progress:
                progress(f"repeat {r + 1}/{repeats}: {BITS_LABEL[c[0]]}, {c[1]} tokens"
                         f"{'' if c[2] is None else ', fastv'}: {times[c][-1]:.2f}s")
    return times


def run_compute_benchmark(s: ComputeSettings, progress=None) -> dict:
    """-> {"settings", "rows" (the table), "sweep" (for the plot)}."""
    none_vt, rc_vt = int(s.visual_tokens[0]), int(s.visual_tokens[1])
    methods = [("none", none_vt, None), ("rc", rc_vt, None)]
    # The measured slice has s.layers layers; FastV prunes after min(K, layers - 1) of them.
    slice_layer = min(s.fastv_layer, s.layers - 1)
    if s.fastv_kept:
        kept = min(int(s.fastv_kept), none_vt)
        methods.append(("fastv", kept, (none_vt, kept, slice_layer)))
    rows = []
    for method, vt, fastv in methods:
        for bits in s.bits:
            row = {"method": method, "visual_tokens": vt, "text_tokens": s.text_tokens,
                   "precision": BITS_LABEL[bits], "bits": bits, "fastv": fastv}
            row.update(analytic_row(s, vt, bits, fastv_from=None if fastv is None else none_vt))
            rows.append(row)

    sweep = [{"visual_tokens": vt, "tflops": prefill_flops(s.llm, vt, s.text_tokens)["total"] / 1e12}
             for vt in s.sweep]
    if s.measure:
        runner = _Prefill(s, list(s.bits) + list(s.sweep_bits))
        cases = [(b, (none_vt if fastv else vt) + s.text_tokens, fastv) for _, vt, fastv in methods
                 for b in s.bits]
        cases += [(b, vt + s.text_tokens, None) for vt in s.sweep for b in s.sweep_bits
                  if (b, vt + s.text_tokens, None) not in cases]
        load_before = os.getloadavg()
        times = _measure(cases, runner, s.repeats, progress)
        med = {c: statistics.median(t) for c, t in times.items()}
        for row in rows:
            seq = (none_vt if row["fastv"] else row["visual_tokens"]) + s.text_tokens
            c = (row["bits"], seq, row["fastv"])
            row["prefill_s"] = med[c]
            row["prefill_s_all"] = times[c]
        for row in rows:
            base = next(r for r in rows if r["method"] == "none" and r["bits"] == row["bits"])
            fp = next((r for r in rows if r["method"] == row["method"] and r["bits"] in (32, 16)), None)
            row["speedup_vs_none"] = base["prefill_s"] / row["prefill_s"]
            row["time_vs_float"] = row["prefill_s"] / fp["prefill_s"] if fp else None
        for point in sweep:
            point["prefill_s"] = {BITS_LABEL[b]: med[(b, point["visual_tokens"] + s.text_tokens, None)]
                                  for b in s.sweep_bits}
    for row in rows:
        base = next(r for r in rows if r["method"] == "none" and r["bits"] == row["bits"])
        row["flops_ratio_vs_none"] = base["tflops"] / row["tflops"]
    settings = {"analytic_model": asdict(s.llm),
                "measured_layers": s.layers, "visual_tokens": [none_vt, rc_vt],
                "fastv": {"kept": s.fastv_kept, "layer": s.fastv_layer, "measured_layer": slice_layer},
                "text_tokens": s.text_tokens, "bits": list(s.bits), "float_bits": s.float_bits(),
                "group_size": s.group_size, "repeats": s.repeats, "sweep": list(s.sweep),
                "sweep_bits": list(s.sweep_bits), "measured": s.measure,
                "cpu_count": os.cpu_count()}
    if s.measure:
        # Other processes on the machine skew absolute times; the load average says how much.
        settings["load_average_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    return {"settings": settings, "rows": rows, "sweep": sweep}


# ----------------------------------------------------------------------------------------- output

def format_compute_table(result: dict) -> str:
    st = result["settings"]
    gb = 1e9
    head = ("| method | visual tokens | weights | TFLOPs | KV cache GB | activations GB | weights GB "
            "| total GB |")
    measured = st["measured"]
    if measured:
        head += f" prefill s ({st['measured_layers']} layers) | speed-up vs none | vs float |"
    cols = head.count("|") - 1
    lines = [head, "|" + "---|" * cols]
    for r in result["rows"]:
        line = (f"| {r['method']} | {r['visual_tokens']} | {r['precision']} | {r['tflops']:.2f} | "
                f"{r['kv_cache_bytes'] / gb:.3f} | {r['activation_bytes'] / gb:.3f} | "
                f"{r['weights_bytes'] / gb:.2f} | {r['total_bytes'] / gb:.2f} |")
        if measured:
            vf = f"{r['time_vs_float']:.2f}x" if r.get("time_vs_float") else "-"
            line += f" {r['prefill_s']:.2f} | {r['speedup_vs_none']:.2f}x | {vf} |"
        lines.append(line)
    m = st["analytic_model"]
    notes = [f"analytic: hidden {m['hidden_size']}, intermediate {m['intermediate_size']}, "
             f"{m['num_hidden_layers']} layers, {m['num_attention_heads']} heads, vocab {m['vocab_size']}; "
             f"+ {st['text_tokens']} text tokens; "
             f"KV/activations/unquantized weights at {st['float_bits']} bits; "
             f"scales: {'per channel' if st['group_size'] == -1 else 'group ' + str(st['group_size'])}"]
    fv = st.get("fastv") or {}
    if fv.get("kept"):
        note = (f"fastv: {st['visual_tokens'][0]} visual tokens in the first {fv['layer']} layers, "
                f"{fv['kept']} after them (FLOPs, KV cache)")
        if measured:
            note += f"; measured: pruning after {fv['measured_layer']} of the {st['measured_layers']} measured layers"
        notes.append(note)
    if measured:
        la = st.get("load_average_before_after", ["?", "?"])
        notes.append(f"measured: {st['measured_layers']} layers at those widths, random weights, this CPU "
                     f"({st['cpu_count']} cores, 1-min load average {la[0]} -> {la[1]}), "
                     f"median of {st['repeats']} interleaved repeats; int8/int4 dequantize in the layer "
                     "(float32 matmul), so they are slower than float here")
    return "\n".join(lines + [""] + notes)


def plot_compute(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = result["sweep"]
    st = result["settings"]
    vt = [p["visual_tokens"] for p in sweep]
    tf = [p["tflops"] for p in sweep]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    ax = axes[0]
    ax.plot(vt, tf, "o-", color="tab:blue", label="analytic TFLOPs (7B)")
    ax.set_xlabel("visual tokens")
    ax.set_ylabel("prefill TFLOPs (analytic, full model)", color="tab:blue")
    ax.set_ylim(0, max(tf) * 1.08)
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    handles = ax.get_lines()
    if st["measured"]:
        ax2 = ax.twinx()
        for i, label in enumerate(sweep[0]["prefill_s"]):
            ax2.plot(vt, [p["prefill_s"][label] for p in sweep], "s--", color=f"C{i + 1}",
                     label=f"measured prefill s, {label} ({st['measured_layers']} layers, CPU)")
        ax2.set_ylabel("measured prefill seconds")
        # Both axes from zero, so the two curves' slopes compare proportionally.
        ax2.set_ylim(bottom=0)
        handles = handles + ax2.get_lines()
        text = [f"none/rc at {r['visual_tokens']} tokens, {r['precision']}: "
                f"{r['speedup_vs_none']:.2f}x measured, {r['flops_ratio_vs_none']:.2f}x FLOPs"
                for r in result["rows"] if r["method"] != "none"]
        ax.text(0.02, 0.02, "\n".join(text), transform=ax.transAxes, fontsize=7, va="bottom",
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.7"})
    ax.legend(handles=handles, labels=[h.get_label() for h in handles], loc="upper right", fontsize=8)
    ax.set_title(f"Prefill cost vs visual tokens (+{st['text_tokens']} text)")

    ax = axes[1]
    ax.plot(vt, [t / tf[0] for t in tf], "o-", color="tab:blue", label="analytic FLOPs")
    if st["measured"]:
        for i, label in enumerate(sweep[0]["prefill_s"]):
            s = [p["prefill_s"][label] for p in sweep]
            ax.plot(vt, [x / s[0] for x in s], "s--", color=f"C{i + 1}", label=f"measured time, {label}")
    ax.set_xlabel("visual tokens")
    ax.set_ylabel(f"relative to {vt[0]} visual tokens")
    ax.invert_xaxis()
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Normalised to {vt[0]} visual tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
