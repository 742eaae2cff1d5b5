"""The demo model's training losses, as pure tensor functions."""
from __future__ import annotations

import paddle
import paddle.nn.functional as F


def soft_cross_entropy(logits, target):
    """Mean over rows of -sum(target * log_softmax(logits)); rows of target sum to 1."""
    return -(target * F.log_softmax(logits, axis=-1)).sum(axis=-1).mean()


def soft_label_loss(logits, target):
    """soft_cross_entropy over the rows of target [B,C] that carry a label (all-zero rows are left out)."""
    rows = paddle.nonzero(target.sum(axis=1) > 0).flatten()
    if rows.shape[0] == 0:
        return paddle.zeros([])
    return soft_cross_entropy(paddle.gather(logits, rows), paddle.gather(target, rows))


def contrastive_loss(image_emb, text_emb, scale, same):
    """CLIP's symmetric InfoNCE. `same` [B,B] marks pairs whose captions are identical: with a small
    vocabulary two scenes can share a caption, and such a pair is a positive, not a negative."""
    img = F.normalize(image_emb, axis=-1)
    txt = F.normalize(text_emb, axis=-1)
    logits = scale * paddle.matmul(img, txt, transpose_y=True)
    target = same / same.sum(axis=1, keepdim=True)
    return 0.5 * (soft_cross_entropy(logits, target) + soft_cross_entropy(logits.T, target.T))


def patch_text_loss(patch_emb, text_emb, image_of, target, scale, phrase_target=None, owned=None):
    """Patch-level alignment between the projected last-layer patches (RC's P) and text embeddings.

    text -> patch: each text's softmax over its own image's patches should land on its target
    patches (target [T,N], rows sum to 1): the question's embedding must find the object it names,
    which is exactly what RC's text recovery asks of P and t.
    patch -> text (when phrase_target [B*N,T] is given): each owned patch's softmax over the batch's
    phrases should pick its object's phrase (and its identical copies), so that similarity encodes
    which object, not only that there is one. `owned` [B*N] bool selects the patches."""
    p = F.normalize(patch_emb, axis=-1)  # [B,N,D]
    t = F.normalize(text_emb, axis=-1)  # [T,D]
    own = paddle.gather(p, image_of)  # [T,N,D]
    logits = scale * (own * t.unsqueeze(1)).sum(axis=-1)  # [T,N]
    loss = soft_cross_entropy(logits, target)
    if phrase_target is not None:
        flat = p.reshape([-1, p.shape[-1]])
        sel = paddle.masked_select(paddle.arange(flat.shape[0]), owned)
        pl = scale * paddle.matmul(paddle.gather(flat, sel), t, transpose_y=True)  # [P,T]
        loss = loss + soft_cross_entropy(pl, paddle.gather(phrase_target, sel))
    return loss


def patch_label_loss(logits: dict, labels: dict, weight):
    """Sum over attribute heads of the per-patch cross-entropy, weighted per patch (weight [B,N])."""
    w = weight.reshape([-1])
    total = 0.0
    for name, lg in logits.items():
        ce = F.cross_entropy(lg.reshape([-1, lg.shape[-1]]), labels[name].reshape([-1, 1]), reduction="none")
        total = total + (ce.reshape([-1]) * w).sum() / w.sum()
    return total


def answer_loss(logits, tail_ids, answer_len):
    """Cross-entropy on the reply tokens only. Rows are left-padded, so each row's reply is its last
    answer_len tokens. logits [B,A,V] are the predictions at the A positions before the last
    token, tail_ids [B,A] the last A tokens; column k counts when k >= A - answer_len."""
    width = tail_ids.shape[1]
    weight = (paddle.arange(width).unsqueeze(0) >= (width - answer_len).unsqueeze(1)).astype("float32")
    nll = F.cross_entropy(logits, tail_ids.unsqueeze(-1), reduction="none").squeeze(-1)
    return (nll * weight).sum() / weight.sum()


def query_rows(probs, query):
    """probs [B,H,L,L] (a layer's attention) -> [B,H,L]: each row's attention from position query[b]."""
    at = query.reshape([-1, 1, 1, 1]).expand([-1, probs.shape[1], 1, probs.shape[3]])
    return paddle.take_along_axis(probs, at, axis=2).squeeze(2)


def attention_target_loss(probs, target):
    """Grounding: -log of the attention mass that one query position per row puts on the tokens marked in
    target [B,L] (e.g. the visual tokens of the objects its question is about), the heads' mean mass;
    probs [B,H,L] are that position's attention probabilities (query_rows). Rows with nothing to read
    (an all-zero target: a negative existence question) are left out."""
    rows = paddle.nonzero(target.sum(axis=1) > 0).flatten()
    if rows.shape[0] == 0:
        return paddle.zeros([])
    probs, target = paddle.gather(probs, rows), paddle.gather(target, rows)
    mass = (probs * target.unsqueeze(1)).sum(axis=-1).mean(axis=1)  # [B]
    return -paddle.log(mass + 1e-6).mean()
