"""Tiny, deterministic tokenizer files for the built-in demo model and for tests.

Both are trained on a small corpus (by default the one below; the demo model passes its task's text), so the same call always writes the same bytes and nothing
has to be downloaded. They are real tokenizers in the real file formats (sentencepiece model; CLIP
vocab.json + merges.txt), just with small vocabularies.
"""
from __future__ import annotations

import collections
import io
import json
import os

from paddle_rc.data.clip_tokenizer import BOS, EOS, basic_clean, byte_to_unicode, split_words

CORPUS = """\
A chat between a curious user and an artificial intelligence assistant.
The assistant gives helpful, detailed, and polite answers to the user's questions.
USER: What is shown in this image? ASSISTANT: The image shows a red bus parked next to a tall building.
USER: How many people are in the picture? ASSISTANT: There are three people standing near the bus stop.
USER: Describe the scene in detail. ASSISTANT: A small dog is running across a green field under a blue sky.
USER: What color is the car? ASSISTANT: The car is white, and it has a black roof.
USER: Is there any text on the sign? ASSISTANT: Yes, the sign reads "STOP" in large white letters.
a photo of a cat sitting on a wooden table next to a cup of coffee
a photo of two dogs playing with a ball in the park
a picture of a man riding a bicycle down a busy street at night
an image of a woman holding an umbrella in the rain
a close-up photo of a plate with pizza, salad and a glass of water
a group of children are playing football on the beach during the sunset
the kitchen has white cabinets, a silver refrigerator and a large window
a train is crossing a bridge over the river near the mountains
there are 2 apples, 3 oranges and 10 bananas on the table.
The meeting starts at 9:30 and ends at 11:45; bring 4 copies of the report.
In 2023, the city built 125 new houses and 7 schools.
Is it raining? No, it's sunny! Let's go outside, shall we?
We've seen the birds; they'll come back in the spring, I'm sure.
The quick brown fox jumps over the lazy dog.
Pack my box with five dozen liquor jugs.
How vexingly quick daft zebras jump!
Visual tokens are compressed before they reach the language model.
The text encoder scores each image patch against the question.
Recoverable compression keeps the most relevant tokens and merges the rest.
Café, naïve, résumé and jalapeño are words with accents.
"""


def _atomic_write(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def build_tiny_sentencepiece(directory: str, vocab_size: int = 400, corpus: str = CORPUS) -> str:
    """Train a LLaMA-style sentencepiece BPE model (byte fallback, ids unk=0 bos=1 eos=2, no pad piece)
    on `corpus` and write `directory`/tokenizer.model. Returns its path. vocab_size must be at least ~330
    (256 byte pieces + 3 specials + every character of the corpus)."""
    import sentencepiece as spm

    os.makedirs(directory, exist_ok=True)
    spm.set_random_generator_seed(1234)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus.splitlines()), model_writer=buf, model_type="bpe",
        vocab_size=vocab_size, byte_fallback=True, character_coverage=1.0, num_threads=1,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, normalization_rule_name="identity",
        add_dummy_prefix=True, remove_extra_whitespaces=False, split_digits=True,
        allow_whitespace_only_pieces=True, shuffle_input_sentence=False, minloglevel=2)
    path = os.path.join(directory, "tokenizer.model")
    _atomic_write(path, buf.getvalue())
    return path


def _learn_merges(n_merges: int, taken: set, corpus: str) -> list:
    b2u = byte_to_unicode()
    words = collections.Counter()
    for line in corpus.splitlines():
        for piece in split_words(basic_clean(line)):
            sym = "".join(b2u[b] for b in piece.encode("utf-8"))
            words[tuple(sym[:-1]) + (sym[-1] + "</w>",)] += 1
    words = dict(words)
    merges = []
    while len(merges) < n_merges:
        counts = collections.Counter()
        for w, c in words.items():
            for pair in zip(w, w[1:]):
                counts[pair] += c
        # Highest count first, ties broken by the pair itself so the result never depends on dict order;
        # a pair whose concatenation is already a token would duplicate a vocabulary entry.
        candidates = sorted((-c, p) for p, c in counts.items() if p[0] + p[1] not in taken)
        if not candidates:
            break
        a, b = candidates[0][1]
        merges.append((a, b))
        taken.add(a + b)
        new_words = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + c
        words = new_words
    return merges


def build_tiny_clip_bpe(directory: str, n_merges: int = 300, corpus: str = CORPUS) -> dict:
    """Write a CLIP-format vocab.json + merges.txt to `directory`. Returns the vocabulary.

    The vocabulary is laid out as openai's: the 256 byte symbols, the same with `</w>`, one token per merge,
    then <|startoftext|> and <|endoftext|> as the last two ids."""
    os.makedirs(directory, exist_ok=True)
    # openai's order: printable bytes first, then the remapped ones, i.e. sorted by the mapped character.
    base = sorted(byte_to_unicode().values())
    tokens = base + [s + "</w>" for s in base]
    merges = _learn_merges(n_merges, set(tokens), corpus)
    tokens += [a + b for a, b in merges]
    tokens += [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == len(tokens)
    _atomic_write(os.path.join(directory, "vocab.json"),
                  json.dumps(vocab, ensure_ascii=False).encode("utf-8"))
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    _atomic_write(os.path.join(directory, "merges.txt"), ("\n".join(lines) + "\n").encode("utf-8"))
    return vocab
