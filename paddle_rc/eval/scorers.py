"""Official-rule scorers, one small named function per rule.

Every function here works on plain Python values (strings, lists, dicts) so that it can be
checked by hand against the official scripts. Percentages are 0-100 unless a name says
``ratio``. Missing answers are scored the way the official tools do: as wrong.
"""
import re
import string
from collections import defaultdict

from .normalize import (evalai_process, vqa_normalize_prediction, vqa_process_punctuation)

SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."

# --------------------------------------------------------------------------- VQAv2


def vqa_accuracy(prediction, gt_answers):
    """One question's VQA accuracy (0..1) exactly as the official vqaEval.py computes it.

    ``gt_answers`` are the 10 raw human answers. The prediction gets punctuation and
    digit/article processing; the ground truths get punctuation processing only, and only
    when they are not all identical. Each GT is left out in turn and the prediction scores
    min(1, matches among the other 9 / 3); the question score is the mean.
    """
    pred = vqa_normalize_prediction(prediction)
    gts = list(gt_answers)
    if len(set(gts)) > 1:
        gts = [vqa_process_punctuation(g) for g in gts]
    if not gts:
        return 0.0
    accs = []
    for i in range(len(gts)):
        others = gts[:i] + gts[i + 1:]
        accs.append(min(1.0, sum(1 for g in others if g == pred) / 3.0))
    return sum(accs) / len(accs)


def score_vqav2(predictions, ground_truth):
    """``predictions``: {qid: text or None}; ``ground_truth``: {qid: {answers, answer_type,
    question_type}}. LLaVA runs the MMF EvalAI processor on the text before it is submitted,
    so the same happens here before vqaEval's own normalisation."""
    per_q, by_atype, by_qtype = {}, defaultdict(list), defaultdict(list)
    for qid, gt in ground_truth.items():
        text = predictions.get(qid)
        acc = 0.0 if text is None else vqa_accuracy(evalai_process(text), gt["answers"])
        per_q[qid] = acc
        by_atype[gt.get("answer_type", "unknown")].append(acc)
        by_qtype[gt.get("question_type", "unknown")].append(acc)

    def pct(xs):
        return round(100.0 * sum(xs) / len(xs), 2) if xs else 0.0

    return {"overall": pct(list(per_q.values())),
            "per_answer_type": {k: pct(v) for k, v in sorted(by_atype.items())},
            "per_question_type": {k: pct(v) for k, v in sorted(by_qtype.items())},
            "n": len(per_q), "n_missing": sum(1 for q in ground_truth if predictions.get(q) is None)}


def vqav2_submission(predictions, all_question_ids):
    """EvalAI upload list as LLaVA's convert_vqav2_for_submission.py builds it: every question
    of the split, the processed answer, or '' where there is none."""
    return [{"question_id": qid,
             "answer": evalai_process(predictions[qid]) if predictions.get(qid) is not None else ""}
            for qid in all_question_ids]


# --------------------------------------------------------------------------- TextVQA


def textvqa_answer_scores(gt_answers):
    """{processed unique GT answer: mean over leave-one-out subsets of min(1, matches/3)}."""
    answers = [evalai_process(a) for a in gt_answers]
    scores = {}
    for unique in set(answers):
        accs = []
        for i in range(len(answers)):
            others = answers[:i] + answers[i + 1:]
            accs.append(min(1.0, sum(1 for a in others if a == unique) / 3.0))
        scores[unique] = sum(accs) / len(accs) if accs else 0.0
    return scores


def textvqa_accuracy(prediction, gt_answers):
    """m4c ``TextVQAAccuracyEvaluator`` for one question (0..1)."""
    return textvqa_answer_scores(gt_answers).get(evalai_process(prediction), 0.0)


def score_textvqa(predictions, ground_truth):
    accs = [0.0 if predictions.get(k) is None else textvqa_accuracy(predictions[k], gt["answers"])
            for k, gt in ground_truth.items()]
    return {"accuracy": 100.0 * sum(accs) / len(accs) if accs else 0.0, "n": len(accs),
            "n_missing": sum(1 for k in ground_truth if predictions.get(k) is None)}


# --------------------------------------------------------------------------- GQA


def gqa_normalize(text):
    """LLaVA's convert_gqa_for_eval.py: ``text.rstrip('.').lower()``."""
    return text.rstrip(".").lower()


