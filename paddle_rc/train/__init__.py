"""Training the demo model: a small LLaVA-1.5 trained on this machine on the synthetic VQA task."""
from __future__ import annotations

import json
import os
import time

from paddle_rc.train.recipe import Recipe, model_config

CARD = "MODEL_CARD.md"
LOG = "train_log.json"
# what a probe name means in the model card
_PROBE_NAMES = {"objword": "the sign's word or the card's dots from its mean patch"}


def evaluate_model(model_dir: str, seed: int, n: int, method: str = "none", budget=None, batch: int = 16) -> dict:
    """Exact-match accuracy (after the VQA answer normalisation) on generate(seed, n), overall and per
    question type, through the same predictor the tools use."""
    from paddle_rc.eval.normalize import vqa_normalize_prediction
    from paddle_rc.predictor import build_predictor
    from paddle_rc.synth import QTYPES, generate

    predictor = build_predictor(model_dir, method=method, budget=budget)
    items = generate(seed, n)
    right = {t: [0, 0] for t in QTYPES}
    tokens = 0
    for i in range(0, n, batch):
        chunk = items[i:i + batch]
        outs = predictor.answer_batch([it.image for it in chunk], [it.question for it in chunk], max_new_tokens=4)
        for it, out in zip(chunk, outs):
            right[it.qtype][1] += 1
            right[it.qtype][0] += int(vqa_normalize_prediction(out["text"]) == it.answer)
            tokens += out["visual_tokens"]
    total = sum(v[0] for v in right.values()), sum(v[1] for v in right.values())
    return {"seed": seed, "questions": n, "method": method, "budget": budget,
            "accuracy": round(100.0 * total[0] / max(1, total[1]), 2),
            "per_type": {t: round(100.0 * v[0] / max(1, v[1]), 2) for t, v in right.items() if v[1]},
            "mean_visual_tokens": round(tokens / max(1, n), 1)}


def train_demo(out_dir: str, recipe: Recipe, evaluate: bool = True) -> dict:
    """Train (or resume) into out_dir, write the checkpoint, evaluate it, write the model card."""
    from paddle_rc.train.trainer import DemoTrainer

    t0 = time.perf_counter()
    trainer = DemoTrainer(out_dir, recipe)
    state = trainer.run()
    if not hasattr(trainer, "model"):  # finished and cleaned up by an earlier run
        with open(os.path.join(out_dir, LOG), encoding="utf-8") as f:
            return json.load(f)
    trainer.write_checkpoint()
    log = {"recipe": recipe.to_dict(), "train_seconds": round(state["seconds"], 1),
           "stage1": _loss_summary(state["losses"]["clip"]), "stage2": _loss_summary(state["losses"]["llm"]),
           "probe": {k: round(100.0 * sum(v[-50:]) / len(v[-50:]), 1) for k, v in state.get("probe", {}).items() if v}}
    if evaluate:
        log["heldout"] = evaluate_model(out_dir, recipe.eval_seed, recipe.eval_items)
    log["wall_seconds_this_run"] = round(time.perf_counter() - t0, 1)
    _write(os.path.join(out_dir, LOG), json.dumps(log, indent=2) + "\n")
    _write(os.path.join(out_dir, CARD), model_card(log))
    trainer.drop_resume_state()
    return log


def chance_accuracy() -> float:
    """Accuracy of a uniform guess among each question type's answers, types weighted equally."""
    from paddle_rc.synth import ANSWERS, QTYPES

    return 100.0 * sum(1.0 / len(ANSWERS[t]) for t in QTYPES) / len(QTYPES)


