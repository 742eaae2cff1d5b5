"""One question about one image, end to end, whichever backend runs the networks.

Predictor holds everything outside the networks (prompt, tokenization, the question's CLIP
embedding, decoding the answer) over a backend with the dynamic model's interface: the dynamic
LlavaForConditionalGeneration or export.runner.DeployedLlava. It imports neither; which one is used
is decided by paddle_rc.predictor.build_predictor, the layer above both.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import paddle

from paddle_rc.data.conversation import IMAGE_PLACEHOLDER, get_template, ocr_hint, question_for_text_encoder
from paddle_rc.data.image import ImageProcessor, load_image
from paddle_rc.data.padding import left_pad
from paddle_rc.errors import UserError
from paddle_rc.models.generation import DecodeBatch, check_sampling, decode_to_end, seed_generators
from paddle_rc.models.llava import VisualTokens, check_context

# rc-reference pads/truncates the text to this many CLIP tokens (the released code's max_length).
REFERENCE_TEXT_LENGTH = 20


class Tokenizers:
    """The LLM tokenizer and the CLIP tokenizer stored in a checkpoint (or export) directory."""

    def __init__(self, directory: str):
        from paddle_rc.data.clip_tokenizer import CLIPTokenizer
        from paddle_rc.data.llama_tokenizer import LlamaTokenizer

        llm_dir = os.path.join(directory, "tokenizer")
        clip_dir = os.path.join(directory, "clip_tokenizer")
        for d in (llm_dir, clip_dir):
            if not os.path.isdir(d):
                raise UserError(f"{directory} has no {os.path.basename(d)}/ folder; convert the model "
                                "with tools/convert.py")
        self.llm = LlamaTokenizer.from_dir(llm_dir)
        self.clip = CLIPTokenizer.from_dir(clip_dir)


class Predictor:
    """Prompt building, tokenization, the question's CLIP embedding, generation and decoding."""

    def __init__(self, model, tokenizers: Tokenizers, conv_mode: Optional[str] = None,
                 model_id: str = "paddle_rc", is_demo: bool = False, kind: str = "dynamic"):
        self.model = model
        # "dynamic": compression can change per call; "deploy": fixed at export (set_method checks).
        self.kind = kind
        self.tok = tokenizers
        self.config = model.config
        self.conv_mode = conv_mode or self.config.conv_mode
        self.template = get_template(self.conv_mode)
        self.processor = ImageProcessor.from_config(self.config)
        self.model_id = model_id
        # The built-in demo model (or one trained the same way, paddle_rc.demo.is_demo_config): a model
        # of the synthetic task only, which the tools say (paddle_rc.demo.DEFAULT_MODEL_NOTE).
        self.is_demo = is_demo
        self.last_visual = None

    # ---- configuration -----------------------------------------------------------------------
    @property
    def method(self) -> str:
        return self.model.compression.method

    @property
    def compression(self):
        """The CompressionSpec in force (method, budget, options)."""
        return self.model.compression

    def _options(self) -> dict:
        from paddle_rc.compression import method_defaults

        opts = method_defaults(self.method)
        opts.update(self.compression.options)
        return opts

    def set_method(self, method: str, budget: Optional[int] = None, **options) -> None:
        self.model.set_compression(method, budget, **options)

    # ---- inputs ------------------------------------------------------------------------------
    def build_prompt(self, user_text: str, history=()) -> str:
        return self.template.prompt(user_text, with_image=True, history=history)

    def encode_prompts(self, prompts: Sequence[str]):
        """Left-padded input_ids and attention_mask for full prompts holding the placeholder once."""
        image_id = self.config.image_token_index
        rows = [self.tok.llm.tokenize_with_image(p, image_id) for p in prompts]
        ids, mask = left_pad(rows, self.config.llm.pad_token_id)
        return paddle.to_tensor(ids), paddle.to_tensor(mask)

    def text_embeddings(self, questions: Sequence[str], prompts: Sequence[str]):
        """The question's CLIP embedding per sample, in the text mode the method declares (registry
        TEXT_MODES), and which samples have one (docs/algorithm.md §4)."""
        from paddle_rc.compression.registry import get_method

        mode = get_method(self.method).text_mode
        if mode is None:
            return None, None
        clip = self.tok.clip
        length = self.config.text.max_position_embeddings
        if mode == "prompt-first-line":
            # The released RC code decodes the whole LLM prompt (placeholder removed), keeps the text
            # before its first newline (the system prompt under vicuna_v1) and pools the last of a
            # fixed 20 positions.
            texts = []
            for p in prompts:
                ids = self.tok.llm.tokenize_with_image(p, self.config.image_token_index)
                ids = [i for i in ids if i != self.config.image_token_index]
                texts.append(self.tok.llm.decode(ids).split("\n", 1)[0])
            rows = [clip.encode(t, max_length=REFERENCE_TEXT_LENGTH) for t in texts]
            ids = _pad_rows(rows, REFERENCE_TEXT_LENGTH, self.config.text.pad_token_id)
            feats = self.model.question_features(paddle.to_tensor(ids), mode)
            return feats, paddle.to_tensor(np.ones(len(rows), dtype=bool))
        segments = mode == "question-segments"
        rows = [clip.encode(q, max_length=length, truncate=not segments) if q.strip() else [] for q in questions]
        # A sample without a question gets a filler embedding and has_text False, even when no
        # sample has one: the result (and its notes) then do not depend on the batch.
        has_text = np.array([len(r) > 0 for r in rows])
        filler = clip.encode("", max_length=length)
        rows = [r if r else filler for r in rows]
        if segments:
            # CDPruner cuts the tokenized question into zero-padded segments of the tower's length.
            width = length * max((len(r) + length - 1) // length for r in rows)
            ids = _pad_rows(rows, width, 0)
        else:
            ids = _pad_rows(rows, max(len(r) for r in rows), self.config.text.pad_token_id)
        feats = self.model.question_features(paddle.to_tensor(ids), mode)
        return feats, paddle.to_tensor(has_text)

    # ---- the two halves of answering: what the server's scheduler calls ----------------------
    def encode(self, images: Sequence, user_texts: Sequence[str],
               questions: Optional[Sequence[Optional[str]]] = None, histories=None) -> "Encoded":
        """Prompts, tokens and the vision side (tower, compression in force, projector) of a batch.
        Images may be paths, bytes, PIL images or uint8 arrays, of any sizes. `histories`: per item,
        the earlier (user, assistant) turns of its conversation (default none)."""
        n = len(user_texts)
        if len(images) != n:
            raise ValueError(f"{len(images)} images for {n} prompts")
        if questions is None:
            questions = [None] * n
        questions = [question_for_text_encoder(u) if q is None else q for q, u in zip(questions, user_texts)]
        if self._options().get("ocr_hint"):
            # RC's question stops before the OCR line; this option lets the line reach the encoder.
            questions = [" ".join(filter(None, [q, ocr_hint(u)])) for q, u in zip(questions, user_texts)]
        prompts = [self.build_prompt(u, h) for u, h in zip(user_texts, histories or [()] * n)]
        t0 = time.perf_counter()
        pixels = paddle.to_tensor(self.processor([load_image(im) for im in images]))
        input_ids, mask = self.encode_prompts(prompts)
        text_embeds, has_text = self.text_embeddings(questions, prompts)
        t1 = time.perf_counter()
        with paddle.no_grad():
            visual = self.model.encode_images(pixels, text_embeds, has_text)
            _ = visual.embeds.numpy()  # finish the (asynchronous) vision work inside its own timing
        t2 = time.perf_counter()
        return Encoded(prompts, questions, input_ids, mask, visual, self.method, self.model.compression.budget,
                       {"preprocess": t1 - t0, "vision": t2 - t1})

    def start(self, encoded: "Encoded", rows: Optional[Sequence[int]] = None, keys=None) -> DecodeBatch:
        """Splice and prefill (some rows of) an encoded batch: a DecodeBatch ready to sample from."""
        input_ids, mask, visual = encoded.input_ids, encoded.attention_mask, encoded.visual
        if rows is not None and list(rows) != list(range(len(encoded))):
            idx = paddle.to_tensor(np.asarray(rows, dtype=np.int64))
            input_ids = paddle.index_select(input_ids, idx, axis=0)
            mask = paddle.index_select(mask, idx, axis=0)
            visual = VisualTokens(paddle.index_select(visual.embeds, idx, axis=0),
                                  visual.lengths[np.asarray(rows, dtype=np.int64)], visual.before)
        with paddle.no_grad():
            embeds, mask, pos, vis_mask = self.model.splice(input_ids, mask, visual, with_visual_mask=True)
            # An in-LLM method (FastV) prunes in this prefill; the model's steps say how.
            prefill, decode, record = self.model.llm_steps(vis_mask if visual is not None else None)
            batch = DecodeBatch.prefill(prefill, decode, embeds, mask, pos, keys)
            if record:
                self.model.record_llm_selection(visual, vis_mask, record["keep"])
                encoded.visual.kept_in_llm = visual.kept_in_llm  # the same for every row
            return batch

    # ---- answering ---------------------------------------------------------------------------
    def answer_batch(self, images: Sequence, user_texts: Sequence[str],
                     questions: Optional[Sequence[Optional[str]]] = None, *, max_new_tokens: int = 128,
                     temperature: float = 0.0, top_p: float = 1.0, seed=0, histories=None) -> list:
        """One result dict per item, as answer() returns it, computed in one batch.

        Images may differ in size, and each keeps its own number of visual tokens. Greedy answers
        equal answering one at a time; when sampling, `seed` (one int, or one per item) seeds each
        item's own generator, so a sample's draws do not depend on the batch either. Finished items
        leave the batch. `timings` are the batch's (shared by its items). `histories`: per item, the
        earlier (user, assistant) turns of its conversation (default none).
        """
        check_sampling(max_new_tokens, temperature, top_p)
        enc = self.encode(images, user_texts, questions, histories)
        check_context(max(enc.prompt_tokens(b) for b in range(len(enc))), max_new_tokens,
                      self.config.llm.max_position_embeddings)
        rngs = seed_generators(seed, len(enc))
        t0 = time.perf_counter()
        batch = self.start(enc)
        t1 = time.perf_counter()
        with paddle.no_grad():
            tokens = decode_to_end(batch, rngs, max_new_tokens=max_new_tokens,
                                   eos_token_id=self.tok.llm.eos_token_id,
                                   pad_token_id=self.config.llm.pad_token_id, temperature=temperature, top_p=top_p)
        t2 = time.perf_counter()
        self.last_visual = enc.visual
        timings = dict(enc.timings, prefill=t1 - t0, decode=t2 - t1, new_tokens=int(tokens.shape[1]),
                       batch_size=len(enc))
        results = []
        for b in range(len(enc)):
            ids = until_eos(tokens[b], self.tok.llm.eos_token_id)
            results.append(dict(enc.item(b), text=self.tok.llm.decode(ids).strip(), new_tokens=len(ids),
                                timings=timings))
        return results

    def chat(self, image, recompress: bool = False):
        """A conversation about one image: `session.ask(question)` per turn (see paddle_rc.chat)."""
        from paddle_rc.chat import ChatSession

        return ChatSession(self, image, recompress=recompress)

    def answer(self, image, prompt: str, question: Optional[str] = None, history=(), **kw) -> dict:
        """`image`: a path, bytes, PIL image or uint8 array. `prompt` is the user turn without the
        placeholder; `question` what the text encoder sees (derived from the prompt when None);
        `history` the conversation's earlier (user, assistant) turns."""
        return self.answer_batch([image], [prompt], [question], histories=[history], **kw)[0]

    def picture(self, image, encoded: "Encoded", b: int):
        """The kept-token drawing of item b over the image the tower saw, or None for method none."""
        if encoded.visual.result is None:
            return None
        from paddle_rc.compression.visualize import draw_kept_tokens

        return draw_kept_tokens(self.processor.model_view(load_image(image)), encoded.visual.result, sample=b)


@dataclass
class Encoded:
    """A batch after its prompts and images are encoded, before the language model."""
    prompts: list
    questions: list
    input_ids: paddle.Tensor
    attention_mask: paddle.Tensor
    visual: VisualTokens
    method: str
    budget: Optional[int]
    timings: dict

    def __len__(self) -> int:
        return len(self.prompts)

    def prompt_tokens(self, b: int) -> int:
        """Tokens the language model reads for item b: its text (the placeholder replaced) + kept visual."""
        return int(self.attention_mask[b].sum()) - 1 + int(self.visual.lengths[b])

    def item(self, b: int) -> dict:
        return {"prompt": self.prompts[b], "question": self.questions[b], "method": self.method,
                "budget": self.budget, "prompt_tokens": self.prompt_tokens(b),
                "visual_tokens_before": int(self.visual.before),
                "visual_tokens": self.visual_tokens(b), "stage_counts": _stage_counts(self.visual, b)}

    def visual_tokens(self, b: int) -> int:
        """Visual tokens item b keeps: after compression, or for FastV after its LLM layer (known
        once the prefill ran; before, all of them)."""
        kept = self.visual.kept_in_llm
        return int(self.visual.lengths[b]) if kept is None else int(kept)


def _pad_rows(rows, width: int, pad: int) -> np.ndarray:
    ids = np.full((len(rows), width), pad, dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
    return ids


def until_eos(tokens, eos_token_id: int) -> list:
    """A sample's generated ids before its first EOS (what follows it is padding)."""
    ids = []
    for i in tokens:
        if int(i) == eos_token_id:
            break
        ids.append(int(i))
    return ids


def _stage_counts(visual, b: int) -> dict:
    if visual is None or visual.result is None:
        return {"total": int(visual.lengths[b]) if visual is not None else 0}
    stats = visual.result.stats[b]
    return {k: (int(v) if isinstance(v, (int, np.integer)) else v) for k, v in stats.items()}


__all__ = ["Predictor", "Tokenizers", "IMAGE_PLACEHOLDER"]