def score_gqa(predictions, ground_truth):
    """Exact match against the GQA ``answer`` field (official eval.py accuracy)."""
    hits, by_type = [], defaultdict(list)
    for qid, gt in ground_truth.items():
        text = predictions.get(qid)
        hit = float(text is not None and gqa_normalize(text) == gt["answer"])
        hits.append(hit)
        by_type[gt.get("structural") or "unknown"].append(hit)
    return {"accuracy": 100.0 * sum(hits) / len(hits) if hits else 0.0,
            "per_structural_type": {k: 100.0 * sum(v) / len(v) for k, v in sorted(by_type.items())},
            "n": len(hits), "n_missing": sum(1 for q in ground_truth if predictions.get(q) is None)}


# --------------------------------------------------------------------------- POPE


def pope_parse_llava(text):
    """LLaVA eval_pope.py: first sentence, commas removed, split on single spaces; 'no' if a
    token is exactly 'No', 'not' or 'no', else 'yes' (so 'NO' or 'Not' parse as yes)."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def binary_metrics(preds, labels):
    """Confusion counts and metrics with 'yes' as the positive class (eval_pope.py)."""
    tp = sum(1 for p, l in zip(preds, labels) if p == "yes" and l == "yes")
    fp = sum(1 for p, l in zip(preds, labels) if p == "yes" and l == "no")
    tn = sum(1 for p, l in zip(preds, labels) if p == "no" and l == "no")
    fn = sum(1 for p, l in zip(preds, labels) if p == "no" and l == "yes")
    n = len(preds)
    # The official script divides by zero on degenerate splits; report 0 instead of crashing.
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"TP": tp, "FP": fp, "TN": tn, "FN": fn, "n": n,
            "accuracy": (tp + tn) / n if n else 0.0, "precision": precision, "recall": recall,
            "f1": f1, "yes_ratio": sum(1 for p in preds if p == "yes") / n if n else 0.0}


def score_pope(predictions, ground_truth):
    """LLaVA protocol: per split metrics, headline = mean F1 over the splits (x100).

    ``ground_truth``: {key: {"label": "yes"|"no", "category": split}}. A missing answer is
    parsed from the empty string, which eval_pope.py would call 'yes'; it is counted in
    ``n_missing`` so that it is visible.
    """
    by_split = defaultdict(lambda: ([], []))
    for key, gt in ground_truth.items():
        text = predictions.get(key)
        preds, labels = by_split[gt["category"]]
        preds.append(pope_parse_llava(text if text is not None else ""))
        labels.append("no" if gt["label"] == "no" else "yes")
    splits = {s: binary_metrics(p, l) for s, (p, l) in sorted(by_split.items())}
    f1s = [m["f1"] for m in splits.values()]
    accs = [m["accuracy"] for m in splits.values()]
    return {"f1_mean": 100.0 * sum(f1s) / len(f1s) if f1s else 0.0,
            "accuracy_mean": 100.0 * sum(accs) / len(accs) if accs else 0.0,
            "splits": splits,
            "n_missing": sum(1 for k in ground_truth if predictions.get(k) is None)}


def score_pope_lmms(predictions, ground_truth):
    """lmms-eval ``pope``: exact match of ``pred.lower().strip()``, pooled over all splits.

    Only exact 'yes'/'no' predictions enter precision/recall; lmms-eval's ``yes_ratio`` counts
    the *ground-truth* yes share (that is what its aggregate computes), reproduced here."""
    rows = []
    for key, gt in ground_truth.items():
        text = predictions.get(key)
        rows.append(((text or "").lower().strip(), gt["label"].lower().strip()))
    n = len(rows)
    tp = sum(1 for p, g in rows if g == "yes" and p == "yes")
    fp = sum(1 for p, g in rows if g == "no" and p == "yes")
    fn = sum(1 for p, g in rows if g == "yes" and p == "no")
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {"accuracy": sum(1 for p, g in rows if p == g) / n if n else 0.0,
            "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "yes_ratio": sum(1 for _, g in rows if g == "yes") / n if n else 0.0}


# --------------------------------------------------------------------------- MME

MME_PERCEPTION = ["existence", "count", "position", "color", "posters", "celebrity", "scene",
                  "landmark", "artwork", "OCR"]
MME_COGNITION = ["commonsense_reasoning", "numerical_calculation", "text_translation",
                 "code_reasoning"]


def mme_parse(text):
    """calculation.py: lower-case; exact yes/no, else 'yes'/'no' inside the first 4 chars
    (yes first), else 'other' (always wrong)."""
    t = text.lower()
    if t in ("yes", "no"):
        return t
    head = t[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def score_mme(predictions, ground_truth):
    """``ground_truth``: {key: {"answer": "Yes"/"No", "category": subtask, "image": image id}}.

    Per subtask: acc = % questions right, acc+ = % images with both questions right, score =
    acc + acc+ (max 200). Perception = sum of the 10, cognition = sum of the 4 (missing
    subtasks add 0 and are listed)."""
    per_cat = defaultdict(lambda: defaultdict(list))
    for key, gt in ground_truth.items():
        text = predictions.get(key)
        hit = text is not None and mme_parse(text) == gt["answer"].lower()
        per_cat[gt["category"]][gt["image"]].append(hit)
    subtasks = {}
    for cat, images in sorted(per_cat.items()):
        hits = [h for v in images.values() for h in v]
        acc = 100.0 * sum(hits) / len(hits)
        acc_plus = 100.0 * sum(1 for v in images.values() if all(v)) / len(images)
        subtasks[cat] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus,
                         "n_questions": len(hits), "n_images": len(images)}
    perception = sum(subtasks[c]["score"] for c in MME_PERCEPTION if c in subtasks)
    cognition = sum(subtasks[c]["score"] for c in MME_COGNITION if c in subtasks)
    return {"perception": perception, "cognition": cognition, "total": perception + cognition,
            "subtasks": subtasks,
            "missing_subtasks": [c for c in MME_PERCEPTION + MME_COGNITION if c not in subtasks],
            "n_missing": sum(1 for k in ground_truth if predictions.get(k) is None)}


# --------------------------------------------------------------------------- ScienceQA

SQA_OPTIONS = ["A", "B", "C", "D", "E"]
_SQA_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def sqa_parse(text, options=SQA_OPTIONS):
    """LLaVA eval_science_qa.py: a bare option letter; else 'X. ' at the start; else exactly one
    match of ``The answer is ([A-Z]).`` (the '.' there is any character); else 'FAILED'."""
    if text in options:
        return text
    if len(text) >= 3 and text[0] in options and text[1:3] == ". ":
        return text[0]
    found = _SQA_ANSWER_IS.findall(text)
    if len(found) == 1:
        return found[0]
    return "FAILED"


def sqa_pred_index(letter, n_choices, options=SQA_OPTIONS):
    """-1 (wrong) unless the letter is one of the first ``n_choices`` options; the official
    random fallback is disabled."""
    return options.index(letter) if letter in options[:n_choices] else -1


def score_sqa(predictions, ground_truth):
    """``ground_truth``: {pid: {"answer": int, "n_choices": int, "multimodal": bool}}."""
    rows = []
    for pid, gt in ground_truth.items():
        text = predictions.get(pid)
        letter = sqa_parse(text) if text is not None else "FAILED"
        rows.append((sqa_pred_index(letter, gt["n_choices"]) == gt["answer"], gt["multimodal"],
                     letter == "FAILED"))
    img = [ok for ok, mm, _ in rows if mm]
    return {"img_accuracy": 100.0 * sum(img) / len(img) if img else 0.0,
            "accuracy": 100.0 * sum(ok for ok, _, _ in rows) / len(rows) if rows else 0.0,
            "n": len(rows), "n_img": len(img), "n_failed": sum(f for _, _, f in rows),
            "n_missing": sum(1 for k in ground_truth if predictions.get(k) is None)}


# --------------------------------------------------------------------------- MMBench


def mmbench_infer_option(answer, num_choice=5):
    """lmms-eval / VLMEvalKit ``can_infer_option``: exactly one standalone capital letter among
    the whitespace tokens (unless 'A' may be an article in a longer answer), else exactly one
    decorated form such as 'A.', 'A)', '(A)', ':A'. Returns the letter or None."""
    choices = string.ascii_uppercase[:num_choice]
    if "Failed to obtain answer via API" in answer:
        return None
    tokens = [t.strip() for t in answer.split()]

    def count(prefix="", suffix=""):
        return sum(1 for c in choices if prefix + c + suffix in tokens)

    if count() == 1:
        for c in choices:
            if "A" in tokens and len(tokens) > 3:
                break  # "A" may be the article; fall through to the decorated forms
            if c in tokens:
                return c
    for prefix, suffix in [("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"),
                           ("(", ")."), (":", ""), (":", ","), (":", "."), (":", ")"),
                           (":", ").")]:
        if count(prefix, suffix) == 1:
            for c in choices:
                if prefix + c + suffix in tokens:
                    return c
    return None


def mmbench_infer_text(answer, choices):
    """``can_infer_text``: exactly one option's text (lower-cased) occurs in the answer."""
    low = answer.lower()
    hits = [k for k, v in choices.items() if str(v).lower() in low]
    return hits[0] if len(hits) == 1 else None


