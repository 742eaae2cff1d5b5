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

    def prompt(self, user_text: str, with_image: bool = True) -> str:
        """One user turn, ready for the assistant's answer ("... ASSISTANT:")."""
        if with_image and IMAGE_PLACEHOLDER not in user_text:
            user_text = IMAGE_PLACEHOLDER + "\n" + user_text
        head = f"{self.system} " if self.system else ""
        return f"{head}{self.user}: {user_text} {self.assistant}:"


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
