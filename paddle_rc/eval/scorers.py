"""Official-rule scorers, one small named function per rule.

Every function here works on plain Python values (strings, lists, dicts) so that it can be
checked by hand against the official scripts. Percentages are 0-100 unless a name says
``ratio``. A question without an answer is treated the way each official pipeline treats it
(docs/eval-data.md lists the rule per benchmark); the summary states coverage separately.
"""
import re
import string
from collections import defaultdict

from .normalize import (evalai_process, vqa_normalize_prediction, vqa_process_digit_article,
                        vqa_process_punctuation)

SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."

# --------------------------------------------------------------------------- VQAv2


def _vqa_clean(text):
    """Newlines and tabs to spaces, outer whitespace off: what vqaEval.py does to every answer
    (prediction and ground truth) before anything else."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def _vqa_process(text):
    return vqa_process_digit_article(vqa_process_punctuation(text))


def vqa_accuracy(prediction, gt_answers):
    """One question's accuracy (0..1) under the current official vqaEval.py (after the
    "processing answers" fix, GT-Vision-Lab/VQA a013f00).

    ``prediction`` is the submitted string. ``gt_answers`` are the ten annotation dicts
    (``answer``, ``answer_id``, ...) or plain strings. Both sides are whitespace-cleaned; when
    the ground truths are not all the same string, both sides also get the punctuation and
    digit/article processing, otherwise the prediction is compared as submitted. Each ground
    truth is left out in turn (every annotation dict equal to it leaves, as the official
    ``item != gtAnsDatum`` does) and the prediction scores min(1, matches among the rest / 3).
    """
    gts = [dict(a) if isinstance(a, dict) else {"answer": a, "answer_id": i}
           for i, a in enumerate(gt_answers)]
    if not gts:
        return 0.0
    for g in gts:
        g["answer"] = _vqa_clean(g["answer"])
    pred = _vqa_clean(prediction)
    if len({g["answer"] for g in gts}) > 1:
        for g in gts:
            g["answer"] = _vqa_process(g["answer"])
        pred = _vqa_process(pred)
    accs = []
    for g in gts:
        matches = sum(1 for o in gts if o != g and o["answer"] == pred)
        accs.append(min(1.0, matches / 3.0))
    return sum(accs) / len(accs)


def vqav2_submitted_answer(text):
    """What LLaVA's convert_vqav2_for_submission.py uploads for one question: the MMF EvalAI
    processor's output, or '' when the answer file has no answer for it."""
    return "" if text is None else evalai_process(text)


def score_vqav2(predictions, ground_truth):
    """``predictions``: {qid: text or None}; ``ground_truth``: {qid: {answers, answer_type,
    question_type}}. Every ground-truth question is scored (the converter uploads '' for a
    missing answer, and '' can still match); percentages are rounded to 2 places as vqaEval
    does."""
    per_q, by_atype, by_qtype = {}, defaultdict(list), defaultdict(list)
    for qid, gt in ground_truth.items():
        acc = vqa_accuracy(vqav2_submitted_answer(predictions.get(qid)), gt["answers"])
        per_q[qid] = acc
        by_atype[gt.get("answer_type", "unknown")].append(acc)
        by_qtype[gt.get("question_type", "unknown")].append(acc)

    def pct(xs):
        return round(100.0 * sum(xs) / len(xs), 2) if xs else None

    return {"overall": pct(list(per_q.values())),
            "per_answer_type": {k: pct(v) for k, v in sorted(by_atype.items())},
            "per_question_type": {k: pct(v) for k, v in sorted(by_qtype.items())},
            "n": len(per_q), "n_missing": sum(1 for q in ground_truth if predictions.get(q) is None)}


