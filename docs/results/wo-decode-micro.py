# ms per 4096x11008 weight-only matmul of one row (decode), 16 weights cycled from memory (beyond the 32 MB L3);
# best of 5 rounds of 3 passes. Usage: NW=16 OMP_NUM_THREADS=2 python docs/results/wo-decode-micro.py
import os, sys, time
import paddle_rc.runtime  # noqa: thread / MKL settings
import numpy as np, paddle
from paddle_rc.quant import functional as qf
from paddle_rc.quant.kernel import op
f = op(); assert f
K, N = 4096, 11008
nw = int(os.environ.get("NW", 16))
rng = np.random.default_rng(0)
w = rng.standard_normal((K, N)).astype("float32") * 0.02
res = {}
for bits, group in ((8, -1), (4, 128)):
    q, s = qf.quantize_weight(w, bits=bits, group_size=group)
    s = paddle.to_tensor(s)
    qs = [paddle.to_tensor(q.copy()) for _ in range(nw)]
    x = paddle.to_tensor(rng.standard_normal((1, K)).astype("float32"))
    for rows in (1,):
        for _ in range(2):
            for qq in qs: f(x, qq, s, bits, group)
        best = []
        for _ in range(5):
            t = time.perf_counter(); reps = 3
            for _ in range(reps):
                for qq in qs: f(x, qq, s, bits, group)
            best.append((time.perf_counter() - t) / (reps * nw) * 1e3)
        ms = min(best)
        print(f"int{bits} g{group} rows {rows}: {ms:.2f} ms/weight -> 7B LLM linears {ms * 32 * (4*4096*4096 + 3*4096*11008) / (K*N) / 1e3:.3f} s/token", flush=True)