def _loss_summary(losses: list) -> dict:
    if not losses:
        return {}
    k = max(1, len(losses) // 20)
    return {"steps": len(losses), "first": round(sum(losses[:k]) / k, 4), "last": round(sum(losses[-k:]) / k, 4),
            "curve": [round(sum(losses[i:i + k]) / len(losses[i:i + k]), 4) for i in range(0, len(losses), k)]}


def _write(path: str, text: str) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def model_card(log: dict) -> str:
    r = Recipe.from_dict(log["recipe"])
    grid = r.image_size // r.patch_size
    lines = [
        "# synthvqa-demo: a small LLaVA-1.5 trained on the synthetic VQA task",
        "",
        "Made by `python tools/train_demo.py --out DIR --seed %d` (paddle_rc/train/), on 2 CPU cores." % r.seed,
        "",
        "## Architecture",
        f"LLaVA-1.5's: CLIP ViT ({r.vision_layers} layers, width {r.vision_width}, {r.image_size} px in "
        f"{r.patch_size} px patches = {grid * grid} visual tokens; feature layer -2), CLIP text tower "
        f"({r.text_layers} layers, width {r.text_width}), projections to {r.projection_dim}, mlp2x_gelu "
        f"projector, LLaMA ({r.llm_layers} layers, width {r.llm_width}, {r.llm_heads} heads), vicuna_v1 "
        "template, sentencepiece and CLIP BPE tokenizers built from the task's text. 224 px instead of "
        "336 px: at 577 tokens a ViT training step cost about 3-4x one at 257 here (measured ad hoc), past the time limit.",
        "",
        "## Data",
        "Procedural scenes of `paddle_rc.synth` (336 px: 1-2 large distractors, 3-7 small shapes, at most "
        "one small sign with a word and one small card with 1-4 dots), one question per scene, balanced over the six question types and their answers; "
        "a fresh scene for every training example (the stream seeds are far from any benchmark seed).",
        "",
        "## Training",
        f"Stage 1, {r.stage1_steps} steps x {r.stage1_batch} images (lr {r.stage1_lr}): CLIP's contrastive "
        "loss between the image (CLS) and its caption, which names only the large objects; an auxiliary "
        "patch-text alignment loss between the projected last-layer patches (RC's P) and texts naming an "
        "object (its phrase, and any question about it), text-to-patch and patch-to-phrase; and auxiliary "
        "linear per-patch attribute heads (colour, shape, word, size, centre, row, column) on the feature "
        "layer, discarded after training, with each object's patches weighted 1 in all and the background "
        "0.5 in all, so that the small objects' attributes reach the tokens the LLM reads"
        + (f"; and the colour, shape and word heads again on each small object's mean feature-layer patch "
           f"(the word on the signs and the number of dots on the cards only; weight {r.object_label_weight}, "
           "discarded after training), which taught the tower to read the sign's word as a whole"
           if r.object_label_weight > 0 else "") + ".",
        f"Stage 2, {r.stage2_steps} steps x {r.stage2_batch} questions (lr {r.stage2_lr}): towers frozen, "
        "projector + LLaMA trained on the reply tokens with all visual tokens (no compression in training: "
        "compression is training-free), plus two auxiliary attention-target losses on the position that "
        f"predicts the reply: in decoder layer 0 it should read the question's tokens (weight {r.question_weight}, "
        f"from step {r.question_start} on), "
        f"in layers 1 and up the asked objects' visual tokens (grounding, weight {r.grounding_weight}); "
        "linear heads on that position's hidden state after layers 1 and up, which should tell the asked "
        f"objects' colour, shape and word or dots (weight {r.query_label_weight}, discarded after training); "
        "and the attribute heads again, on the projector's "
        f"output (weight {r.token_label_weight}, discarded after training). Half the prompts end with \"Answer the question using "
        "a single word or phrase.\"",
        "",
        "| stage | steps | loss, first 5% | loss, last 5% |",
        "|---|---|---|---|",
        f"| 1 (CLIP) | {log['stage1'].get('steps')} | {log['stage1'].get('first')} | {log['stage1'].get('last')} |",
        f"| 2 (LLM) | {log['stage2'].get('steps')} | {log['stage2'].get('first')} | {log['stage2'].get('last')} |",
        "",
        f"Training time: {log['train_seconds'] / 60:.1f} min (2 cores).",
    ]
    if log.get("probe"):
        p = log["probe"]
        lines += ["", "What the visual tokens carry, on the small objects' patches (% right, last 50 steps of the "
                  "stage; each batch is scored before the update on it, so these are held-out figures): "
                  "linear heads on the feature layer (stage 1) "
                  + ", ".join(f"{_PROBE_NAMES.get(k[6:], k[6:])} {v}" for k, v in p.items() if k.startswith("probe_"))
                  + "; linear heads on the projector's output (stage 2) "
                  + ", ".join(f"{k[4:]} {v}" for k, v in p.items() if k.startswith("tok_")) + "."]
    if "heldout" in log:
        h = log["heldout"]
        lines += ["", "## Held-out accuracy",
                  f"`generate(seed={h['seed']}, n={h['questions']})`, method `{h['method']}` (all visual tokens), "
                  "exact match after the VQA answer normalisation:", "",
                  "| overall | " + " | ".join(h["per_type"]) + " |",
                  "|---|" + "---|" * len(h["per_type"]),
                  f"| {h['accuracy']} | " + " | ".join(str(v) for v in h["per_type"].values()) + " |",
                  "", f"Guessing uniformly among each type's answers would score {chance_accuracy():.1f}% "
                  "(balanced question types)."]
    lines += ["", "## Limits",
              "A toy world: six colours, five shapes, eight words, one to four dots. It exists to make accuracy "
              "measurable on this machine, not to answer questions about real photographs."]
    return "\n".join(lines) + "\n"


__all__ = ["Recipe", "model_config", "train_demo", "evaluate_model", "model_card", "chance_accuracy"]
