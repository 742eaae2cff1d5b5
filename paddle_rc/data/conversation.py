"""Prompt templates of LLaVA-1.5 and the question text RC's text encoder sees."""
from __future__ import annotations

import re
from dataclasses import dataclass

from paddle_rc.errors import UserError

IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class Template:
    system: str
    user: str
    assistant: str

    def prompt(self, user_text: str, with_image: bool = True, history=()) -> str:
        """The conversation so far, ready for the assistant's answer ("... ASSISTANT:").

        `history`: earlier (user, assistant) turns, oldest first. As in LLaVA's vicuna_v1 template an
        answer ends with "</s>" (the tokenizer reads it as EOS), and the image placeholder goes into
        the first user turn (before its text, unless written elsewhere)."""
        turns = [list(t) for t in history] + [[user_text, None]]
        count = sum(u.count(IMAGE_PLACEHOLDER) for u, _ in turns)
        if count > 1:
            raise UserError(f"the question holds {IMAGE_PLACEHOLDER} {count} times; LLaVA-1.5 takes one "
                            f"image: write {IMAGE_PLACEHOLDER} at most once (where the image goes; default: "
                            "before the first question)")
        if with_image and count == 0:
            turns[0][0] = IMAGE_PLACEHOLDER + "\n" + turns[0][0]
        text = f"{self.system} " if self.system else ""
        for user, answer in turns[:-1]:
            text += f"{self.user}: {user} {self.assistant}: {answer}</s>"
        return text + f"{self.user}: {turns[-1][0]} {self.assistant}:"


TEMPLATES = {
    # LLaVA's conv_vicuna_v1, the default of the original checkpoints.
    "vicuna_v1": Template(
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions.",
        "USER", "ASSISTANT"),
    # LLaVA's conv_llava_v1 ("human" where vicuna_v1 says "user").
    "llava_v1": Template(
        "A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions.",
        "USER", "ASSISTANT"),
    # The llava-hf model card's form: no system prompt.
    "llava_hf": Template("", "USER", "ASSISTANT"),
}


def get_template(conv_mode: str) -> Template:
    try:
        return TEMPLATES[conv_mode]
    except KeyError:
        raise UserError(f"unknown conversation mode {conv_mode!r}; choose from: "
                        f"{', '.join(TEMPLATES)}") from None


# Answer-format instructions that benchmark prompts append; they say nothing about the image.
_FORMAT_SUFFIXES = [
    r"Answer the question using a single word or phrase\.?",
    r"Answer with the option's letter from the given choices directly\.?",
    r"请直接回答选项字母。?",
    r"Please answer yes or no\.?",
    r"Reference OCR token:.*",
]
_SUFFIX_RE = re.compile(r"\s*(?:" + "|".join(_FORMAT_SUFFIXES) + r")\s*$", re.DOTALL)


def question_for_text_encoder(user_text: str) -> str:
    """The user's question with the image placeholder and answer-format instructions removed."""
    text = user_text.replace(IMAGE_PLACEHOLDER, " ")
    while True:
        stripped = _SUFFIX_RE.sub("", text)
        if stripped == text:
            break
        text = stripped
    return " ".join(text.split())


_OCR_RE = re.compile(r"Reference OCR token:[^\n]*")


def ocr_hint(user_text: str) -> str:
    """The "Reference OCR token: ..." line of LLaVA's TextVQA prompt, or "" when there is none."""
    m = _OCR_RE.search(user_text)
    return " ".join(m.group(0).split()) if m else ""
