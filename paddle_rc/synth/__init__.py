"""A procedural visual-question task whose answers live in small regions named by the question.

Scenes hold 1-2 large salient distractor shapes (never asked about), 3-7 small shapes, at most one
small sign with a printed word and at most one small card with 1-4 dots. Questions ask the colour or shape
of a small object, the sign's word, the number of dots on the card, existence (POPE-adversarial
negatives) or which half of the picture (left/right, top/bottom) a small shape lies in. Deterministic
from a seed; numpy and PIL only.
"""
from paddle_rc.synth.items import SynthItem, generate, item_from, iter_items, make_item
from paddle_rc.synth.questions import Question, all_questions, ask, caption, phrase, prompt, questions_for_scene
from paddle_rc.synth.scene import Scene, SynthObject, generate_scene, render
from paddle_rc.synth.vocab import ANSWERS, COLOURS, IMAGE_SIZE, QTYPES, SHAPES, WORDS


def vocabulary() -> list:
    """Every word that can appear in a question, caption or answer (sorted), for a word-level tokenizer."""
    words = set(COLOURS) | set(SHAPES) | set(WORDS) | {"white"}
    words |= {a for answers in ANSWERS.values() for a in answers}
    templates = ("what color is the small ? what shape is the small object ? what word is on the small sign ? "
                 "how many dots are on the small card ? is there a small ? is the small in the or the half of "
                 "the picture ? a large small sign that says card with dot dots and an empty picture")
    words |= set(templates.split())
    return sorted(words)


__all__ = ["Scene", "SynthObject", "SynthItem", "Question", "generate_scene", "questions_for_scene",
           "all_questions", "ask", "generate", "iter_items", "make_item", "item_from", "phrase", "caption", "prompt",
           "render", "vocabulary", "COLOURS", "SHAPES", "WORDS", "QTYPES", "ANSWERS", "IMAGE_SIZE"]
