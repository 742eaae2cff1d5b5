"""CLIP's byte-level BPE tokenizer in pure Python (vocab.json + merges.txt).

Matches transformers' slow CLIPTokenizer when ftfy is not installed: text is cleaned the way BERT's
BasicTokenizer does it (control characters dropped, whitespace collapsed, spaces around CJK ideographs,
NFC, lower case, accents kept), split with CLIP's regex, and each piece is BPE-merged over its UTF-8 bytes
with `</w>` marking the end of a word.
"""
from __future__ import annotations

import json
import os
import unicodedata
from functools import lru_cache

import regex

from paddle_rc.errors import UserError

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
CONTEXT_LENGTH = 77

_PIECES = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE)
_SPECIAL_SPLIT = regex.compile(r"(<\|startoftext\|>|<\|endoftext\|>)")


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict:
    """GPT-2/CLIP's reversible byte -> printable character table (whitespace/control bytes moved above 255)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def basic_clean(text: str) -> str:
    """The ftfy-less cleanup of HF's CLIPTokenizer: returns space-joined, lower-cased words."""
    chars = []
    for ch in text:
        cp = ord(ch)
        if ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
            chars.append(" ")
        elif cp == 0 or cp == 0xFFFD or unicodedata.category(ch).startswith("C"):
            continue
        elif _is_cjk(cp):
            chars.append(f" {ch} ")
        else:
            chars.append(ch)
    text = unicodedata.normalize("NFC", "".join(chars))
    return " ".join(w.lower() for w in text.split())


def split_words(text: str) -> list:
    """CLIP's pre-tokenization of already cleaned text."""
    return _PIECES.findall(text)


class CLIPTokenizer:
    def __init__(self, vocab_file: str, merges_file: str):
        for p in (vocab_file, merges_file):
            if not os.path.isfile(p):
                raise UserError(f"CLIP tokenizer file not found: {p}")
        with open(vocab_file, encoding="utf-8") as f:
            self.encoder = json.load(f)
        self.decoder = {v: k for k, v in self.encoder.items()}
        with open(merges_file, encoding="utf-8") as f:
            lines = f.read().strip().split("\n")
        # merges.txt starts with a "#version" line, which is not a merge.
        if lines and lines[0].startswith("#"):
            lines = lines[1:]
        self.ranks = {tuple(line.split()): i for i, line in enumerate(lines) if line.strip()}
        for tok in (BOS, EOS):
            if tok not in self.encoder:
                raise UserError(f"{vocab_file} lacks the special token {tok}")
        self.bos_token_id = self.encoder[BOS]
        self.eos_token_id = self.encoder[EOS]
        # CLIP pads with <|endoftext|>.
        self.pad_token_id = self.eos_token_id
        self._b2u = byte_to_unicode()
        self._u2b = {v: k for k, v in self._b2u.items()}
        self._cache = {}

    @classmethod
    def from_dir(cls, directory: str) -> "CLIPTokenizer":
        return cls(os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt"))

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def bpe(self, word: str) -> list:
        """BPE symbols of one pre-token (already mapped to byte characters)."""
        hit = self._cache.get(word)
        if hit is not None:
            return hit
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            best, best_rank = None, None
            for pair in zip(parts, parts[1:]):
                r = self.ranks.get(pair)
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = pair, r
            if best is None:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        if len(self._cache) < 100_000:
            self._cache[word] = parts
        return parts

    def tokenize(self, text: str) -> list:
        """BPE token strings of `text`, without BOS/EOS. Literal special tokens in the text stay special."""
        out = []
        for chunk in _SPECIAL_SPLIT.split(text):
            if chunk in (BOS, EOS):
                out.append(chunk)
                continue
            for piece in split_words(basic_clean(chunk)):
                mapped = "".join(self._b2u[b] for b in piece.encode("utf-8"))
                out.extend(self.bpe(mapped))
        return out

    def convert_tokens_to_ids(self, tokens: list) -> list:
        unk = self.encoder.get(EOS)
        return [self.encoder.get(t, unk) for t in tokens]

    def encode(self, text: str, max_length: int = CONTEXT_LENGTH, truncate: bool = True) -> list:
        """[BOS] + tokens + [EOS]; with `truncate`, cut to `max_length` keeping EOS last."""
        ids = self.convert_tokens_to_ids(self.tokenize(text))
        if truncate and max_length is not None and len(ids) + 2 > max_length:
            ids = ids[: max(max_length - 2, 0)]
        return [self.bos_token_id] + ids + [self.eos_token_id]

    def encode_batch(self, texts: list, max_length: int = CONTEXT_LENGTH):
        """(ids, mask) int64 arrays [len(texts), max_length], padded with pad_token_id."""
        import numpy as np

        ids = np.full((len(texts), max_length), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(texts), max_length), dtype=np.int64)
        for i, t in enumerate(texts):
            row = self.encode(t, max_length=max_length, truncate=True)
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return ids, mask

    def decode(self, ids: list, skip_special: bool = True) -> str:
        toks = [self.decoder.get(int(i), "") for i in ids
                if not (skip_special and int(i) in (self.bos_token_id, self.eos_token_id))]
        # An end-of-word marker stands for the space that followed the word.
        text = "".join(toks).replace("</w>", self._b2u[ord(" ")])
        data = bytearray(self._u2b[c] for c in text if c in self._u2b)
        return data.decode("utf-8", errors="replace").strip()
