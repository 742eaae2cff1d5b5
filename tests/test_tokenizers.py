"""CLIP BPE and LLaMA sentencepiece tokenizers: parity with transformers' slow tokenizers, tiny builders."""
import hashlib
import json
import os

import pytest
import transformers

from paddle_rc.data.clip_tokenizer import CLIPTokenizer
from paddle_rc.data.llama_tokenizer import LlamaTokenizer
from paddle_rc.data.tiny_tokenizers import build_tiny_clip_bpe, build_tiny_sentencepiece
from paddle_rc.errors import UserError


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tok"))
    build_tiny_clip_bpe(d)
    build_tiny_sentencepiece(d)
    return d


CLIP_TEXTS = [
    "a photo of a cat",
    "A PHOTO of a Dog!!!",
    "It's 12:30 -- isn't it? I'd've said 3.14159",
    "  lots\tof\n\nwhitespace\r\n here  ",
    "Café naïve résumé JALAPEÑO",
    "NFD accents: Cafe\u0301 and nai\u0308ve",
    "你好，世界 こんにちは 한국어",
    "emoji 😀🎉 and ✓ symbols ©®",
    "control\x00chars\x07here\ufffd",
    "tabs\u00a0nbsp\u2003emspace",
    "<|startoftext|>hello<|endoftext|> world",
    "'S 'LL 'Re don't can't won't",
    "İstanbul ß ǅ Ω",
    "1st 2nd 3rd 100,000.50$ #hash @at",
    "a'b\"c(d)[e]{f}<g>",
    " ".join(f"word{i}" for i in range(60)),      # > 77 tokens: truncated with EOS kept last
    "x" * 300,
    "",
    "   ",
]


def test_clip_tokenizer_matches_transformers(tok_dir):
    ref = transformers.CLIPTokenizer(os.path.join(tok_dir, "vocab.json"), os.path.join(tok_dir, "merges.txt"))
    assert ref.fix_text is None     # the reference is HF's ftfy-less path
    ours = CLIPTokenizer.from_dir(tok_dir)
    for text in CLIP_TEXTS:
        assert ours.encode(text) == ref(text, truncation=True, max_length=77)["input_ids"], repr(text)
        assert ours.tokenize(text) == ref.tokenize(text), repr(text)
    long_ids = ours.encode(CLIP_TEXTS[15])
    assert len(long_ids) == 77 and long_ids[0] == ours.bos_token_id and long_ids[-1] == ours.eos_token_id
    assert ours.encode("a photo", max_length=3) == ref("a photo", truncation=True, max_length=3)["input_ids"]
    assert len(ours.encode(CLIP_TEXTS[15], truncate=False)) > 77


def test_clip_tokenizer_batch_and_decode(tok_dir):
    ours = CLIPTokenizer.from_dir(tok_dir)
    ids, mask = ours.encode_batch(["a photo of a cat", "dog"], max_length=12)
    assert ids.shape == (2, 12)
    first = ours.encode("a photo of a cat")
    assert ids[0, : len(first)].tolist() == first and mask[0].sum() == len(first)
    assert ids[1, 3:].tolist() == [ours.pad_token_id] * 9 and mask[1].tolist() == [1, 1, 1] + [0] * 9
    assert ours.decode(ours.encode("A photo of a Café, 2023!")) == "a photo of a café , 2 0 2 3 !"


LLAVA_PROMPTS = [
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions. USER: <image>\nWhat is shown in this image? ASSISTANT:",
    "USER: <image>\nDescribe the scene. ASSISTANT: A cat on a table.</s>USER: What color is it? ASSISTANT:",
    "USER: <image>\nWhat is this? ASSISTANT:",
    "no image in this prompt",
    "<image>",
    "<image>\n<image> two images",
    "  leading spaces and trailing  ",
    "unicode 😀 你好 café, numbers 12345",
    "line\nbreaks\n\nmore",
    "<s>literal bos</s> and <unk> tokens",
    "",
]


def _llava_reference(tok, prompt, image_token_index):
    """LLaVA's mm_utils.tokenizer_image_token, written against a transformers tokenizer."""
    chunks = [tok(c).input_ids for c in prompt.split("<image>")]
    out, offset = [], 0
    if chunks and chunks[0] and chunks[0][0] == tok.bos_token_id:
        offset = 1
        out.append(chunks[0][0])
    sep = [image_token_index] * (offset + 1)
    joined = [x for pair in zip(chunks, [sep] * len(chunks)) for x in pair][:-1]
    for x in joined:
        out.extend(x[offset:])
    return out


