"""The official scoring pipelines, transcribed for the tests (they cannot be imported here: they
need LLaVA's package, pandas/openpyxl sheets or Python 2). Each function takes the raw files as
the official code reads them (annotation structures, answer-file records in file order) and
walks them the way the official code does, so paddle_rc's scorers are checked against an
independent reading of the rules rather than against themselves.

Sources: GT-Vision-Lab/VQA PythonEvaluationTools/vqaEvaluation/vqaEval.py (after a013f00);
haotian-liu/LLaVA scripts/convert_vqav2_for_submission.py, llava/eval/m4c_evaluator.py,
eval_textvqa.py, eval_science_qa.py, eval_pope.py, scripts/convert_mmbench_for_submission.py,
playground/data/eval/MME/convert_answer_to_mme.py; MME's calculation.py; the MMBench circular
evaluation (group index % 1e6, every presentation right). Only the contraction table (data)
is shared with paddle_rc.
"""
import copy
import re
from collections import defaultdict

from paddle_rc.eval.normalize import CONTRACTIONS

# --------------------------------------------------------------------------- answer processing

_NUM = dict(zip("none zero one two three four five six seven eight nine ten".split(),
                "0 0 1 2 3 4 5 6 7 8 9 10".split()))
_PUNCT = list(';/[]"{}()=+\\_-><@`,?!')
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_VQA = re.compile(r"(\d)(\,)(\d)")
_COMMA_MMF = re.compile(r"(?<=\d)(\,)+(?=\d)")


def _punctuation(text, comma):
    out = text
    strip_all = comma.search(text) is not None
    for p in _PUNCT:
        if strip_all or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, 32)  # the official passes re.UNICODE (32) as the count


def _digit_article(text):
    words = [_NUM.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ("a", "an", "the")]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def evalai(text):
    """MMF EvalAIAnswerProcessor.__call__."""
    t = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    t = t.replace("\n", " ").replace("\t", " ").strip()
    return _digit_article(_punctuation(t, _COMMA_MMF))


# --------------------------------------------------------------------------- VQAv2


def vqav2(annotations, split_question_ids, records):
    """convert_vqav2_for_submission.py, then vqaEval.evaluate() on the upload."""
    results = {r["question_id"]: r["text"] for r in records}
    upload = {q: (evalai(results[q]) if q in results else "") for q in split_question_ids}
    acc_all, by_q, by_a = [], defaultdict(list), defaultdict(list)
    for ann in copy.deepcopy(annotations):
        answers = ann["answers"]
        for a in answers:
            a["answer"] = a["answer"].replace("\n", " ").replace("\t", " ").strip()
        res = upload[ann["question_id"]].replace("\n", " ").replace("\t", " ").strip()
        if len({a["answer"] for a in answers}) > 1:
            for a in answers:
                a["answer"] = _digit_article(_punctuation(a["answer"], _COMMA_VQA))
            res = _digit_article(_punctuation(res, _COMMA_VQA))
        per_gt = []
        for left_out in answers:
            others = [a for a in answers if a != left_out]
            per_gt.append(min(1, len([a for a in others if a["answer"] == res]) / 3))
        acc = sum(per_gt) / len(per_gt)
        acc_all.append(acc)
        by_q[ann["question_type"]].append(acc)
        by_a[ann["answer_type"]].append(acc)

    def r2(xs):
        return round(100 * sum(xs) / len(xs), 2)

    return {"overall": r2(acc_all), "per_answer_type": {k: r2(v) for k, v in by_a.items()},
            "per_question_type": {k: r2(v) for k, v in by_q.items()}}


# --------------------------------------------------------------------------- TextVQA


def _textvqa_question(prompt):
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        q = re.search(r"Question: (.*?) Short answer:", prompt, re.DOTALL).group(1)
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        q = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        q = lines[0]
    else:
        raise AssertionError(prompt)
    return q.lower()


def textvqa(annotations, records):
    """eval_textvqa.eval_single: one score per answer record (m4c TextVQAAccuracyEvaluator)."""
    by_key = {(a["image_id"], a["question"].lower()): a for a in annotations}
    scores = []
    for r in records:
        gt = [evalai(a) for a in by_key[(r["question_id"], _textvqa_question(r["prompt"]))]["answers"]]
        numbered = list(enumerate(gt))
        pred = evalai(r["text"])
        per = []
        for one in numbered:
            per.append(min(1, len([o for o in numbered if o != one and o[1] == pred]) / 3))
        scores.append(sum(per) / len(per) if pred in gt else 0.0)
    return 100 * sum(scores) / len(scores)


# --------------------------------------------------------------------------- ScienceQA


def scienceqa(problems, test_ids, records):
    """eval_science_qa.py (its printed Accuracy and IMG-Accuracy)."""
    options = ["A", "B", "C", "D", "E"]
    preds = {r["question_id"]: r for r in records}
    correct = total = mm_correct = mm_total = 0
    for pid in test_ids:
        prob = problems[pid]
        if pid in preds:
            pred, text = preds[pid], preds[pid]["text"]
        else:
            pred, text = {"prompt": "Unknown"}, "FAILED"
        if text in options:
            letter = text
        elif len(text) >= 3 and text[0] in options and text[1:3] == ". ":
            letter = text[0]
        else:
            found = re.findall(r"The answer is ([A-Z]).", text)
            letter = found[0] if len(found) == 1 else "FAILED"
        idx = options.index(letter) if letter in options[:len(prob["choices"])] else -1
        ok = idx == prob["answer"]
        mm = "<image>" in pred["prompt"]
        total += 1
        correct += ok
        mm_total += mm
        mm_correct += ok and mm
    return {"accuracy": 100 * correct / total, "img_accuracy": 100 * mm_correct / mm_total}


