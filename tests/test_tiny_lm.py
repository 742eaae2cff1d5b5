"""The trained tiny model (paddle_rc.benchmark.tiny_lm) and masked logits agreement: the int8
target of 99% top-1 agreement is measured on this model, so it is held here as a test."""
import os

import numpy as np
import pytest

from paddle_rc.benchmark.quant_eval import logits_errors


def test_logits_errors_counts_only_real_positions():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((2, 4, 5)).astype(np.float32)
    out = ref.copy()
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]])
    # Row 1's padded positions disagree wildly: they must not count.
    out[1, 2:] = -ref[1, 2:] * 100
    # Row 0 position 1 flips its argmax; row 1's last real position (1) keeps it.
    j = ref[0, 1].argmin()
    out[0, 1, j] = ref[0, 1].max() + 1.0
    e = logits_errors(ref, out, mask)
    assert e["positions"] == 6 and e["prompts"] == 2
    assert e["top1_all"] == pytest.approx(5 / 6)
    assert e["top1_last"] == 1.0
    assert e["max_abs"] == pytest.approx(ref[0, 1].max() + 1.0 - ref[0, 1, j])
    # Row 0's last position flipped instead: top1_last sees it.
    out2 = ref.copy()
    out2[0, 3, ref[0, 3].argmin()] = ref[0, 3].max() + 1.0
    assert logits_errors(ref, out2, mask)["top1_last"] == 0.5
    # Without a mask every position counts.
    assert logits_errors(ref, out)["positions"] == 8
    with pytest.raises(ValueError, match="right-padded"):
        logits_errors(ref, out, mask[:, ::-1])


def test_corpus_prompts_are_right_padded_lines(random_model):
    from paddle_rc.benchmark.tiny_lm import corpus_batch, corpus_prompts
    from paddle_rc.data.llama_tokenizer import LlamaTokenizer
    from paddle_rc.data.tiny_tokenizers import CORPUS

    tok = LlamaTokenizer.from_dir(os.path.join(random_model, "tokenizer"))
    ids, mask = corpus_batch(tok)
    lines = [line for line in CORPUS.splitlines() if line.strip()]
    assert ids.shape[0] == len(lines)
    lengths = mask.sum(axis=1)
    for row, line, n in zip(ids, lines, lengths):
        assert list(row[:n]) == tok.encode(line) + [tok.eos_token_id]
        assert (row[n:] == tok.eos_token_id).all()
    assert (np.cumsum(1 - mask, axis=1)[mask == 1] == 0).all()  # padding only after the text
    _, eval_mask = corpus_prompts(tok)
    assert (eval_mask.sum(axis=1) == lengths - 1).all()  # the EOS position predicts nothing trained
    assert (eval_mask <= mask).all()


def test_trained_tiny_model_meets_int8_agreement_target(tmp_path, random_model):
    """Issue target: int8 top-1 agreement with fp32 >= 99% on the tiny model, measured on the random
    576-patch test model with its LLM trained so that it has real (peaked) next-token distributions."""
    from paddle_rc.benchmark.quant_eval import _logits, quant_configs
    from paddle_rc.benchmark.tiny_lm import corpus_prompts, write_trained_demo
    from paddle_rc.data.llama_tokenizer import LlamaTokenizer
    from paddle_rc.models import LlavaForConditionalGeneration
    from paddle_rc.quant.checkpoint import quantize_checkpoint

    trained = str(tmp_path / "trained")
    info = write_trained_demo(trained, steps=80, src=random_model)
    assert info["final_loss"] < 0.2 < 5.0 < info["first_loss"]
    assert sorted(os.listdir(tmp_path)) == ["trained"]  # no temporary folder left behind
    fp32 = LlavaForConditionalGeneration.from_pretrained(trained)
    assert fp32.config.source == "demo-trained"
    dst = str(tmp_path / "int8")
    quantize_checkpoint(trained, dst, quant_configs()["int8"])
    ids, mask = corpus_prompts(LlamaTokenizer.from_dir(os.path.join(trained, "tokenizer")))
    ref = _logits(fp32, ids, 16)
    # The model has learnt the corpus: fp32 predicts nearly every next token.
    assert ((ref.argmax(-1)[:, :-1] == ids[:, 1:])[mask[:, :-1] == 1]).mean() > 0.95
    err = logits_errors(ref, _logits(LlavaForConditionalGeneration.from_pretrained(dst), ids, 16), mask)
    assert err["max_abs"] > 0
    assert err["top1_all"] >= 0.99