def test_llama_tokenizer_matches_transformers(tok_dir):
    path = os.path.join(tok_dir, "tokenizer.model")
    ref = transformers.LlamaTokenizer(path, legacy=True)
    ours = LlamaTokenizer(path)
    assert (ours.bos_token_id, ours.eos_token_id, ours.unk_token_id, ours.pad_token_id) == (1, 2, 0, 0)
    for prompt in LLAVA_PROMPTS:
        for chunk in [prompt] + prompt.split("<image>"):
            assert ours.encode(chunk) == ref(chunk).input_ids, repr(chunk)
            assert ours.encode(chunk, add_bos=False) == ref(chunk, add_special_tokens=False).input_ids
        for image_id in (-200, 400):
            assert ours.tokenize_with_image(prompt, image_id) == _llava_reference(ref, prompt, image_id), repr(prompt)
    # the "</s>" closing an assistant turn is the EOS id, not spelled out
    assert 2 in ours.encode("answer.</s>USER:")[1:]


def test_llama_tokenize_with_image_structure(tok_dir):
    ours = LlamaTokenizer(os.path.join(tok_dir, "tokenizer.model"))
    ids = ours.tokenize_with_image("USER: <image>\nWhat? ASSISTANT:", -200)
    assert ids[0] == 1 and ids.count(1) == 1 and ids.count(-200) == 1
    k = ids.index(-200)
    assert ids[1:k] == ours.encode("USER: ", add_bos=False)
    assert ids[k + 1:] == ours.encode("\nWhat? ASSISTANT:", add_bos=False)
    assert ours.tokenize_with_image("<image><image>", 7) == [1, 7, 7]


def test_llama_decode(tok_dir):
    path = os.path.join(tok_dir, "tokenizer.model")
    ref = transformers.LlamaTokenizer(path, legacy=True)
    ours = LlamaTokenizer(path)
    for text in ("The image shows a red bus.", "unicode 😀 你好 café", "line\nbreak", "Yes, 42 apples"):
        ids = ours.encode(text) + [2]
        assert ours.decode(ids) == text
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)
    assert ours.decode([1, -200] + ours.encode("a cat", add_bos=False) + [400, 2]) == "a cat"
    assert ours.decode([1] + ours.encode("a cat", add_bos=False), skip_special=False).startswith("<s>")


def test_llama_tokenizer_from_dir_reads_pad(tmp_path, tok_dir):
    d = tmp_path / "t"
    d.mkdir()
    (d / "tokenizer.model").write_bytes(open(os.path.join(tok_dir, "tokenizer.model"), "rb").read())
    (d / "tokenizer_config.json").write_text(json.dumps({"pad_token_id": 401}))
    assert LlamaTokenizer.from_dir(str(d)).pad_token_id == 401
    with pytest.raises(UserError, match="tokenizer model not found"):
        LlamaTokenizer(str(tmp_path / "missing.model"))


def test_tiny_builders_are_deterministic(tmp_path):
    for name in ("a", "b"):
        build_tiny_sentencepiece(str(tmp_path / name), vocab_size=400)
        build_tiny_clip_bpe(str(tmp_path / name))
    for f in ("tokenizer.model", "vocab.json", "merges.txt"):
        a, b = (hashlib.sha256((tmp_path / n / f).read_bytes()).hexdigest() for n in ("a", "b"))
        assert a == b, f


def test_tiny_clip_vocab_layout(tok_dir):
    vocab = json.load(open(os.path.join(tok_dir, "vocab.json"), encoding="utf-8"))
    merges = open(os.path.join(tok_dir, "merges.txt"), encoding="utf-8").read().strip().split("\n")
    assert merges[0].startswith("#version") and len(merges) - 1 == 300
    assert len(vocab) == 256 * 2 + 300 + 2 and len(set(vocab.values())) == len(vocab)
    assert vocab["<|startoftext|>"] == len(vocab) - 2 and vocab["<|endoftext|>"] == len(vocab) - 1
    assert vocab["!"] == 0 and vocab["!</w>"] == 256       # openai's order
    for line in merges[1:]:
        a, b = line.split()
        assert a + b in vocab
    # frequent corpus words were merged into whole-word tokens
    tok = CLIPTokenizer.from_dir(tok_dir)
    assert tok.tokenize("The image") == ["the</w>", "image</w>"]


def test_tiny_sentencepiece_encodes_anything(tmp_path):
    path = build_tiny_sentencepiece(str(tmp_path), vocab_size=360)
    tok = LlamaTokenizer(path)
    assert tok.vocab_size == 360
    text = "Ünïcødé ✓ 😀 漢字 \t tabs"
    ids = tok.encode(text)
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text
