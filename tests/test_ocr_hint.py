"""rc's ocr_hint option: TextVQA's "Reference OCR token" line reaches the text encoder only when
asked; the question otherwise stops before it (the paper's behaviour)."""
import pytest

from paddle_rc.data.conversation import ocr_hint, question_for_text_encoder

PROMPT = "what brand is the bottle?\nReference OCR token: Coca, Cola, 330ml\nAnswer the question using a single word or phrase."


def test_ocr_line_is_found_and_cut_by_default():
    assert ocr_hint(PROMPT) == "Reference OCR token: Coca, Cola, 330ml"
    assert ocr_hint("what is this?") == ""
    assert question_for_text_encoder(PROMPT) == "what brand is the bottle?"


@pytest.mark.parametrize("hint", [False, True])
def test_the_text_encoder_sees_the_ocr_line_only_with_the_option(hint, monkeypatch):
    from paddle_rc.predictor import build_predictor

    pred = build_predictor(method="rc", ocr_hint=hint)
    seen = []
    original = pred.text_embeddings

    def spy(questions, prompts):
        seen.extend(questions)
        return original(questions, prompts)

    monkeypatch.setattr(pred, "text_embeddings", spy)
    pred.answer_batch([__import__("paddle_rc.demo", fromlist=["demo_image"]).demo_image()], [PROMPT],
                      [question_for_text_encoder(PROMPT)], max_new_tokens=1)
    want = "what brand is the bottle?" + (" Reference OCR token: Coca, Cola, 330ml" if hint else "")
    assert seen == [want]
