"""A tiny LLaVA whose language model has been trained, for measurements that need real decisions.

A random-weight LLM has no preferences: its top logits are close together almost everywhere, so
any perturbation (int8 rounding, a different kernel) flips the argmax at a rate set by the noise,
not by how well the perturbation preserves the model. Top-1 agreement says something only for a
model whose next-token distributions are peaked, as trained ones are. This module trains the LLM of
a given small checkpoint (embeddings, decoder layers, lm_head; the vision side is untouched) on the
text the tiny tokenizers are built from (paddle_rc.data.tiny_tokenizers.CORPUS), full batch with
AdamW. It learns that corpus nearly by heart: a small, honest stand-in for a trained model, not a
good language model. Started from random weights (the tests do), it shows a random LLM turning
into a peaked one; started from the built-in demo model (the default), it adds the corpus to what
that model learnt on the synthetic task.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np


def corpus_batch(tokenizer) -> tuple:
    """(ids, mask), int64 [lines, longest]: each corpus line as BOS + tokens + EOS, right-padded
    with EOS (mask 0). Right padding keeps every real position's logits exact under causal attention."""
    from paddle_rc.data.tiny_tokenizers import CORPUS

    seqs = [tokenizer.encode(line) + [tokenizer.eos_token_id] for line in CORPUS.splitlines() if line.strip()]
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), tokenizer.eos_token_id, np.int64)
    mask = np.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
        mask[i, :len(s)] = 1
    return ids, mask


def corpus_prompts(tokenizer) -> tuple:
    """(ids, mask) for measuring on the corpus: as corpus_batch, but the mask leaves out each line's
    EOS position, whose next token was never trained (no target follows it). Every masked position
    predicts a token the model learnt; the last one predicts the line's EOS."""
    ids, mask = corpus_batch(tokenizer)
    mask = mask.copy()
    mask[np.arange(len(mask)), mask.sum(axis=1) - 1] = 0
    return ids, mask


def train_language_model(model, ids: np.ndarray, mask: np.ndarray, steps: int, lr: float = 3e-3) -> list:
    """Next-token cross-entropy on the real positions, full batch; returns the loss of each step."""
    import paddle
    import paddle.nn.functional as F

    lm = model.language_model
    params = list(lm.parameters()) + list(model.lm_head.parameters())
    opt = paddle.optimizer.AdamW(learning_rate=lr, parameters=params, weight_decay=0.0)
    x = paddle.to_tensor(ids)
    full = paddle.ones_like(x)  # causal attention alone: padding only ever follows real tokens
    pos = paddle.to_tensor(np.broadcast_to(np.arange(ids.shape[1]), ids.shape).copy())
    weight = paddle.to_tensor(mask[:, 1:].astype(np.float32))
    losses = []
    model.train()
    for _ in range(steps):
        hidden, _, _ = lm(lm.embed_tokens(x), full, pos)
        logits = model.lm_head(hidden[:, :-1])
        nll = F.cross_entropy(logits, x[:, 1:].unsqueeze(-1), reduction="none").squeeze(-1)
        loss = (nll * weight).sum() / weight.sum()
        loss.backward()
        opt.step()
        opt.clear_grad()
        losses.append(float(loss))
    model.eval()
    return losses


def write_trained_demo(directory: str, steps: int = 80, lr: float = 3e-3, src: str | None = None) -> dict:
    """Copy ``src`` (default: the built-in demo model) to ``directory`` with its LLM trained on the corpus.
    Written to a temporary folder first and renamed, so a half-written checkpoint never appears."""
    from paddle_rc.data.llama_tokenizer import LlamaTokenizer
    from paddle_rc.demo import default_model
    from paddle_rc.models import LlavaForConditionalGeneration
    from paddle_rc.models.weights import save_weights

    src = src or default_model()
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    model = LlavaForConditionalGeneration.from_pretrained(src)
    ids, mask = corpus_batch(LlamaTokenizer.from_dir(os.path.join(src, "tokenizer")))
    losses = train_language_model(model, ids, mask, steps, lr)
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".trained.", dir=parent)
    try:
        for name in os.listdir(src):
            path = os.path.join(src, name)
            if os.path.isdir(path):
                shutil.copytree(path, os.path.join(tmp, name))
        model.config.source = "demo-trained"
        model.config.save(tmp)
        save_weights(model, tmp)
        if os.path.isdir(directory):
            shutil.rmtree(directory)
        os.rename(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"steps": steps, "lr": lr, "first_loss": losses[0], "final_loss": losses[-1],
            "sequences": int(ids.shape[0]), "tokens": int(mask.sum())}
