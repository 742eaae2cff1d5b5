"""Diagnose a training run's stage-2 state (the figures of README's count_uniform / binding bullets):
    python docs/results/diag-training-state.py RUN_DIR [BATCHES]
RUN_DIR is a `tools/train_demo.py --out` folder while its `.train_state` holds weights (the run not yet
finished). On fresh batches of the training stream (steps no run reaches), for count questions: how evenly the
reply position spreads its attention over the visual tokens (entropy / log n, and the mass there), whether the
image-mean projected token tells each shape's count (ridge probe), and whether the reply state after each
layer tells the count; for spatial questions: the layer-0 question reading per head group, the mass on the
first-named (A) and the second (B) object per head, a ridge probe of "A left of B" on the reply state, and the
same order read from the coord head's mean over each object's tokens (an upper bound on what the tokens tell)."""
import json
import sys

import numpy as np
import paddle

import paddle_rc.runtime  # noqa: F401  (threads, MKL, before Paddle computes)
from paddle_rc.models.llava import VisualTokens
from paddle_rc.train import batches as bt
from paddle_rc.train.losses import query_rows
from paddle_rc.train.probe import ridge_probe_accuracy
from paddle_rc.train.recipe import Recipe
from paddle_rc.train.trainer import DemoTrainer

out, n_batches = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 60
state = json.load(open(out + "/.train_state/progress.json"))
t = DemoTrainer(out, Recipe.from_dict(state["recipe"]), show_progress=False)
t._setup()
m, lm = t.model, t.model.language_model
layers = len(lm.layers)
img_mean, hist, qtype, count = [], [], [], []
reply = [[] for _ in range(layers)]
even, on_vis, mass_a, mass_b, reading = ([[] for _ in range(layers)] for _ in range(5))
left, from_coord = [], []
with paddle.no_grad():
    for s in range(n_batches):
        step = 900_000 + s
        d = t._llm_data(step)
        items = bt.draw_items(t.recipe.seed, "llm", step, t.recipe.stage2_batch)
        labels = bt.patch_labels(items, t.recipe.image_size, t.recipe.patch_size)
        F = m.vision_tower(paddle.to_tensor(d["pixels"]), m.config.vision_feature_layer).F
        n = F.shape[1]
        tokens = m.projector(F)
        img_mean.append(tokens.mean(1).numpy())
        hist.append(np.stack([np.bincount(c, minlength=6)[1:] for c in labels.census]))
        coord = t.late_heads["coord"](tokens).numpy() if "coord" in t.late_heads else None
        ids, mask, alen = d["ids"], d["mask"], d["alen"]
        x, attn, pos = m.splice(paddle.to_tensor(ids), paddle.to_tensor(mask),
                                VisualTokens(tokens, np.full([len(ids)], n, np.int64), n))
        length = x.shape[1]
        cos, sin = lm._rope(pos, x.dtype)
        bias = lm.attention_bias(attn, length, x.dtype)
        hh = [-1, lm.config.num_attention_heads, -1, -1]
        cos, sin, bias = cos.expand(hh), sin.expand(hh), bias.expand(hh)
        query = paddle.to_tensor(length - 1 - alen)
        rows = paddle.arange(len(ids))
        apart = bt.grounding_targets(items, labels, ids, mask, m.config.image_token_index, groups=2).target
        _, _, start = bt._spliced_starts(ids, mask, n, m.config.image_token_index)
        for i, layer in enumerate(lm.layers):
            layer.self_attn.keep_probs = True
            x, _, _ = layer(x, cos, sin, bias)
            p = query_rows(layer.self_attn.probs, query).numpy()  # [B, H, L]
            layer.self_attn.keep_probs, layer.self_attn.probs = False, None
            state_i = paddle.gather_nd(x, paddle.stack([rows, query], axis=1)).numpy()
            for b, it in enumerate(items):
                reply[i].append(state_i[b])
                if it.qtype == "count":
                    pv = p[b][:, start[b]:start[b] + n]
                    on_vis[i].append(pv.sum(-1))
                    q = pv / pv.sum(-1, keepdims=True)
                    even[i].append(-(q * np.log(q + 1e-12)).sum(-1) / np.log(n))
                if it.qtype == "spatial":
                    mass_a[i].append((p[b] * apart[b, 0]).sum(-1))
                    mass_b[i].append((p[b] * apart[b, 1]).sum(-1))
                    if i == 0:
                        reading[0].append([(p[b] * d["asked_at"][b, g]).sum(-1) for g in range(d["asked_at"].shape[1])])
        for b, it in enumerate(items):
            qtype.append(it.qtype)
            count.append(len(it.target) if it.qtype == "count" else -1)
            if it.qtype == "spatial":
                (ax0, _, ax1, _), (bx0, _, bx1, _) = (it.objects[j].bbox for j in it.target)
                left.append(int(ax0 + ax1 < bx0 + bx1))
                if coord is not None:
                    ca, cb = (coord[b][labels.owner[b] == j].mean(0) for j in it.target)
                    from_coord.append(int(ca[0] < cb[0]) == left[-1])

qtype = np.array(qtype)
img_mean, hist = np.concatenate(img_mean), np.concatenate(hist)
cut = len(hist) * 7 // 10
print("census: each shape's count from the image-mean token (ridge probe, held-out 30%):",
      [round(float(ridge_probe_accuracy(img_mean[:cut], hist[:cut, j], img_mean[cut:], hist[cut:, j]).mean()), 3)
       for j in range(hist.shape[1])])
sel = qtype == "count"
y = np.array(count)[sel]
k = len(y) * 7 // 10
print(f"count questions: {len(y)} (majority answer rate in the test part {max(np.mean(y[k:] == c) for c in set(y)):.3f})")
for i in range(layers):
    r = np.stack(reply[i])[sel]
    print(f"  layer {i}: mass on the visual tokens per head {np.round(np.mean(on_vis[i], 0), 3)}, evenness "
          f"{np.round(np.mean(even[i], 0), 3)}, reply-state count probe {ridge_probe_accuracy(r[:k], y[:k], r[k:], y[k:]).mean():.3f}")
sel = qtype == "spatial"
y = np.array(left)
k = len(y) * 7 // 10
print(f"spatial questions: {len(y)}; A left of B from the coord head's object means: "
      f"{np.mean(from_coord) if from_coord else float('nan'):.3f}")
print("  layer 0 question reading, mass per head on group 0's / group 1's words:",
      np.round(np.mean(reading[0], 0), 3).tolist())
for i in range(layers):
    r = np.stack(reply[i])[sel]
    print(f"  layer {i}: mass on A per head {np.round(np.mean(mass_a[i], 0), 3)}, on B {np.round(np.mean(mass_b[i], 0), 3)}, "
          f"reply-state probe of A left of B {ridge_probe_accuracy(r[:k], y[:k], r[k:], y[k:]).mean():.3f}")