def mmbench_extract(answer, choices):
    """Option letter by the two rules, or None when neither maps (the official tool would ask
    a GPT judge here; this harness has none)."""
    return mmbench_infer_option(answer) or mmbench_infer_text(answer, choices)


def mmbench_round_answer(answer_letter, n_options, round_idx):
    """Letter of the right option in a round where options were rotated ``round_idx`` times
    (LLaVA --all-rounds: ``options = options[1:] + options[:1]`` after each round)."""
    i = string.ascii_uppercase.index(answer_letter)
    return string.ascii_uppercase[(i - round_idx) % n_options]


def score_mmbench(predictions, ground_truth):
    """CircularEval: a question counts only if every round is right. An answer neither rule
    maps counts as wrong and is reported in ``unmapped_ratio``.

    ``ground_truth``: {key: {"index", "round", "answer" (letter for that round), "choices"
    ({letter: text} as shown in that round), "category", "l2_category"}}."""
    groups = defaultdict(list)
    n_answers = unmapped = 0
    for key, gt in ground_truth.items():
        text = predictions.get(key)
        letter = mmbench_extract(text, dict(gt["choices"])) if text is not None else None
        if text is not None:
            n_answers += 1
            unmapped += letter is None
        groups[gt["index"]].append((gt, letter))
    hits, by_cat, by_l2, single = [], defaultdict(list), defaultdict(list), []
    for idx, rounds in sorted(groups.items()):
        ok = all(letter is not None and letter == gt["answer"] for gt, letter in rounds)
        hits.append(ok)
        gt0 = rounds[0][0]
        by_cat[gt0.get("category", "")].append(ok)
        by_l2[gt0.get("l2_category", "")].append(ok)
        first = [letter == gt["answer"] for gt, letter in rounds if gt["round"] == 0]
        single.extend(first)

    def pct(v):
        return 100.0 * sum(v) / len(v) if v else 0.0

    return {"circular_accuracy": pct(hits), "round0_accuracy": pct(single),
            "per_category": {k: pct(v) for k, v in sorted(by_cat.items())},
            "per_l2_category": {k: pct(v) for k, v in sorted(by_l2.items())},
            "n_questions": len(hits), "n_answers": n_answers, "n_unmapped": unmapped,
            "unmapped_ratio": unmapped / n_answers if n_answers else 0.0,
            "n_missing": sum(1 for k in ground_truth if predictions.get(k) is None)}


# --------------------------------------------------------------------------- SynthVQA


def score_synthvqa(predictions, ground_truth):
    """``ground_truth``: {uid: {"answer": one lower-case word or digit, "qtype": str}}. Exact match
    of the prediction after the VQAv2 prediction normalisation ("Two." -> "2", "Yes" -> "yes",
    articles dropped), overall and per question type; a missing answer is wrong."""
    hits, by_type = [], defaultdict(list)
    for uid, gt in ground_truth.items():
        text = predictions.get(uid)
        ok = 0.0 if text is None else float(vqa_normalize_prediction(text) == gt["answer"])
        hits.append(ok)
        by_type[gt["qtype"]].append(ok)

    def pct(xs):
        return round(100.0 * sum(xs) / len(xs), 2) if xs else 0.0

    return {"accuracy": pct(hits), "per_question_type": {k: pct(v) for k, v in sorted(by_type.items())},
            "n_per_question_type": {k: len(v) for k, v in sorted(by_type.items())}, "n": len(hits), "n_missing": sum(1 for u in ground_truth if predictions.get(u) is None)}
