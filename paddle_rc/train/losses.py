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


def attention_target_loss(probs, target, share=None, sink=None, uniform=None):
    """Grounding: -log of the attention mass that one query position per row puts on the tokens marked in
    target (e.g. the visual tokens of the objects its question is about); probs [B,H,L] are that
    position's attention probabilities (query_rows). target [B,L] counts for all heads (their mean mass);
    target [B,G,L] splits the heads into G contiguous groups, each with its own tokens, and the loss is
    the mean over groups. With share [B] and sink [B] (a position) a row's loss is
    -share*log(mass on target) - (1-share)*log(mass on the sink). With uniform [B] bool a marked row's loss
    is instead each head's cross-entropy to the even spread over its target, minus its floor log|target|
    (0 when the head reads every target token alike and nothing else). Rows with nothing to read (all-zero
    target and share 1: a negative existence question) are left out."""
    if len(target.shape) == 2:
        target = target.unsqueeze(1)
    if share is None:
        share, sink = paddle.ones([target.shape[0]]), paddle.zeros([target.shape[0]], "int64")
    if uniform is None:
        uniform = paddle.zeros([target.shape[0]], "bool")
    rows = paddle.nonzero((target.sum(axis=[1, 2]) > 0) | (share < 1)).flatten()
    if rows.shape[0] == 0:
        return paddle.zeros([])
    probs, target, share, sink, uniform = (paddle.gather(t, rows) for t in (probs, target, share, sink, uniform))
    b, heads, length = probs.shape
    groups = target.shape[1]
    probs = probs.reshape([b, groups, heads // groups, length])
    mass = (probs * target.unsqueeze(2)).sum(axis=-1).mean(axis=2)  # [B,G]
    at_sink = F.one_hot(sink, length).reshape([b, 1, 1, length])
    sunk = (probs * at_sink).sum(axis=-1).mean(axis=2)  # [B,G]
    share = share.unsqueeze(1)
    loss = -share * paddle.log(mass + 1e-6) - (1 - share) * paddle.log(sunk + 1e-6)
    if bool(uniform.any()):
        size = target.sum(axis=-1, keepdim=True).clip(min=1.0)  # [B,G,1]
        even = (target / size).unsqueeze(2)  # [B,G,1,L]
        spread = (-(even * paddle.log(probs + 1e-9)).sum(axis=-1).mean(axis=2)
                  - paddle.log(size.squeeze(-1)))  # [B,G]
        loss = paddle.where(uniform.unsqueeze(1).expand(loss.shape), spread, loss)
    return loss.mean()
