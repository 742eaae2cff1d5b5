"""Where a trained demo model loses the answer: at the position that predicts the reply, how much attention
each decoder layer's heads put on the asked objects' visual tokens, and how well a linear probe of that
position's hidden state after each layer tells the answer. Attention on the object with a state that does
not tell the answer means the values do not bring the object's attributes back; neither means the query
never found the object."""
from __future__ import annotations

import numpy as np


def ridge_probe_accuracy(x_train, y_train, x_test, y_test, ridge: float = 1.0) -> np.ndarray:
    """Per test row, whether a ridge-regression classifier on one-hot targets (fit on the train rows,
    features standardised with the train statistics) picks the right class."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    a, b = (x_train - mu) / sd, (x_test - mu) / sd
    a, b = np.hstack([a, np.ones((len(a), 1))]), np.hstack([b, np.ones((len(b), 1))])
    classes = sorted(set(y_train))
    y = np.array([[c == v for c in classes] for v in y_train], np.float64)
    w = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ y)
    pred = np.array(classes)[(b @ w).argmax(1)]
    return pred == np.asarray(y_test)


def reply_probe(model_dir: str, seed: int, n: int, batch: int = 16, train_share: float = 0.75) -> dict:
    """Run n items of generate(seed) through the model with all visual tokens, teacher-forced like stage 2.
    Returns per question type: the mean attention mass per decoder layer and head that the reply position
    puts on the asked objects' tokens (questions with a target object only), and the held-out accuracy of a
    linear probe of its state after each layer (fit on the first train_share of the items, all types
    together, tested on the rest)."""
    import paddle

    from paddle_rc.models import LlavaForConditionalGeneration
    from paddle_rc.models.llava import VisualTokens
    from paddle_rc.pipeline import Tokenizers
    from paddle_rc.synth import generate
    from paddle_rc.train import batches as bt
    from paddle_rc.train.losses import query_rows

    model = LlavaForConditionalGeneration.from_pretrained(model_dir)
    model.eval()
    tok = Tokenizers(model_dir).llm
    cfg, lm = model.config, model.language_model
    from paddle_rc.data.image import ImageProcessor

    processor = ImageProcessor.from_config(cfg)
    grid = cfg.vision.image_size // cfg.vision.patch_size
    items = generate(seed, n)
    states, mass = [[] for _ in range(len(lm.layers) + 1)], []
    rng = np.random.default_rng(seed)
    with paddle.no_grad():
        for s in range(0, n, batch):
            chunk = items[s:s + batch]
            b = len(chunk)
            ids, mask, alen = bt.answer_sequences(chunk, tok, cfg.conv_mode, cfg.image_token_index, rng)
            labels = bt.patch_labels(chunk, cfg.vision.image_size, cfg.vision.patch_size)
            target = bt.visual_targets(chunk, labels, ids, mask, cfg.image_token_index)
            F = model.vision_tower(paddle.to_tensor(processor([it.image for it in chunk])), cfg.vision_feature_layer).F
            visual = VisualTokens(model.projector(F), np.full([b], grid * grid, np.int64), grid * grid)
            x, attn, pos = model.splice(paddle.to_tensor(ids), paddle.to_tensor(mask), visual)
            length = x.shape[1]
            cos, sin = lm._rope(pos, x.dtype)
            bias = lm.attention_bias(attn, length, x.dtype)
            query = length - 1 - alen
            rows = np.arange(b)
            states[0].append(x.numpy()[rows, query])
            per_layer = []
            heads = [-1, lm.config.num_attention_heads, -1, -1]
            for i, layer in enumerate(lm.layers):
                layer.self_attn.keep_probs = True
                try:
                    x, _, _ = layer(x, cos.expand(heads), sin.expand(heads), bias.expand(heads))
                    p = query_rows(layer.self_attn.probs, paddle.to_tensor(query)).numpy()  # [B,H,L]
                finally:
                    layer.self_attn.keep_probs, layer.self_attn.probs = False, None
                per_layer.append((p * target[:, None, :]).sum(-1))
                states[i + 1].append(x.numpy()[rows, query])
            mass.append(np.stack(per_layer, 1))  # [B, layers, H]
    mass = np.concatenate(mass)
    qtype = np.array([it.qtype for it in items])
    answer = np.array([it.answer for it in items])
    has_target = np.array([bool(it.target) for it in items])
    cut = int(n * train_share)
    right = [ridge_probe_accuracy(np.concatenate(st)[:cut], answer[:cut], np.concatenate(st)[cut:], answer[cut:])
             for st in states]
    out = {}
    for t in sorted(set(qtype)):
        sel, test = (qtype == t) & has_target, qtype[cut:] == t
        out[t] = {"questions": int((qtype == t).sum()),
                  "target_mass": np.round(mass[sel].mean(0), 3).tolist() if sel.any() else None,
                  "probe_after_layer": [round(100.0 * float(r[test].mean()), 1) if test.any() else None
                                        for r in right]}
    return {"model": model_dir, "seed": seed, "items": n, "by_type": out}
