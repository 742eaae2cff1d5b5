"""The LLaMA sentencepiece tokenizer, as LLaVA uses it (transformers' slow LlamaTokenizer, legacy=True).

Literal special tokens in the text ("<s>", "</s>", "<unk>", e.g. the "</s>" that ends each assistant turn in
a vicuna_v1 conversation) map to their ids instead of being spelled out; every other stretch of text is
encoded by sentencepiece on its own, so each one gets sentencepiece's dummy "▁" prefix, as in LLaVA.
"""
from __future__ import annotations

import json
import os
import re

from paddle_rc.errors import UserError

IMAGE_TOKEN = "<image>"


class LlamaTokenizer:
    def __init__(self, model_file: str, pad_token_id: int | None = None):
        import sentencepiece as spm

        if not os.path.isfile(model_file):
            raise UserError(f"tokenizer model not found: {model_file}")
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(model_file)
        except (OSError, RuntimeError) as e:
            raise UserError(f"{model_file} is not a sentencepiece model: {e}") from None
        self.bos_token_id = self.sp.bos_id()
        self.eos_token_id = self.sp.eos_id()
        self.unk_token_id = self.sp.unk_id()
        if pad_token_id is None:
            pad_token_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else self.unk_token_id
        self.pad_token_id = pad_token_id
        self._special = {self.sp.id_to_piece(i): i for i in (self.bos_token_id, self.eos_token_id,
                                                            self.unk_token_id) if i >= 0}
        self._split = re.compile("(" + "|".join(re.escape(t) for t in
                                               sorted(self._special, key=len, reverse=True)) + ")")

    @classmethod
    def from_dir(cls, directory: str) -> "LlamaTokenizer":
        """Load tokenizer.model (+ pad id from tokenizer_config.json when present)."""
        pad = None
        cfg = os.path.join(directory, "tokenizer_config.json")
        if os.path.isfile(cfg):
            with open(cfg, encoding="utf-8") as f:
                pad = json.load(f).get("pad_token_id")
        return cls(os.path.join(directory, "tokenizer.model"), pad_token_id=pad)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str, add_bos: bool = True) -> list:
        ids = [self.bos_token_id] if add_bos else []
        for chunk in self._split.split(text):
            if not chunk:
                continue
            if chunk in self._special:
                ids.append(self._special[chunk])
            else:
                ids.extend(self.sp.encode(chunk))
        return ids

    def decode(self, ids, skip_special: bool = True) -> str:
        n = self.vocab_size
        parts, run = [], []
        for i in ids:
            i = int(i)
            # Image placeholders (-200 or an id past the sentencepiece vocab) have no text.
            if i < 0 or i >= n:
                continue
            special = self.sp.is_control(i) or self.sp.is_unknown(i) or i == self.pad_token_id
            if special and skip_special:
                continue
            if special:
                # sentencepiece renders control pieces as nothing; show them when asked to keep them.
                parts.append(self.sp.decode(run))
                parts.append(self.sp.id_to_piece(i))
                run = []
            else:
                run.append(i)
        parts.append(self.sp.decode(run))
        return "".join(parts)

    def tokenize_with_image(self, prompt: str, image_token_index: int) -> list:
        """LLaVA's tokenizer_image_token: one BOS, each chunk between "<image>"s encoded on its own."""
        ids = [self.bos_token_id]
        for k, chunk in enumerate(prompt.split(IMAGE_TOKEN)):
            if k > 0:
                ids.append(image_token_index)
            ids.extend(self.encode(chunk, add_bos=False))
        return ids
