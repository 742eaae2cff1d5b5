"""Readers for LLaVA-1.5's evaluation layout (``playground/data/eval`` = ``--data-root``).

Each reader returns a :class:`Benchmark`: the items to ask (in question-file order) and the
ground truth keyed by the item's ``uid``, plus the scorer that turns answers into a summary.
File names and folders are documented in docs/eval-data.md.

``uid`` is the key answers are stored and resumed under. It is ``str(question_id)`` where
question ids are unique; LLaVA's MME and TextVQA files repeat question ids (MME: one id per
image for its two questions; TextVQA: the image id), and MMBench asks each question once per
rotation, so there the uid adds the occurrence / round.
"""
import base64
import csv
import json
import math
import os
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from paddle_rc.errors import UserError

from . import scorers

SUFFIX = scorers.SHORT_ANSWER_SUFFIX
SQA_SUFFIX = "Answer with the option's letter from the given choices directly."
MMBENCH_SUFFIX = {"en": SQA_SUFFIX, "cn": "请直接回答选项字母。"}
DOC_HINT = "see docs/eval-data.md for the expected layout and where to download it"


@dataclass
class Item:
    question_id: Any
    uid: str
    image: Any            # a path (str), or a zero-argument callable returning the image bytes
    prompt: str           # user turn without "<image>", with LLaVA's suffix
    question: str         # bare question for the CLIP text tower
    metadata: Dict[str, Any] = field(default_factory=dict)
    answer_prompt: Optional[str] = None  # the answer record's "prompt" where LLaVA writes
                                         # something else than the user turn (SQA, MMBench)

    @property
    def record_prompt(self):
        return self.prompt if self.answer_prompt is None else self.answer_prompt


@dataclass
class Benchmark:
    name: str
    items: List[Item]
    ground_truth: Dict[str, Any]
    score_fn: Optional[Callable] = None      # (predictions {uid: text}, ground_truth) -> dict
    headline: Optional[str] = None           # key of the summary that is "the" score
    headline_label: str = ""
    extra_headlines: Dict[str, str] = field(default_factory=dict)
    submission_fn: Optional[Callable] = None  # (predictions {uid: text}) -> JSON-able
    notes: List[str] = field(default_factory=list)
    uses_prompts: bool = False                # score_fn also takes prompts={uid: record prompt}
    # Ground truth outside ``items`` that the official scorer still counts (ScienceQA's
    # text-only test problems); kept whole by ``subset`` only when nothing is cut.
    extra_ground_truth: Dict[str, Any] = field(default_factory=dict)
    # (records) -> the Benchmark those records were written for, when one benchmark has
    # several answer-file layouts (MMBench: one record per tsv row, or --all-rounds).
    layout_for: Optional[Callable] = None
    layout: str = ""
    # (record) -> uid for answer files written by LLaVA's scripts, where the benchmark knows a
    # better key than question_id + prompt (MME: subtask, image and question).
    match_record: Optional[Callable] = None

    def subset(self, uids):
        keep = set(uids)
        items = [it for it in self.items if it.uid in keep]
        gt = {k: v for k, v in self.ground_truth.items() if k in keep}
        return Benchmark(self.name, items, gt, self.score_fn, self.headline, self.headline_label,
                         dict(self.extra_headlines), self.submission_fn, list(self.notes),
                         self.uses_prompts, {}, None, self.layout, self.match_record)

    def score(self, predictions, prompts=None):
        """``predictions``: {uid: answer text} in answer-file order; ``prompts``: {uid: the
        record's prompt}. Only this benchmark's items count."""
        if self.score_fn is None:
            out = {"score": None, "note": "no local ground truth; submit the upload file"}
        else:
            gt = dict(self.ground_truth)
            gt.update(self.extra_ground_truth)
            kw = {"prompts": prompts or {}} if self.uses_prompts else {}
            out = dict(self.score_fn(predictions, gt, **kw))
            out["score"] = _dig(out, self.headline)
            for label, path in self.extra_headlines.items():
                out.setdefault("extra_scores", {})[label] = _dig(out, path)
        out["metric"] = self.headline_label
        out["n_items"] = len(self.items)
        out["n_answered"] = sum(1 for it in self.items if predictions.get(it.uid) is not None)
        out["coverage"] = f"{out['n_answered']}/{out['n_items']}"
        out["partial"] = out["n_answered"] < out["n_items"]
        if self.layout:
            out["layout"] = self.layout
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def _dig(d, path):
    for part in path.split("."):
        d = d[part]
    return d


