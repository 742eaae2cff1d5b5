# ms per 4096x11008 weight-only matmul at prefill row counts, NW distinct weights cycled from memory, against
# Paddle's float32 matmul on NW distinct float weights; tiles as PANELxKBLOCK. Usage:
# ROWS=130,636 NW=8 python docs/results/wo-prefill-micro.py 512x128 64x1024
import os, sys, time
import paddle_rc.runtime  # noqa
import numpy as np, paddle
from paddle_rc.quant import functional as qf
from paddle_rc.quant.kernel import op
f = op(); assert f
K, N = 4096, 11008
nw = int(os.environ.get("NW", 6))
rows_list = [int(r) for r in os.environ.get("ROWS", "636,127").split(",")]
rng = np.random.default_rng(0)
w = rng.standard_normal((K, N)).astype("float32") * 0.02
tiles = sys.argv[1:] or ["512x128"]
wf = [paddle.to_tensor(w + i * 1e-3) for i in range(nw)]
qd = {}
for bits, group in ((8, -1), (4, 128)):
    q, s = qf.quantize_weight(w, bits=bits, group_size=group)
    qd[bits] = ([paddle.to_tensor(q.copy()) for _ in range(nw)], paddle.to_tensor(s), group)
def timeit(fn, reps=2, rounds=3):
    fn()
    best = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(reps): fn()
        best.append((time.perf_counter() - t) / (reps * nw) * 1e3)
    return min(best)
for rows in rows_list:
    x = paddle.to_tensor(rng.standard_normal((rows, K)).astype("float32"))
    for rnd in range(2):
        line = [f"rows {rows}"]
        line.append(f"fp32 {timeit(lambda: [paddle.matmul(x, ww) for ww in wf]):.1f}")
        for t in tiles:
            p, kb = t.split("x")
            os.environ["PADDLE_RC_WO_PANEL"], os.environ["PADDLE_RC_WO_KBLOCK"] = p, kb
            for bits in (8, 4):
                qs, s, g = qd[bits]
                line.append(f"int{bits}[{t}] {timeit(lambda: [f(x, qq, s, bits, g) for qq in qs]):.1f}")
        print("  ".join(line), flush=True)
