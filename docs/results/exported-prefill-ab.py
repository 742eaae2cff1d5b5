# The exported LLM program's prefill (2 layers at 7B widths, 636 tokens) against the dynamic model, in one
# process, best of 5 per line, two rounds: the program alone, through runner.run_step (cache buffer), and
# with an empty past instead of the masked slot. Usage: python docs/results/exported-prefill-ab.py
# Zen 4 EPYC, 2026-12-05 (ms): dynamic 2642 / 2645; graph only 2677 / 2638; run_step 2680 / 2634;
# empty past 2678 / 2597 -- parity within the ~1.5% between rounds.
import time, tempfile
import paddle_rc.runtime as rt; rt.configure()
import numpy as np, paddle
from paddle_rc.benchmark.versus import _llava
from paddle_rc.models.llama import positions_from_mask
from paddle_rc.export import exporter
from paddle_rc.export.runner import Graph, RunnerOptions, run_step
model = _llava(None, None, dict(vocab=32000, hidden=4096, intermediate=11008, layers=2, heads=32))
rng = np.random.default_rng(0)
x = paddle.to_tensor(rng.standard_normal((1, 636, 4096)).astype(np.float32) * 0.02)
mask = paddle.ones([1, 636], dtype="int64"); pos = positions_from_mask(mask)
out = tempfile.mkdtemp()
exporter.export_llm(model, out)
g = Graph(out, "llm", {"inputs": exporter._spec_json(exporter._llm_inputs(model.config)), "outputs": exporter.output_names("none")["llm"]}, RunnerOptions())
lc = model.config.llm
slot = paddle.zeros([2, 1, 32, 1, 128]); slot_mask = paddle.concat([paddle.zeros([1, 1], "int64"), mask], axis=1)
def t(f, n=5):
    f(); best = 1e9
    for _ in range(n):
        a = time.perf_counter(); f(); best = min(best, time.perf_counter() - a)
    return best * 1e3
with paddle.no_grad():
    for _ in range(2):
        print("dynamic prefill", t(lambda: model.prefill(x, mask, pos)[0].numpy()))
        print("graph only", t(lambda: g(x, slot_mask, pos, slot, slot)[0].numpy()))
        print("run_step", t(lambda: run_step(g, x, slot_mask, pos, slot, slot)[0].numpy()))
        print("graph, empty past", t(lambda: g(x, mask, pos, paddle.zeros([2,1,32,0,128]), paddle.zeros([2,1,32,0,128]))[0].numpy()))