# --------------------------------------------------------------------------- helpers


def _need(path):
    if not os.path.exists(path):
        raise UserError(f"missing evaluation file: {path} ({DOC_HINT})")
    return path


def _need_dir(path):
    if not os.path.isdir(path):
        raise UserError(f"missing image folder: {path} ({DOC_HINT})")
    return path


def _load_json(path):
    _need(path)
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"cannot parse {path}: {e}") from None


def _load_jsonl(path):
    _need(path)
    rows = []
    with open(path, "r", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError as e:
                raise UserError(f"cannot parse line {n} of {path}: {e}") from None
    return rows


def _strip_suffix(text, suffix=SUFFIX):
    t = text.strip()
    if t.endswith(suffix):
        t = t[: -len(suffix)].rstrip()
    return t


def _uids(question_ids):
    """str(qid), or str(qid)#k (k = occurrence in file order) when ids repeat."""
    counts = Counter(str(q) for q in question_ids)
    seen = defaultdict(int)
    out = []
    for q in question_ids:
        s = str(q)
        if counts[s] == 1:
            out.append(s)
        else:
            out.append(f"{s}#{seen[s]}")
            seen[s] += 1
    return out


def _llava_items(rows, image_dir, name, question_fn=None):
    """Items from a LLaVA question jsonl ({question_id, image, text, category})."""
    uids = _uids([r["question_id"] for r in rows])
    items = []
    for r, uid in zip(rows, uids):
        q = question_fn(r) if question_fn else _strip_suffix(r["text"])
        meta = {"benchmark": name}
        if "category" in r:
            meta["category"] = r["category"]
        items.append(Item(r["question_id"], uid, os.path.join(image_dir, r["image"]),
                          r["text"], q, meta))
    return items


# --------------------------------------------------------------------------- VQAv2


def read_vqav2_val(root):
    d = os.path.join(root, "vqav2")
    qs = _load_json(os.path.join(d, "v2_OpenEnded_mscoco_val2014_questions.json"))["questions"]
    anns = _load_json(os.path.join(d, "v2_mscoco_val2014_annotations.json"))["annotations"]
    img_dir = _need_dir(os.path.join(d, "val2014"))
    ann_by_q = {a["question_id"]: a for a in anns}
    items, gt = [], {}
    for q in qs:
        qid = q["question_id"]
        a = ann_by_q.get(qid)
        if a is None:
            continue
        uid = str(qid)
        img = os.path.join(img_dir, "COCO_val2014_%012d.jpg" % q["image_id"])
        items.append(Item(qid, uid, img, q["question"] + "\n" + SUFFIX, q["question"],
                          {"benchmark": "vqav2_val", "answer_type": a["answer_type"],
                           "question_type": a["question_type"], "split": "val2014"}))
        gt[uid] = {"answers": [dict(x) for x in a["answers"]],
                   "answer_type": a["answer_type"], "question_type": a["question_type"]}
    return Benchmark("vqav2_val", items, gt, scorers.score_vqav2, "overall",
                     "VQA accuracy (current official vqaEval.py on LLaVA's EvalAI-processed "
                     "upload; unanswered = '')")


def read_vqav2_testdev(root):
    d = os.path.join(root, "vqav2")
    rows = _load_jsonl(os.path.join(d, "llava_vqav2_mscoco_test-dev2015.jsonl"))
    img_dir = _need_dir(os.path.join(d, "test2015"))
    items = _llava_items(rows, img_dir, "vqav2_testdev")
    for it in items:
        it.metadata["split"] = "test-dev2015"
    full = os.path.join(d, "llava_vqav2_mscoco_test2015.jsonl")
    notes = []
    if os.path.exists(full):
        all_ids = [r["question_id"] for r in _load_jsonl(full)]
    else:
        all_ids = [r["question_id"] for r in rows]
        notes.append(f"{full} not found: the upload file covers test-dev questions only; "
                     "EvalAI expects every test2015 question id")
    uid_of = {str(it.question_id): it.uid for it in items}

    def submission(predictions):
        by_qid = {qid: predictions.get(uid_of.get(str(qid))) for qid in all_ids}
        return scorers.vqav2_submission(by_qid, all_ids)

    return Benchmark("vqav2_testdev", items, {}, None, None,
                     "VQAv2 test-dev: scored by the EvalAI server", submission_fn=submission,
                     notes=notes)


# --------------------------------------------------------------------------- TextVQA


def _textvqa_question(text):
    """The question line of LLaVA's TextVQA prompt (eval_textvqa.prompt_processor)."""
    lines = text.split("\n")
    if text.startswith("Reference OCR token:") and len(lines) >= 2:
        return lines[1]
    return lines[0]


def read_textvqa(root):
    d = os.path.join(root, "textvqa")
    rows = _load_jsonl(os.path.join(d, "llava_textvqa_val_v051_ocr.jsonl"))
    anns = _load_json(os.path.join(d, "TextVQA_0.5.1_val.json"))["data"]
    img_dir = _need_dir(os.path.join(d, "train_images"))
    # eval_textvqa.py matches on (image_id, lower-cased question): LLaVA's question_id there is
    # the image id.
    by_key = {(str(a["image_id"]), a["question"].lower()): a for a in anns}
    items = _llava_items(rows, img_dir, "textvqa", lambda r: _textvqa_question(r["text"]))
    gt, unmatched = {}, 0
    for r, it in zip(rows, items):
        q = _textvqa_question(r["text"]).lower()
        a = by_key.get((str(r["question_id"]), q))
        if a is None:
            stem = os.path.splitext(os.path.basename(r["image"]))[0]
            a = by_key.get((stem, q))
        if a is None:
            unmatched += 1
            continue
        it.question = a["question"]
        it.metadata.update({"split": "val", "textvqa_question_id": a.get("question_id")})
        gt[it.uid] = {"answers": a["answers"]}
    notes = [f"{unmatched} questions had no annotation and are not scored"] if unmatched else []
    return Benchmark("textvqa", items, gt, scorers.score_textvqa, "accuracy",
                     "TextVQA accuracy over answered questions (eval_textvqa.py, m4c evaluator)",
                     notes=notes)


# --------------------------------------------------------------------------- GQA


def read_gqa(root):
    d = os.path.join(root, "gqa")
    rows = _load_jsonl(os.path.join(d, "llava_gqa_testdev_balanced.jsonl"))
    qs = _load_json(os.path.join(d, "data", "testdev_balanced_questions.json"))
    img_dir = _need_dir(os.path.join(d, "data", "images"))
    items = _llava_items(rows, img_dir, "gqa")
    gt = {}
    for r, it in zip(rows, items):
        q = qs.get(str(r["question_id"]))
        if q is None:
            continue
        types = q.get("types") or {}
        it.metadata.update({"split": "testdev_balanced", "structural": types.get("structural"),
                            "semantic": types.get("semantic")})
        gt[it.uid] = {"answer": q["answer"], "structural": types.get("structural")}
    return Benchmark("gqa", items, gt, scorers.score_gqa, "accuracy",
                     "GQA testdev-balanced accuracy (exact match)")


# --------------------------------------------------------------------------- POPE

POPE_SPLITS = ("adversarial", "popular", "random")
# The label files LLaVA's llava_pope_test.jsonl was built from (later commits changed them).
POPE_COMMIT = "e3e3926"


def read_pope(root):
    """eval_pope.py pairs the answers of a split with the lines of coco_pope_<split>.json by
    position, so the reader insists that the split's questions, in question-file order, are
    those lines, in that order (same image and question text). Anything else means label files
    from another POPE commit: scoring would silently pair answers with other questions' labels,
    so it is an error instead."""
    d = os.path.join(root, "pope")
    rows = _load_jsonl(os.path.join(d, "llava_pope_test.jsonl"))
    labels = {s: _load_jsonl(os.path.join(d, "coco", f"coco_pope_{s}.json")) for s in POPE_SPLITS}
    img_dir = _need_dir(os.path.join(d, "val2014"))
    items = _llava_items(rows, img_dir, "pope")
    gt = {}
    for split in POPE_SPLITS:
        mine = [(r, it) for r, it in zip(rows, items) if r.get("category") == split]
        lines = labels[split]
        split_labels = [l["label"] for l in lines]
        bad = [i for i, (r, _) in enumerate(mine)
               if i >= len(lines) or (os.path.basename(lines[i]["image"]),
                                      _strip_suffix(lines[i]["text"]))
               != (os.path.basename(r["image"]), _strip_suffix(r["text"]))]
        if bad:
            i = bad[0]
            raise UserError(
                f"pope: {len(bad)} of {len(mine)} {split} questions of llava_pope_test.jsonl are "
                f"not line {i + 1}.. of coco/coco_pope_{split}.json (first: question_id "
                f"{mine[i][0]['question_id']}); eval_pope.py pairs them by position, so take the "
                f"label files from AoiDragon/POPE at commit {POPE_COMMIT} ({DOC_HINT})")
        for pos, (r, it) in enumerate(mine):
            it.metadata["split"] = split
            gt[it.uid] = {"label": split_labels[pos], "category": split, "pos": pos,
                          "split_labels": split_labels}
    return Benchmark("pope", items, gt, scorers.score_pope, "f1_mean",
                     "POPE F1 averaged over the splits (eval_pope.py: answers paired with "
                     "labels by position)", extra_headlines={"pope_acc": "accuracy_mean"})


def score_pope_both(predictions, ground_truth):
    out = scorers.score_pope(predictions, ground_truth)
    out["lmms_eval_exact_match"] = scorers.score_pope_lmms(predictions, ground_truth)
    return out


# --------------------------------------------------------------------------- MME


def _mme_norm(q):
    # convert_answer_to_mme.py retries with a double space before "Please answer yes or no.";
    # collapsing runs of spaces covers that and any similar drift.
    return " ".join(q.split())


def _mme_ground_truth(mme_dir):
    """{(subtask, image stem): [(question, answer), ...]} plus the image path of each pair, read
    from MME_Benchmark_release_version/<subtask>/ (flat, or images/ + questions_answers_YN/)."""
    pairs, images = {}, {}
    for cat in sorted(os.listdir(mme_dir)):
        cdir = os.path.join(mme_dir, cat)
        if not os.path.isdir(cdir):
            continue
        if os.path.isdir(os.path.join(cdir, "images")):
            img_dir, qa_dir = os.path.join(cdir, "images"), os.path.join(cdir, "questions_answers_YN")
        else:
            img_dir = qa_dir = cdir
        if not os.path.isdir(qa_dir):
            raise UserError(f"missing MME question folder: {qa_dir} ({DOC_HINT})")
        img_by_stem = {os.path.splitext(f)[0]: f for f in os.listdir(img_dir)
                       if not f.endswith(".txt")}
        for fn in sorted(os.listdir(qa_dir)):
            if not fn.endswith(".txt"):
                continue
            stem = fn[:-4]
            qa = []
            with open(os.path.join(qa_dir, fn), "r", encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        q, a = line.rstrip("\n").split("\t")[:2]
                        qa.append((q.strip(), a.strip()))
            pairs[(cat, stem)] = qa
            if stem in img_by_stem:
                images[(cat, stem)] = os.path.relpath(os.path.join(img_dir, img_by_stem[stem]),
                                                      mme_dir)
    return pairs, images


def read_mme(root):
    d = os.path.join(root, "MME")
    mme_dir = _need_dir(os.path.join(d, "MME_Benchmark_release_version"))
    pairs, images = _mme_ground_truth(mme_dir)
    jsonl = os.path.join(d, "llava_mme.jsonl")
    if os.path.exists(jsonl):
        rows = _load_jsonl(jsonl)
        source = "llava_mme.jsonl"
    else:
        # What LLaVA's llava_mme.jsonl holds: every question of every subtask without its
        # "Please answer yes or no." (the short-answer suffix asks for the same),
        # question_id = the image path under MME_Benchmark_release_version.
        rows = []
        for (cat, stem), qa in sorted(pairs.items()):
            if (cat, stem) not in images:
                raise UserError(f"MME image for {cat}/{stem}.txt not found under {mme_dir}")
            img = images[(cat, stem)].replace(os.sep, "/")
            for q, _ in qa:
                bare = q.replace("Please answer yes or no.", "").strip()
                rows.append({"question_id": img, "image": img, "text": bare + "\n" + SUFFIX,
                             "category": cat})
        source = "MME_Benchmark_release_version folders"
    items = _llava_items(rows, mme_dir, "mme")
    gt_lookup = {(cat, stem, _mme_norm(q)): a for (cat, stem), qa in pairs.items() for q, a in qa}
    gt, unmatched, by_key = {}, 0, {}
    for r, it in zip(rows, items):
        key = _mme_key(r["question_id"], r["text"])
        ans = gt_lookup.get(key)
        it.question = key[2].replace("Please answer yes or no.", "").strip()
        it.metadata.update({"category": key[0], "split": "perception" if key[0] in
                            scorers.MME_PERCEPTION else "cognition"})
        by_key[key] = it.uid
        if ans is None:
            unmatched += 1
            continue
        gt[it.uid] = {"answer": ans, "category": key[0], "image": f"{key[0]}/{key[1]}"}
    notes = [f"questions read from {source}"]
    if unmatched:
        notes.append(f"{unmatched} questions had no ground truth and are not scored")

    def match_record(rec):
        """convert_answer_to_mme.py's key: subtask, image stem and the question of the prompt."""
        return by_key.get(_mme_key(rec.get("question_id"), rec.get("prompt")))

    bench = Benchmark("mme", items, gt, scorers.score_mme, "perception",
                      "MME perception (sum of acc + acc+ over the 10 subtasks, answered "
                      "questions)",
                      extra_headlines={"mme_cognition": "cognition", "mme_total": "total"},
                      notes=notes)
    bench.match_record = match_record
    return bench


def _mme_key(question_id, prompt):
    """(subtask, image stem, question with "Please answer yes or no." and single spaces)."""
    qid = str(question_id)
    q = _strip_suffix(str(prompt or ""))
    if "Please answer yes or no." not in q:
        q = q + " Please answer yes or no."
    return qid.split("/")[0], os.path.splitext(qid.split("/")[-1])[0], _mme_norm(q)


# --------------------------------------------------------------------------- ScienceQA


def read_sqa_img(root):
    d = os.path.join(root, "scienceqa")
    convs = _load_json(os.path.join(d, "llava_test_CQM-A.json"))
    problems = _load_json(os.path.join(d, "problems.json"))
    splits = _load_json(os.path.join(d, "pid_splits.json"))
    img_dir = _need_dir(os.path.join(d, "images", "test"))
    test_ids = [str(x) for x in splits.get("test", [])]
    in_test = set(test_ids)
    asked = set()
    items, gt = [], {}
    for row in convs:
        pid = str(row["id"])
        if "image" not in row or pid not in problems or pid not in in_test:
            continue  # SQA-IMG: test questions that come with an image
        prob = problems[pid]
        text = row["conversations"][0]["value"].replace("<image>", "").strip()
        prompt = text + "\n" + SQA_SUFFIX
        # model_vqa_science.py records "<image>\n" + the turn: eval_science_qa.py reads it
        # there to tell image questions from text-only ones.
        items.append(Item(row["id"], pid, os.path.join(img_dir, row["image"]), prompt,
                          prob["question"],
                          {"benchmark": "sqa_img", "split": "test", "subject": prob.get("subject"),
                           "grade": prob.get("grade"), "n_choices": len(prob["choices"])},
                          answer_prompt="<image>\n" + prompt))
        gt[pid] = {"answer": prob["answer"], "n_choices": len(prob["choices"])}
        asked.add(pid)
    # eval_science_qa.py walks every test problem; the text-only ones count in its overall
    # accuracy (as FAILED unless the answer file has them).
    extra = {pid: {"answer": problems[pid]["answer"], "n_choices": len(problems[pid]["choices"])}
             for pid in test_ids if pid in problems and pid not in asked}
    return Benchmark("sqa_img", items, gt, scorers.score_sqa, "img_accuracy",
                     "ScienceQA-IMG accuracy (eval_science_qa.py: answered records whose prompt "
                     "has <image>)", extra_headlines={"sqa_all_test": "accuracy"},
                     uses_prompts=True, extra_ground_truth=extra)


# --------------------------------------------------------------------------- MMBench


# Cells pandas.read_table (LLaVA's reader) turns into NaN by default.
_PANDAS_NA = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
              "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}


def _is_none(v):
    """model_vqa_mmbench.is_none: None, NaN, 'nan', 'none' (any case); empty cells are NaN."""
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str) and (v in _PANDAS_NA or v.lower() in ("nan", "none"))


def _read_tsv(path):
    _need(path)
    csv.field_size_limit(sys.maxsize)
    with open(path, "r", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        return list(reader)


class _B64Image:
    """A picklable zero-argument loader for a base64 image cell."""

    def __init__(self, b64):
        self.b64 = b64

    def __call__(self):
        return base64.b64decode(self.b64)

    def __repr__(self):
        return "<base64 image>"


MMBENCH_COPY = 1_000_000  # circular copies of question i have index i + k * 1e6


def read_mmbench(root, lang="en", all_rounds=False):
    """Every tsv row, circular copies included, as LLaVA's model_vqa_mmbench.py asks them: once
    (LLaVA's default, what scripts/v1_5/eval/mmbench.sh runs) or, with ``all_rounds``, once per
    option with the options rotated after each round. Answer records carry LLaVA's
    ``round_id``/``options``/``option_char``; the record prompt is LLaVA's (no suffix)."""
    fname = "mmbench_dev_20230712.tsv" if lang == "en" else "mmbench_dev_cn_20231003.tsv"
    rows = _read_tsv(os.path.join(root, "mmbench", fname))
    letters = ["A", "B", "C", "D"]
    name = "mmbench" if lang == "en" else "mmbench_cn"
    items, gt = [], {}
    for row in rows:
        idx = int(row["index"])
        options = []
        for c in letters:
            if c not in row or _is_none(row[c]):
                break
            options.append(row[c])
        chars = letters[: len(options)]
        n_rounds = len(options) if all_rounds else 1
        hint = row.get("hint")
        image = _B64Image(row["image"])
        answer = (row.get("answer") or "").strip()
        for r in range(n_rounds):
            q = row["question"]
            if not _is_none(hint):
                q = hint + "\n" + q
            for ch, opt in zip(letters, options):
                q = q + "\n" + ch + ". " + opt
            prompt = q + "\n" + MMBENCH_SUFFIX[lang]
            uid = f"{idx}#r{r}"
            meta = {"benchmark": name, "round_id": r, "options": list(options),
                    "option_char": list(chars), "category": row.get("category"),
                    "l2_category": row.get("l2-category"), "split": row.get("split", "dev")}
            items.append(Item(idx, uid, image, prompt, row["question"], meta, answer_prompt=q))
            if answer in letters[: len(options)]:
                gt[uid] = {"group": idx % MMBENCH_COPY, "index": idx, "round": r,
                           "answer": scorers.mmbench_round_answer(answer, len(options), r),
                           "choices": dict(zip(letters, options)),
                           "category": row.get("category"),
                           "l2_category": row.get("l2-category")}
            options = options[1:] + options[:1]
            chars = chars[1:] + chars[:1]
    layout = "all-rounds" if all_rounds else "one record per tsv row"
    notes = ["rule-based extraction only (no GPT judge); unmapped answers count as wrong"]

    def layout_for(records):
        """The layout a file was written in: any round_id > 0 means --all-rounds."""
        rounds = any(_int_or_zero(r.get("round_id")) > 0 for r in records)
        return read_mmbench(root, lang, all_rounds=rounds) if rounds != all_rounds else None

    return Benchmark(name, items, gt, scorers.score_mmbench, "circular_accuracy",
                     "MMBench-dev CircularEval accuracy (groups index % 1e6, rule-based "
                     "extraction)", notes=notes, layout_for=layout_for, layout=layout)


def _int_or_zero(v):
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


# --------------------------------------------------------------------------- SynthVQA


def read_synthvqa(root):
    """The procedural task of paddle_rc.synth as tools/make_synth.py writes it."""
    d = os.path.join(root, "synthvqa")
    rows = _load_jsonl(os.path.join(d, "llava_synthvqa.jsonl"))
    anns = _load_json(os.path.join(d, "synthvqa_annotations.json"))
    img_dir = _need_dir(os.path.join(d, "images"))
    by_qid = {str(a["question_id"]): a for a in anns.get("annotations", [])}
    items = _llava_items(rows, img_dir, "synthvqa")
    gt, unmatched = {}, 0
    for it in items:
        a = by_qid.get(str(it.question_id))
        if a is None:
            unmatched += 1
            continue
        it.metadata.update({"qtype": a["qtype"], "split": f"seed {anns.get('generator', {}).get('seed')}"})
        gt[it.uid] = {"answer": a["answer"], "qtype": a["qtype"]}
    notes = [f"{unmatched} questions had no annotation and are not scored"] if unmatched else []
    qtypes = sorted({g["qtype"] for g in gt.values()})
    return Benchmark("synthvqa", items, gt, scorers.score_synthvqa, "accuracy",
                     "SynthVQA accuracy (exact match after VQA answer normalisation)",
                     extra_headlines={f"synthvqa_{t}": f"per_question_type.{t}" for t in qtypes},
                     notes=notes)


READERS = {
    "vqav2_val": read_vqav2_val,
    "vqav2_testdev": read_vqav2_testdev,
    "textvqa": read_textvqa,
    "gqa": read_gqa,
    "pope": read_pope,
    "mme": read_mme,
    "sqa_img": read_sqa_img,
    "mmbench": read_mmbench,
    "mmbench_cn": lambda root, all_rounds=False: read_mmbench(root, "cn", all_rounds),
    "synthvqa": read_synthvqa,
}
ALIASES = {"vqav2": "vqav2_val", "vqav2-val": "vqav2_val", "vqav2-testdev": "vqav2_testdev",
           "sqa": "sqa_img", "scienceqa": "sqa_img", "scienceqa_img": "sqa_img",
           "mmbench_en": "mmbench", "mmbench-dev": "mmbench", "synth": "synthvqa"}


def canonical_name(name):
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in READERS:
        raise UserError(f"unknown benchmark {name!r}; choose from {', '.join(READERS)} "
                        f"(aliases: {', '.join(sorted(ALIASES))})")
    return key


def load_benchmark(name, data_root, all_rounds=False):
    """Read one benchmark from ``data_root`` (LLaVA's playground/data/eval layout).
    ``all_rounds`` asks MMBench in every option rotation (LLaVA's --all-rounds)."""
    if not data_root:
        raise UserError("--data-root is required (the folder that holds vqav2/, textvqa/, ...)")
    if not os.path.isdir(data_root):
        raise UserError(f"--data-root {data_root} is not a folder ({DOC_HINT})")
    key = canonical_name(name)
    if key in ("mmbench", "mmbench_cn"):
        bench = READERS[key](data_root, all_rounds=bool(all_rounds))
    else:
        bench = READERS[key](data_root)
    if key == "pope":
        bench.score_fn = score_pope_both
    return bench
