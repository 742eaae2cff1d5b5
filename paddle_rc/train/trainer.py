"""Train the demo LLaVA on the synthetic task, resumably, from one seed.

Stage 1 trains the CLIP side: vision tower, text tower and both projections, with CLIP's contrastive
loss between the image and its caption (which names the large objects, so the CLS token learns to
look at them), plus two auxiliary patch-level losses: patch-text alignment between the projected
last-layer patches and the texts that name an object (its phrase, and any question about it), and
linear attribute heads (colour, shape, word, size, centre) on the feature-layer patches, discarded
after training. Stage 2 is LLaVA-1.5's second stage: towers frozen, projector + LLaMA trained on the
reply tokens with all visual tokens (compression stays training-free).

The work folder holds the tokenizers, the weights, the optimizer state and the step, written atomically
every `checkpoint_every` steps; rerunning the same command resumes from there.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as nnf

from paddle_rc.errors import UserError
from paddle_rc.train.recipe import Recipe, model_config

WORK = ".train_state"
PROGRESS = "progress.json"


def _atomic_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def tokenizer_corpus(seed: int, n_items: int = 600) -> str:
    """Text the tokenizers are built from: the prompt template, and the task's questions, answers,
    captions and phrases (sampled from the generator, plus every vocabulary word once)."""
    from paddle_rc.data.conversation import get_template
    from paddle_rc.synth import phrase, vocabulary
    from paddle_rc.train.batches import SHORT_ANSWER, draw_items

    lines = [get_template("vicuna_v1").system, "USER: ASSISTANT:", SHORT_ANSWER, " ".join(vocabulary()),
             "0 1 2 3 4 5 6 7 8 9 yes no"]
    for step in range(math.ceil(n_items / 20)):
        for it in draw_items(seed, "corpus", step, 20):
            lines += [it.question, it.answer, it.caption] + [phrase(o) for o in it.objects]
    return "\n".join(lines) + "\n"


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class DemoTrainer:
    def __init__(self, out_dir: str, recipe: Recipe, log: Callable[[str], None] = None,
                 show_progress: bool = True):
        self.out_dir = os.path.abspath(out_dir)
        self.work = os.path.join(self.out_dir, WORK)
        self.recipe = recipe
        self.log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self.show_progress = show_progress

    # ---- state -----------------------------------------------------------------------------
    def _progress(self) -> Optional[dict]:
        path = os.path.join(self.work, PROGRESS)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        if state.get("recipe") != self.recipe.to_dict():
            raise UserError(f"{self.out_dir} holds a training run with another recipe; pass --overwrite "
                            "to start over, or the same settings to resume")
        return state

    def _setup(self):
        from paddle_rc.data.clip_tokenizer import CLIPTokenizer
        from paddle_rc.data.llama_tokenizer import LlamaTokenizer
        from paddle_rc.data.tiny_tokenizers import build_tiny_clip_bpe, build_tiny_sentencepiece
        from paddle_rc.models import LlavaForConditionalGeneration

        os.makedirs(self.work, exist_ok=True)
        tok_dir, clip_dir = os.path.join(self.work, "tokenizer"), os.path.join(self.work, "clip_tokenizer")
        if not os.path.isfile(os.path.join(clip_dir, "merges.txt")):
            corpus = tokenizer_corpus(self.recipe.seed)
            build_tiny_sentencepiece(tok_dir, vocab_size=self.recipe.llm_vocab, corpus=corpus)
            build_tiny_clip_bpe(clip_dir, n_merges=self.recipe.clip_merges, corpus=corpus)
        self.llm_tok = LlamaTokenizer.from_dir(tok_dir)
        self.clip_tok = CLIPTokenizer.from_dir(clip_dir)
        config = model_config(self.recipe, self.clip_tok, self.llm_tok)
        paddle.seed(self.recipe.seed)
        self.model = LlavaForConditionalGeneration(config)
        grid = self.recipe.image_size // self.recipe.patch_size
        self.heads = _AttributeHeads(config.vision.hidden_size, grid)
        # the same attribute heads on the projector's output (stage 2): the per-token MLP learns to expose
        # what the LLM must read much sooner from a direct signal than through the reply loss alone
        self.token_heads = _AttributeHeads(config.llm.hidden_size, grid)
        self.query_heads = nn.LayerList([_QueryHeads(config.llm.hidden_size)
                                         for _ in range(config.llm.num_hidden_layers - 1)])
        self.scales = paddle.create_parameter([2], "float32",
                                              default_initializer=paddle.nn.initializer.Constant(math.log(10.0)))
        # made last, so the other modules' initial weights do not depend on it
        self.object_heads = _QueryHeads(config.vision.hidden_size)
        weights = os.path.join(self.work, "model.pdparams")
        if os.path.isfile(weights):
            self.model.set_state_dict(paddle.load(weights))
            extra = paddle.load(os.path.join(self.work, "extra.pdparams"))
            self.heads.set_state_dict(extra["heads"])
            self.token_heads.set_state_dict(extra["token_heads"])
            for name in ("query_heads", "object_heads"):
                if name in extra:
                    getattr(self, name).set_state_dict(extra[name])
            self.scales.set_value(extra["scales"])

    def _stable_names(self) -> dict:
        """Paddle's parameter names (linear_125.w_0) depend on how many layers the process made before;
        the optimizer state is stored under the structural names instead, so any process can resume it."""
        names = {self.scales.name: "scales"}
        for prefix, layer in (("model", self.model), ("heads", self.heads), ("token_heads", self.token_heads),
                              ("query_heads", self.query_heads), ("object_heads", self.object_heads)):
            for n, p in layer.named_parameters():
                names[p.name] = f"{prefix}.{n}"
        return names

    def _save(self, state: dict, opt) -> None:
        for name, obj in (("model.pdparams", self.model.state_dict()),
                          ("extra.pdparams", {"heads": self.heads.state_dict(), "token_heads": self.token_heads.state_dict(),
                                             "query_heads": self.query_heads.state_dict(),
                                             "object_heads": self.object_heads.state_dict(), "scales": self.scales}),
                          ("opt.pdopt", _rename(opt.state_dict(), self._stable_names()))):
            path = os.path.join(self.work, name)
            paddle.save(obj, path + ".tmp")
            os.replace(path + ".tmp", path)
        _atomic_json(os.path.join(self.work, PROGRESS), state)

    # ---- training ----------------------------------------------------------------------------
    def run(self) -> dict:
        state = self._progress() or {"recipe": self.recipe.to_dict(), "stage": "clip", "step": 0,
                                     "losses": {"clip": [], "llm": []}, "seconds": 0.0}
        if state["stage"] == "done" and not os.path.isfile(os.path.join(self.work, "model.pdparams")):
            self.log(f"training already finished in {self.out_dir}")
            return state
        self._setup()
        for stage in ("clip", "llm"):
            if state["stage"] == stage:
                self._run_stage(stage, state)
        return state

    def _run_stage(self, stage: str, state: dict) -> None:
        from tqdm import tqdm

        r = self.recipe
        total = r.stage1_steps if stage == "clip" else r.stage2_steps
        peak = r.stage1_lr if stage == "clip" else r.stage2_lr
        m = self.model
        if stage == "clip":
            params = (list(m.vision_tower.parameters()) + list(m.visual_projection.parameters())
                      + list(m.text_tower.parameters()) + list(m.text_projection.parameters())
                      + list(self.heads.parameters()) + [self.scales])
            if r.object_label_weight > 0:
                params += list(self.object_heads.parameters())
        else:
            for p in (list(m.vision_tower.parameters()) + list(m.visual_projection.parameters())
                      + list(m.text_tower.parameters()) + list(m.text_projection.parameters())):
                p.stop_gradient = True
            params = (list(m.projector.parameters()) + list(m.language_model.parameters()) + list(m.lm_head.parameters())
                      + list(self.token_heads.parameters()) + list(self.query_heads.parameters()))
        opt = paddle.optimizer.AdamW(learning_rate=peak, parameters=params, weight_decay=0.01,
                                     grad_clip=paddle.nn.ClipGradByGlobalNorm(1.0))
        opt_path = os.path.join(self.work, "opt.pdopt")
        if state["step"] > 0 and os.path.isfile(opt_path):
            back = {v: k for k, v in self._stable_names().items()}
            opt.set_state_dict(_rename(paddle.load(opt_path), back))
        m.train()
        step_fn = self._clip_step if stage == "clip" else self._llm_step
        data_fn = self._clip_data if stage == "clip" else self._llm_data
        # The next step's scenes are drawn and preprocessed on a thread while this step computes.
        pool = ThreadPoolExecutor(max_workers=1)
        ahead = pool.submit(data_fn, state["step"])
        bar = tqdm(total=total, initial=state["step"], desc=f"stage {'1 clip' if stage == 'clip' else '2 llm'}",
                   file=sys.stderr, disable=not self.show_progress, dynamic_ncols=True)
        t_last = time.perf_counter()
        while state["step"] < total:
            step = state["step"]
            opt.set_lr(lr_at(step, total, peak, r.warmup))
            data = ahead.result()
            if step + 1 < total:
                ahead = pool.submit(data_fn, step + 1)
            loss, parts = step_fn(data)
            loss.backward()
            opt.step()
            opt.clear_grad()
            value = float(loss)
            if not math.isfinite(value):
                raise RuntimeError(f"stage {stage} step {step}: loss is {value}")
            state["losses"][stage].append(round(value, 5))
            for k, v in parts.items():
                if k.startswith(("probe_", "tok_")) and math.isfinite(v):
                    state.setdefault("probe", {}).setdefault(k, []).append(round(v, 4))
            state["step"] = step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3f}", **{k: f"{v:.2f}" for k, v in parts.items()})
            if state["step"] % r.checkpoint_every == 0 or state["step"] == total:
                now = time.perf_counter()
                state["seconds"] += now - t_last
                t_last = now
                if state["step"] == total:
                    state["stage"], state["step"] = ("llm", 0) if stage == "clip" else ("done", 0)
                    self._save(state, opt)
                    break
                self._save(state, opt)
        bar.close()
        pool.shutdown(wait=True)
        m.eval()

    def _tower(self, pixels):
        """Feature-layer tokens (what the projector gets) and last-layer tokens, in one pass."""
        tower = self.model.vision_tower
        idx = tower.feature_index(self.model.config.vision_feature_layer)
        x = tower.pre_layernorm(tower.embeddings(pixels))
        feat = None
        for i, layer in enumerate(tower.encoder.layers):
            x, _ = layer(x)
            if i == idx - 1:
                feat = x
        return feat, x

    def _clip_data(self, step: int) -> dict:
        """Everything stage 1 needs for a step, as numpy (built on a helper thread, ahead of time)."""
        from paddle_rc.data.image import ImageProcessor
        from paddle_rc.synth import phrase
        from paddle_rc.train import batches as bt

        r, m = self.recipe, self.model
        items = bt.draw_items(r.seed, "clip", step, r.stage1_batch)
        rng = bt.batch_rng(r.seed, "clip", 10_000_000 + step)
        pixels = ImageProcessor.from_config(m.config)([it.image for it in items])
        n = (r.image_size // r.patch_size) ** 2
        labels = bt.patch_labels(items, r.image_size, r.patch_size)
        texts, image_of, target = bt.text_targets(items, labels, n, rng)
        # patch -> phrase targets: every copy of the owner's phrase in the batch (phrases repeat across
        # scenes with so small a vocabulary; a copy is the same class, not a negative)
        owner = labels.owner.reshape(-1)
        phrase_set = {phrase(o) for it in items for o in it.objects}
        text_arr = np.asarray(texts, dtype=object)
        is_phrase = np.array([t in phrase_set for t in texts])
        phrase_target = np.zeros((len(owner), len(texts)), np.float32)
        for flat in np.nonzero(owner >= 0)[0]:
            s = phrase(items[flat // n].objects[int(owner[flat])])
            cols = np.nonzero(is_phrase & (text_arr == s))[0]
            phrase_target[flat, cols] = 1.0 / len(cols)
        cap = [it.caption for it in items]
        pad = m.config.text.pad_token_id
        return {"pixels": pixels, "same": np.array([[a == b for b in cap] for a in cap], np.float32),
                "captions": bt.clip_ids(self.clip_tok, cap, pad), "texts": bt.clip_ids(self.clip_tok, texts, pad),
                "image_of": image_of, "target": target, "phrase_target": phrase_target, "owned": owner >= 0,
                "labels": {k: getattr(labels, k) for k in bt.label_sizes(r.image_size // r.patch_size)},
                "weight": labels.weight, "small": _small_patches(items, labels),
                "objects": bt.object_pooling(items, labels)}

    def _clip_step(self, d: dict):
        from paddle_rc.train.losses import contrastive_loss, patch_label_loss, patch_text_loss

        m = self.model
        t = {k: paddle.to_tensor(v) for k, v in d.items() if k not in ("labels", "small", "objects")}
        feat, last = self._tower(t["pixels"])
        scales = paddle.exp(paddle.clip(self.scales, max=math.log(100.0)))
        img_emb = m.visual_projection(m.vision_tower.post_layernorm(last[:, 0]))
        l_clip = contrastive_loss(img_emb, m.get_text_features(t["captions"]), scales[0], t["same"])
        txt_emb = m.get_text_features(t["texts"])
        P = m.visual_projection(last[:, 1:])
        l_patch = patch_text_loss(P, txt_emb, t["image_of"], t["target"], scales[1], t["phrase_target"], t["owned"])
        heads = self.heads(feat[:, 1:])
        l_attr = patch_label_loss(heads, {k: paddle.to_tensor(v) for k, v in d["labels"].items()}, t["weight"])
        loss = l_clip + l_patch + l_attr
        # The heads see each batch before updating on it (fresh scenes every step), so this is a held-out
        # linear probe of the feature layer on the small objects' patches: what the LLM can read there.
        probe = {k: _accuracy(heads[k], d["labels"][k], d["small"]) for k in ("colour", "shape", "word")}
        parts = {"clip": float(l_clip), "patch": float(l_patch), "attr": float(l_attr),
                 **{f"probe_{k}": v for k, v in probe.items()}}
        pool, targets = d["objects"]
        if self.recipe.object_label_weight > 0 and len(pool):
            flat = feat[:, 1:].reshape([-1, feat.shape[-1]])
            objs = self.object_heads(paddle.matmul(paddle.to_tensor(pool), flat))
            signs = targets["word"] > 0
            # the word (or dots) over the signs and cards only: "no word" on a shape is the per-patch heads'
            # easy part
            losses = [nnf.cross_entropy(objs[k], paddle.to_tensor(targets[k])) for k in ("colour", "shape")]
            if signs.any():
                at = paddle.to_tensor(np.nonzero(signs)[0])
                losses.append(nnf.cross_entropy(paddle.gather(objs["word"], at), paddle.to_tensor(targets["word"][signs])))
            l_obj = paddle.add_n(losses)
            loss = loss + self.recipe.object_label_weight * l_obj
            parts["obj"] = float(l_obj)
            if signs.any():
                parts["probe_objword"] = float((objs["word"].numpy().argmax(-1)[signs] == targets["word"][signs]).mean())
        return loss, parts

    def _llm_data(self, step: int) -> dict:
        from paddle_rc.data.image import ImageProcessor
        from paddle_rc.train import batches as bt

        r, m = self.recipe, self.model
        items = bt.draw_items(r.seed, "llm", step, r.stage2_batch, r.type_mix)
        rng = bt.batch_rng(r.seed, "llm", 10_000_000 + step)
        pixels = ImageProcessor.from_config(m.config)([it.image for it in items])
        ids, mask, alen = bt.answer_sequences(items, self.llm_tok, m.config.conv_mode, m.config.image_token_index, rng)
        labels = bt.patch_labels(items, r.image_size, r.patch_size)
        looked_at = bt.visual_targets(items, labels, ids, mask, m.config.image_token_index)
        asked_at = bt.question_targets(ids, mask, labels.owner.shape[1], m.config.image_token_index, self.llm_tok)
        return {"step": step, "pixels": pixels, "ids": ids, "mask": mask, "alen": alen, "looked_at": looked_at,
                "asked_at": asked_at, "query_labels": bt.target_attributes(items, labels),
                "labels": {k: getattr(labels, k) for k in bt.label_sizes(r.image_size // r.patch_size)},
                "weight": labels.weight, "small": _small_patches(items, labels)}

    def _llm_step(self, d: dict):
        from paddle_rc.models.llava import VisualTokens
        from paddle_rc.train.losses import (answer_loss, attention_target_loss, patch_label_loss, query_rows,
                                            soft_label_loss)

        m, r = self.model, self.recipe
        ids, mask, alen = d["ids"], d["mask"], d["alen"]
        with paddle.no_grad():
            F = m.vision_tower(paddle.to_tensor(d["pixels"]), m.config.vision_feature_layer).F
        n = F.shape[1]
        tokens = m.projector(F)
        visual = VisualTokens(tokens, np.full([len(ids)], n, np.int64), n)
        parts = {}
        aux = 0.0
        if r.token_label_weight > 0:
            heads = self.token_heads(tokens)
            aux = r.token_label_weight * patch_label_loss(
                heads, {k: paddle.to_tensor(v) for k, v in d["labels"].items()}, paddle.to_tensor(d["weight"]))
            parts = {f"tok_{k}": _accuracy(heads[k], d["labels"][k], d["small"]) for k in ("shape", "word")}
        embeds, attn, pos = m.splice(paddle.to_tensor(ids), paddle.to_tensor(mask), visual)
        lm = m.language_model
        length = embeds.shape[1]
        # The decoder's own forward, unrolled so the grounding loss can read the attention of the position
        # that predicts the reply's first token (LlamaModel.forward does exactly this loop).
        x = embeds
        cos, sin = lm._rope(pos, x.dtype)
        bias = lm.attention_bias(attn, length, x.dtype)
        heads = [-1, lm.config.num_attention_heads, -1, -1]
        # the layers get the head axis expanded once (faster than broadcasting in each)
        cos, sin, bias = cos.expand(heads), sin.expand(heads), bias.expand(heads)
        query = paddle.to_tensor(length - 1 - alen)  # [B]
        target = paddle.to_tensor(d["looked_at"])
        grounding, reading, carried = [], None, []
        rows = paddle.arange(len(ids))
        for i, layer in enumerate(lm.layers):
            # the attention losses read the layer's own probabilities (recomputing the query row cost a
            # second key projection and rotary embedding per loss)
            layer.self_attn.keep_probs = True
            try:
                x, _, _ = layer(x, cos, sin, bias)
                probs = query_rows(layer.self_attn.probs, query)
            finally:
                layer.self_attn.keep_probs, layer.self_attn.probs = False, None
            if r.question_weight > 0 and i == 0 and d["step"] >= r.question_start:
                reading = attention_target_loss(probs, paddle.to_tensor(d["asked_at"]))
            if r.grounding_weight > 0 and i >= 1:
                grounding.append(attention_target_loss(probs, target))
            if r.query_label_weight > 0 and i >= 1:
                # what the reply position holds after a grounding layer: the asked objects' attributes
                at = self.query_heads[i - 1](paddle.gather_nd(x, paddle.stack([rows, query], axis=1)))
                carried.append(paddle.add_n([soft_label_loss(at[k], paddle.to_tensor(v))
                                             for k, v in d["query_labels"].items()]))
        hidden = lm.norm(x)
        width = int(alen.max())
        logits = m.lm_head(hidden[:, -width - 1:-1])
        loss = answer_loss(logits, paddle.to_tensor(ids[:, -width:]), paddle.to_tensor(alen))
        parts["answer"] = float(loss)
        if grounding:
            g = paddle.add_n(grounding) / len(grounding)
            parts["ground"] = float(g)
            loss = loss + r.grounding_weight * g
        if carried:
            c = paddle.add_n(carried) / len(carried)
            parts["carry"] = float(c)
            loss = loss + r.query_label_weight * c
        if reading is not None:
            parts["question"] = float(reading)
            loss = loss + r.question_weight * reading
        return loss + aux, parts

    def drop_resume_state(self) -> None:
        """After the checkpoint is written: the weights and optimizer state are no longer needed."""
        for name in ("model.pdparams", "extra.pdparams", "opt.pdopt"):
            path = os.path.join(self.work, name)
            if os.path.isfile(path):
                os.remove(path)

    # ---- output ------------------------------------------------------------------------------
    def write_checkpoint(self, directory: Optional[str] = None) -> str:
        """The trained model in the checkpoint format of docs/checkpoint.md."""
        from paddle_rc.models.weights import save_weights

        directory = directory or self.out_dir
        for sub in ("tokenizer", "clip_tokenizer"):
            dst = os.path.join(directory, sub)
            if os.path.isdir(dst):
                shutil.rmtree(dst)
            shutil.copytree(os.path.join(self.work, sub), dst)
        self.model.config.save(directory)
        save_weights(self.model, directory)
        return directory


def _rename(state: dict, names: dict) -> dict:
    """Optimizer-state keys are '<parameter name>_<accumulator>': swap the parameter-name prefix."""
    order = sorted(names, key=len, reverse=True)
    out = {}
    for key, value in state.items():
        for old in order:
            if key.startswith(old + "_"):
                key = names[old] + key[len(old):]
                break
        out[key] = value
    return out


def _small_patches(items, labels) -> np.ndarray:
    """[B, N] bool: patches owned by a small object (a small shape or the sign)."""
    small = np.zeros(labels.owner.shape, bool)
    for b, it in enumerate(items):
        for j, obj in enumerate(it.objects):
            if obj.size == "small":
                small[b] |= labels.owner[b] == j
    return small


def _accuracy(logits, labels: np.ndarray, where: np.ndarray) -> float:
    """Share of the patches in `where` whose label is non-zero that the head classifies right (nan if none)."""
    sel = where & (labels > 0)
    if not sel.any():
        return float("nan")
    pred = logits.numpy().argmax(-1)
    return float((pred[sel] == labels[sel]).mean())


class _QueryHeads(nn.Layer):
    """Linear classifiers of what one position should hold (kinds of batches.query_label_sizes: the asked
    objects' colour, shape and word) on its normed hidden state (training only)."""

    def __init__(self, width: int):
        from paddle_rc.train.batches import query_label_sizes

        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.heads = nn.LayerDict({k: nn.Linear(width, c) for k, c in query_label_sizes().items()})

    def forward(self, x):
        x = self.norm(x)
        return {k: h(x) for k, h in self.heads.items()}


class _AttributeHeads(nn.Layer):
    """Linear per-patch classifiers on the feature layer (training only; not part of the checkpoint)."""

    def __init__(self, width: int, grid: int):
        from paddle_rc.train.batches import label_sizes

        super().__init__()
        self.heads = nn.LayerDict({k: nn.Linear(width, v) for k, v in label_sizes(grid).items()})

    def forward(self, x):
        return {k: h(x) for k, h in self.heads.items()}