# --------------------------------------------------------------------------- POPE


def pope(question_rows, label_files, records):
    """eval_pope.py: per label file, the split's answers in file order zipped with its labels."""
    category = {q["question_id"]: q["category"] for q in question_rows}
    out = {}
    for split, label_rows in label_files.items():
        answers = [r for r in records if category[r["question_id"]] == split]
        if not answers:
            continue  # eval_pope.py divides by zero here; paddle_rc lists the split as missing
        preds = []
        for r in answers:
            text = r["text"]
            if text.find(".") != -1:
                text = text.split(".")[0]
            words = text.replace(",", "").split(" ")
            preds.append(0 if ("No" in words or "not" in words or "no" in words) else 1)
        labels = [0 if l["label"] == "no" else 1 for l in label_rows]
        tp = fp = tn = fn = 0
        for p, l in zip(preds, labels):
            tp += p == 1 and l == 1
            fp += p == 1 and l == 0
            tn += p == 0 and l == 0
            fn += p == 0 and l == 1
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
        out[split] = {"accuracy": (tp + tn) / (tp + tn + fp + fn), "precision": precision,
                      "recall": recall, "f1": 2 * precision * recall / (precision + recall),
                      "yes_ratio": preds.count(1) / len(preds)}
    return out


# --------------------------------------------------------------------------- MME


def mme(gt_lines, records):
    """convert_answer_to_mme.py then calculation.py. ``gt_lines``: {(subtask, 'stem.txt',
    question): answer} as get_gt builds it. Returns {subtask: score} for subtasks answered."""
    per_cat = defaultdict(list)
    for r in records:
        cat = r["question_id"].split("/")[0]
        file = r["question_id"].split("/")[-1].split(".")[0] + ".txt"
        prompt = r["prompt"]
        if "Answer the question using a single word or phrase." in prompt:
            prompt = prompt.replace("Answer the question using a single word or phrase.", "").strip()
        if "Please answer yes or no." not in prompt:
            prompt = prompt + " Please answer yes or no."
            if (cat, file, prompt) not in gt_lines:
                prompt = prompt.replace(" Please answer yes or no.", "  Please answer yes or no.")
        per_cat[cat].append((gt_lines[cat, file, prompt], r["text"]))
    scores = {}
    for cat, lines in per_cat.items():
        assert len(lines) % 2 == 0
        right = plus = 0
        for i in range(0, len(lines), 2):
            hits = 0
            for gt, pred in lines[i:i + 2]:
                p = pred.lower()
                if p not in ("yes", "no"):
                    p = "yes" if "yes" in p[:4] else ("no" if "no" in p[:4] else "other")
                hits += p == gt.lower()
            right += hits
            plus += hits == 2
        scores[cat] = 100 * right / len(lines) + 100 * plus / (len(lines) // 2)
    return scores


# --------------------------------------------------------------------------- MMBench


def _mmbench_letter(answer, choices):
    """VLMEvalKit/lmms-eval can_infer_option, then can_infer_text."""
    letters = list(choices)
    if "Failed to obtain answer via API" in answer:
        return None
    words = [w.strip() for w in answer.split()]

    def hits(pre="", post=""):
        return [c for c in letters if pre + c + post in words]

    bare = hits()
    if len(bare) == 1 and not ("A" in words and len(words) > 3):
        return bare[0]
    for pre, post in [("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"),
                      ("(", ")."), (":", ""), (":", ","), (":", "."), (":", ")"), (":", ").")]:
        found = hits(pre, post)
        if len(found) == 1:
            return found[0]
    by_text = [c for c, v in choices.items() if str(v).lower() in answer.lower()]
    return by_text[0] if len(by_text) == 1 else None


def mmbench(rows, records, all_rounds=False):
    """Circular accuracy. Default files: convert_mmbench_for_submission.py's sheet (the last
    record per tsv index, blank when none), then every row of a group index % 1e6 must be right.
    --all-rounds files: every (row, rotation) of the group must be answered and right."""
    expected = {}
    for row in rows:
        opts = [row[c] for c in "ABCD" if row.get(c) not in (None, "", "nan")]
        right = row["answer"]
        n = len(opts) if all_rounds else 1
        for r in range(n):
            shown = dict(zip("ABCD", opts))
            letter = "ABCD"[("ABCD".index(right) - r) % len(opts)]
            expected[(int(row["index"]), r)] = (shown, letter)
            opts = opts[1:] + opts[:1]
    text = {}
    for rec in records:
        text[(int(rec["question_id"]), int(rec.get("round_id", 0)) if all_rounds else 0)] = rec["text"]
    groups = defaultdict(list)
    for (index, r), (shown, letter) in expected.items():
        t = text.get((index, r))
        groups[index % 1_000_000].append(t is not None and _mmbench_letter(t, shown) == letter)
    return 100 * sum(all(v) for v in groups.values()) / len(groups)


# --------------------------------------------------------------------------- GQA


def gqa(questions, records):
    """convert_gqa_for_eval.py then GQA eval.py accuracy (every question answered)."""
    preds = {r["question_id"]: r["text"].rstrip(".").lower() for r in records}
    hits = [preds[q] == v["answer"] for q, v in questions.items()]
    return 100 * sum(hits) / len(hits)
