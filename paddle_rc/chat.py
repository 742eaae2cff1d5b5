"""Multi-turn conversation about one image, over a Predictor (what `tools/infer.py --chat` runs).

RC chooses visual tokens with the question's text, so a new turn has two sensible meanings:

- keep (default): the text encoder keeps reading the FIRST question, so every turn sees the visual
  tokens of turn 1. This is what serving engines do when they keep the first turn's KV cache, and the
  conversation stays about one fixed set of tokens.
- recompress: every turn compresses the image again with ITS question, so a follow-up about another
  part of the image can recover the patches it needs; earlier turns are re-read over the new tokens.

Either way each turn runs the whole conversation so far through the LLM (no KV cache is carried between
turns), and a conversation longer than the LLM's context is refused in one line; reset() starts over.
"""
from __future__ import annotations

from typing import List, Tuple


class ChatSession:
    def __init__(self, predictor, image, recompress: bool = False):
        from paddle_rc.data.image import load_image

        self.predictor = predictor
        self.image = load_image(image)
        self.recompress = recompress
        self.history: List[Tuple[str, str]] = []
        self._first_question = None

    def ask(self, question: str, **generation) -> dict:
        """Answer one user turn; the result is answer()'s dict plus `turn` (1, 2, ...)."""
        from paddle_rc.data.conversation import question_for_text_encoder

        if self._first_question is None:
            self._first_question = question_for_text_encoder(question)
        encoder_question = None if self.recompress else self._first_question
        out = self.predictor.answer(self.image, question, question=encoder_question, history=self.history,
                                    **generation)
        self.history.append((question, out["text"]))
        out["turn"] = len(self.history)
        return out

    def reset(self) -> None:
        self.history = []
        self._first_question = None