def vqav2_submission(predictions, all_question_ids):
    """EvalAI upload list as LLaVA's convert_vqav2_for_submission.py builds it: every question
    of the split, the processed answer, or '' where there is none."""
    return [{"question_id": qid, "answer": vqav2_submitted_answer(predictions.get(qid))}
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
    """eval_textvqa.py walks the answer file, so the mean runs over the answered questions
    only; a question without an answer is not in the denominator."""
    accs = [textvqa_accuracy(predictions[k], gt["answers"])
            for k, gt in ground_truth.items() if predictions.get(k) is not None]
    return {"accuracy": 100.0 * sum(accs) / len(accs) if accs else None, "n": len(accs),
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
    """eval_pope.py, per split: the split's answers *in answer-file order* are paired with the
    lines of its ``coco_pope_<split>.json`` *by position* (``zip``, so a short answer file is
    scored on its answered prefix). Headline = mean F1 over the splits that have answers (x100).

    ``predictions``: {key: text} in answer-file order (missing keys are unanswered).
    ``ground_truth``: {key: {"label", "category", "pos", "split_labels"}} where ``pos`` is the
    question's line in its label file and ``split_labels`` that file's labels in order. An
    answer whose position differs from its own question's line is scored against another
    question's label, exactly as the official script would; ``misaligned`` counts them.
    """
    by_split = defaultdict(list)
    split_labels = {}
    for key, gt in ground_truth.items():
        split_labels.setdefault(gt["category"], gt["split_labels"])
    for key, text in predictions.items():
        gt = ground_truth.get(key)
        if gt is not None and text is not None:
            by_split[gt["category"]].append((key, text))
    splits, misaligned = {}, {}
    for split in sorted(split_labels):
        answers = by_split.get(split, [])
        labels = split_labels[split]
        pairs = list(zip(answers, labels))
        if not pairs:
            continue  # eval_pope.py would divide by zero here; the summary lists the split as missing
        preds = [pope_parse_llava(text) for (_, text), _ in pairs]
        labs = ["no" if lab == "no" else "yes" for _, lab in pairs]
        splits[split] = binary_metrics(preds, labs)
        misaligned[split] = sum(1 for i, ((key, _), _) in enumerate(pairs)
                                if ground_truth[key]["pos"] != i)
    f1s = [m["f1"] for m in splits.values()]
    accs = [m["accuracy"] for m in splits.values()]
    return {"f1_mean": 100.0 * sum(f1s) / len(f1s) if f1s else None,
            "accuracy_mean": 100.0 * sum(accs) / len(accs) if accs else None,
            "splits": splits, "missing_splits": [s for s in sorted(split_labels) if s not in splits],
            "misaligned": misaligned, "n_misaligned": sum(misaligned.values()),
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

    LLaVA's convert_answer_to_mme.py writes one line per *answer*, so calculation.py sees the
    answered questions only. Per subtask: acc = % answered questions right, acc+ = % images
    whose answered questions are all right, score = acc + acc+ (max 200). Perception = sum of
    the 10 perception subtasks present, cognition = sum of the 4 cognition ones; a subtask
    without answers is listed in ``missing_subtasks`` (the official calculation.py stops there).
    ``images_half_answered`` counts images with one of their two questions answered:
    calculation.py pairs lines two by two, so such files do not score there at all."""
    per_cat = defaultdict(lambda: defaultdict(list))
    expected = defaultdict(lambda: defaultdict(int))
    for key, gt in ground_truth.items():
        expected[gt["category"]][gt["image"]] += 1
        text = predictions.get(key)
        if text is None:
            continue
        per_cat[gt["category"]][gt["image"]].append(mme_parse(text) == gt["answer"].lower())
    subtasks, half = {}, 0
    for cat, images in sorted(per_cat.items()):
        hits = [h for v in images.values() for h in v]
        acc = 100.0 * sum(hits) / len(hits)
        acc_plus = 100.0 * sum(1 for v in images.values() if all(v)) / len(images)
        subtasks[cat] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus,
                         "n_questions": len(hits), "n_images": len(images)}
        half += sum(1 for img, v in images.items() if len(v) < expected[cat][img])
    perception = sum(subtasks[c]["score"] for c in MME_PERCEPTION if c in subtasks)
    cognition = sum(subtasks[c]["score"] for c in MME_COGNITION if c in subtasks)
    present = sorted(expected)
    return {"perception": perception, "cognition": cognition, "total": perception + cognition,
            "subtasks": subtasks,
            "missing_subtasks": [c for c in MME_PERCEPTION + MME_COGNITION if c not in subtasks],
            "subtasks_in_data": present,
            "n_subtasks_answered": sum(1 for c in present if c in subtasks),
            "images_half_answered": half,
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


def score_sqa(predictions, ground_truth, prompts=None):
    """eval_science_qa.py over every problem of the test split.

    ``ground_truth``: {pid: {"answer": int, "n_choices": int}} for *all* test problems (also
    those without an image); ``prompts``: {pid: the answer record's ``prompt``}. A missing
    answer becomes text 'FAILED' with prompt 'Unknown' (wrong). ``accuracy`` = correct / all
    test problems. IMG accuracy counts the problems whose answer record's prompt contains
    ``<image>`` (LLaVA writes it there for image questions), so an unanswered question leaves
    the IMG denominator; it is None when no record qualifies (the official script divides by
    zero)."""
    prompts = prompts or {}
    n = correct = mm_total = mm_correct = failed = 0
    for pid, gt in ground_truth.items():
        text = predictions.get(pid)
        prompt = "Unknown" if text is None else str(prompts.get(pid, ""))
        letter = sqa_parse(text if text is not None else "FAILED")
        ok = sqa_pred_index(letter, gt["n_choices"]) == gt["answer"]
        mm = "<image>" in prompt
        n += 1
        correct += ok
        mm_total += mm
        mm_correct += ok and mm
        failed += letter == "FAILED"
    return {"img_accuracy": 100.0 * mm_correct / mm_total if mm_total else None,
            "accuracy": 100.0 * correct / n if n else None,
            "n": n, "n_correct": correct, "n_img": mm_total, "n_img_correct": mm_correct,
            "n_failed": failed,
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
    """CircularEval. Every presentation of a question (the tsv's circular copies, whose index
    is the original's + k x 1e6, and with --all-rounds every rotation of every row) falls into
    the group ``index % 1e6``; a group counts as right only if every presentation in it was
    answered and its answer maps to the right letter. A missing answer is wrong (the upload
    sheet then has no prediction for that row). An answer neither extraction rule maps is wrong
    and counted in ``unmapped_ratio``.

    ``ground_truth``: {key: {"group", "index", "round", "answer" (letter as presented),
    "choices" ({letter: text} as presented), "category", "l2_category"}}."""
    groups = defaultdict(list)
    n_answers = unmapped = 0
    for key, gt in ground_truth.items():
        text = predictions.get(key)
        letter = mmbench_extract(text, dict(gt["choices"])) if text is not None else None
        if text is not None:
            n_answers += 1
            unmapped += letter is None
        groups[gt["group"]].append((gt, letter))
    hits, by_cat, by_l2, single = [], defaultdict(list), defaultdict(list), []
    for _, shown in sorted(groups.items()):
        ok = all(letter is not None and letter == gt["answer"] for gt, letter in shown)
        hits.append(ok)
        gt0 = min(shown, key=lambda s: (s[0]["index"], s[0]["round"]))[0]
        by_cat[gt0.get("category") or ""].append(ok)
        by_l2[gt0.get("l2_category") or ""].append(ok)
        single.extend(letter == gt["answer"] for gt, letter in shown
                      if gt["index"] == gt["group"] and gt["round"] == 0)

    def pct(v):
        return 100.0 * sum(v) / len(v) if v else None

    return {"circular_accuracy": pct(hits), "round0_accuracy": pct(single),
            "per_category": {k: pct(v) for k, v in sorted(by_cat.items())},
            "per_l2_category": {k: pct(v) for k, v in sorted(by_l2.items())},
            "n_questions": len(hits), "n_presentations": len(ground_truth),
            "n_answers": n_answers, "n_unmapped": unmapped,
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
