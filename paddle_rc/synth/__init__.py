"""A procedural visual-question task whose answers live in small regions named by the question.

Scenes hold 1-2 large salient distractor shapes (never asked about), 3-7 small shapes and at most one
small sign with a printed word. Questions ask the colour or shape of a small object, the sign's word, a
count, existence (POPE-adversarial negatives) or a left/right/above/below relation. Deterministic from a
seed; numpy and PIL only.
"""
from paddle_rc.synth.items import SynthItem, generate, item_from, iter_items, make_item
from paddle_rc.synth.questions import Question, all_questions, ask, caption, phrase, prompt, questions_for_scene
from paddle_rc.synth.scene import Scene, SynthObject, generate_scene, render
from paddle_rc.synth.vocab import ANSWERS, COLOURS, IMAGE_SIZE, QTYPES, SHAPES, WORDS


def vocabulary() -> list:
    """Every word that can appear in a question, caption or answer (sorted), for a word-level tokenizer."""
    from paddle_rc.synth import vocab as V
    words = set(COLOURS) | set(SHAPES) | set(WORDS) | set(V.PLURALS.values()) | {"white"}
    words |= {a for answers in ANSWERS.values() for a in answers}
    templates = ("what color is the small ? what shape is the small object ? what word is on the small sign ? "
                 "how many small are there ? is there a small ? is the small to the left of the small ? "
                 "to the right of above below a large small sign that says and an empty picture")
    words |= set(templates.split())
    return sorted(words)


__all__ = ["Scene", "SynthObject", "SynthItem", "Question", "generate_scene", "questions_for_scene",
           "all_questions", "ask", "generate", "iter_items", "make_item", "item_from", "phrase", "caption", "prompt",
           "render", "vocabulary", "COLOURS", "SHAPES", "WORDS", "QTYPES", "ANSWERS", "IMAGE_SIZE"]
