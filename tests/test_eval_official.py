"""`tools/eval.py --score-only --answers FILE` against transcriptions of the official scripts
(tests/official_reference.py) on generated benchmarks and seeded adversarial answer files in
LLaVA's layouts: complete, cut short, and with random holes."""
import base64
import json
import os
import random

import pytest

from paddle_rc.eval import cli

import official_reference as ref

SUFFIX = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."

# Strings that exercise every normalisation rule: case, whitespace, punctuation next to spaces
# or not, digit commas, periods before digits, number words, articles, contractions, "'s".
ANSWER_POOL = ["2", "two", "Two", " 2", "2 ", "yes", "Yes", "yes!", "no", "No.", "none", "0",
               "red, white", "red white", "red,white", "isn't", "isnt", "the dog", "dog",
               "a dog", "Dog.", "1,000", "1000", "3.5", "3.5.", "don't know", "dont know",
               "McDonald's", "mcdonald 's", "coca-cola", "coca cola", "", "  ", "U.S.A.",
               "usa", "left", "Left...", "whats that", "what's that", "ten", "10", "x-ray",
               "x ray", "(a)", "yes\nno", "it is two", "  the  Red  "]


def _write(path, obj, lines=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        if lines:
            for r in obj:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        else:
            json.dump(obj, f, ensure_ascii=False)


def _record(qid, prompt, text, **extra):
    return {"question_id": qid, "prompt": prompt, "text": text, "answer_id": "x",
            "model_id": "llava-v1.5-7b", "metadata": {}, **extra}


def _variants(records, rng):
    """complete, cut short (a kill), random holes (a crash skipped items)."""
    holes = [r for r in records if rng.random() > 0.3]
    return {"complete": records, "cut": records[: int(len(records) * 0.6)], "holes": holes}


def _score(tmp_path, root, bench, records, extra=()):
    path = str(tmp_path / f"{bench}.answers.jsonl")
    _write(path, records, lines=True)
    out = str(tmp_path / "out")
    rc = cli.main(["--score-only", "--answers", path, "--benchmark", bench, "--data-root", root,
                   "--method", "none", "--out", out, "--no-progress", *extra])
    assert rc == 0
    with open(os.path.join(out, bench, "none.summary.json")) as f:
        return json.load(f)


# --------------------------------------------------------------------------- VQAv2


def _make_vqav2(root, rng, n=80):
    d = os.path.join(root, "vqav2")
    os.makedirs(os.path.join(d, "val2014"), exist_ok=True)
    qs, anns = [], []
    for qid in range(1, n + 1):
        if rng.random() < 0.4:
            answers = [rng.choice(ANSWER_POOL)] * 10          # all ten identical
        else:
            base = rng.sample(ANSWER_POOL, 3)
            answers = [rng.choice(base) for _ in range(10)]
        qs.append({"image_id": qid, "question": f"q{qid}?", "question_id": qid})
        anns.append({"question_id": qid, "image_id": qid,
                     "answer_type": rng.choice(["yes/no", "number", "other"]),
                     "question_type": rng.choice(["how many", "is the", "what"]),
                     "multiple_choice_answer": answers[0],
                     "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                                 for i, a in enumerate(answers)]})
    _write(os.path.join(d, "v2_OpenEnded_mscoco_val2014_questions.json"), {"questions": qs})
    _write(os.path.join(d, "v2_mscoco_val2014_annotations.json"), {"annotations": anns})
    return qs, anns


@pytest.mark.parametrize("variant", ["complete", "cut", "holes"])
def test_vqav2_val_equals_official(tmp_path, variant):
    rng = random.Random(12)
    root = str(tmp_path / "data")
    qs, anns = _make_vqav2(root, rng)
    records = []
    for q, a in zip(qs, anns):
        pick = rng.random()
        # a third copy a GT answer verbatim, the rest are adversarial pool strings
        text = rng.choice(a["answers"])["answer"] if pick < 0.35 else rng.choice(ANSWER_POOL)
        records.append(_record(q["question_id"], q["question"] + "\n" + SUFFIX, text))
    records = _variants(records, rng)[variant]
    expected = ref.vqav2(anns, [q["question_id"] for q in qs], records)
    s = _score(tmp_path, root, "vqav2_val", records)
    assert s["overall"] == expected["overall"] and s["score"] == expected["overall"]
    assert s["per_answer_type"] == expected["per_answer_type"]
    assert s["per_question_type"] == expected["per_question_type"]
    assert s["coverage"] == f"{len(records)}/{len(qs)}"
    assert 0 < expected["overall"] < 100   # the file really mixes hits and misses


# --------------------------------------------------------------------------- TextVQA


@pytest.mark.parametrize("variant", ["complete", "cut", "holes"])
def test_textvqa_equals_official(tmp_path, variant):
    rng = random.Random(5)
    root = str(tmp_path / "data")
    d = os.path.join(root, "textvqa")
    os.makedirs(os.path.join(d, "train_images"), exist_ok=True)
    data, rows, records = [], [], []
    for i in range(60):
        img = f"img{i // 2:04d}"            # two questions per image: question ids repeat
        q = f"what is written on thing {i}?"
        base = rng.sample(ANSWER_POOL, 2)
        answers = [rng.choice(base) for _ in range(10)]
        data.append({"question_id": 5000 + i, "image_id": img, "question": q.capitalize(),
                     "answers": answers})
        text = f"{q}\nReference OCR token: sign, {i}\n{SUFFIX}"
        rows.append({"question_id": img, "image": img + ".jpg", "text": text,
                     "category": "default"})
        pred = rng.choice(answers) if rng.random() < 0.5 else rng.choice(ANSWER_POOL)
        records.append(_record(img, text, pred))
    _write(os.path.join(d, "TextVQA_0.5.1_val.json"), {"data": data})
    _write(os.path.join(d, "llava_textvqa_val_v051_ocr.jsonl"), rows, lines=True)
    records = _variants(records, rng)[variant]
    expected = ref.textvqa(data, records)
    s = _score(tmp_path, root, "textvqa", records)
    assert s["score"] == pytest.approx(expected, abs=1e-9)
    assert s["coverage"] == f"{len(records)}/60"


# --------------------------------------------------------------------------- ScienceQA


@pytest.mark.parametrize("variant", ["complete", "cut", "holes"])
def test_scienceqa_equals_official(tmp_path, variant):
    rng = random.Random(3)
    root = str(tmp_path / "data")
    d = os.path.join(root, "scienceqa")
    os.makedirs(os.path.join(d, "images", "test"), exist_ok=True)
    problems, convs, records, test_ids = {}, [], [], []
    texts = ["A", "B", "C", "D", "E", "B. thing", "C.thing", "The answer is A.",
             "The answer is B", "The answer is C, surely", "The answer is A. The answer is B.",
             " A", "a", "", "E. five", "The answer is Z."]
    for i in range(70):
        pid = str(100 + i)
        n = rng.choice([2, 3, 4, 5])
        has_image = rng.random() < 0.6
        problems[pid] = {"question": f"Q{pid}?", "choices": [f"c{k}" for k in range(n)],
                         "answer": rng.randrange(n), "image": "image.png" if has_image else None}
        if i % 7 != 6:                       # a few problems are in another split
            test_ids.append(pid)
        human = f"Context: N/A\nQ{pid}?\n" + "\n".join(f"{'ABCDE'[k]}. c{k}" for k in range(n))
        row = {"id": pid, "conversations": [{"from": "human", "value": human}]}
        prompt = human + "\n" + LETTER
        if has_image:
            row["image"] = f"{pid}/image.png"
            prompt = "<image>\n" + prompt
        convs.append(row)
        if pid in test_ids:
            records.append(_record(pid, prompt, rng.choice(texts)))
    _write(os.path.join(d, "problems.json"), problems)
    _write(os.path.join(d, "pid_splits.json"), {"test": test_ids})
    _write(os.path.join(d, "llava_test_CQM-A.json"), convs)
    records = _variants(records, rng)[variant]
    expected = ref.scienceqa(problems, test_ids, records)
    s = _score(tmp_path, root, "sqa_img", records)
    assert s["score"] == pytest.approx(expected["img_accuracy"], abs=1e-9)
    assert s["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-9)
    n_img = sum(1 for p in test_ids if problems[p]["image"])
    n_img_answered = sum(1 for r in records if "<image>" in r["prompt"])
    assert s["coverage"] == f"{n_img_answered}/{n_img}"


# --------------------------------------------------------------------------- POPE


@pytest.mark.parametrize("variant", ["complete", "cut", "holes"])
def test_pope_equals_official(tmp_path, variant):
    rng = random.Random(9)
    root = str(tmp_path / "data")
    d = os.path.join(root, "pope")
    os.makedirs(os.path.join(d, "val2014"), exist_ok=True)
    rows, labels, records, qid = [], {}, [], 0
    texts = ["Yes", "No", "yes", "no", "Yes, there is a dog.", "No, there is not.", "NO",
             "Not really", "There is no cat. Yes.", "I see no,thing", "no,", "", "not sure"]
    for split in ("adversarial", "popular", "random"):
        labels[split] = []
        for i in range(30):
            img = f"COCO_val2014_{i:012d}.jpg"
            q = f"Is there a thing{i} in the image?"
            lab = "yes" if i % 2 == 0 else "no"
            labels[split].append({"question_id": i + 1, "image": img, "text": q, "label": lab})
            qid += 1
            rows.append({"question_id": qid, "image": img, "text": f"{q}\n{SUFFIX}",
                         "category": split})
            records.append(_record(qid, f"{q}\n{SUFFIX}",
                                   "Yes" if i < 2 else rng.choice(texts)))
        _write(os.path.join(d, "coco", f"coco_pope_{split}.json"), labels[split], lines=True)
    _write(os.path.join(d, "llava_pope_test.jsonl"), rows, lines=True)
    records = _variants(records, rng)[variant]
    expected = ref.pope(rows, labels, records)
    s = _score(tmp_path, root, "pope", records)
    for split, m in expected.items():
        got = s["splits"][split]
        for k in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
            assert got[k] == pytest.approx(m[k], abs=1e-12), (split, k)
    assert s["score"] == pytest.approx(100 * sum(m["f1"] for m in expected.values())
                                       / len(expected))
    assert s["missing_splits"] == sorted(set(labels) - set(expected))
    if variant == "cut":
        assert s["missing_splits"] == ["random"]
    if variant == "holes":
        assert s["n_misaligned"] > 0     # the official pairing misplaces answers; we say so


def test_pope_labels_from_another_commit_are_an_error(tmp_path, capsys):
    from test_eval_layouts import make_pope
    root = str(tmp_path / "data")
    make_pope(root)
    path = os.path.join(root, "pope", "coco", "coco_pope_random.json")
    with open(path) as f:
        lines = f.readlines()
    with open(path, "w") as f:
        f.writelines(lines[::-1])          # same questions, another order
    out = str(tmp_path / "out")
    assert cli.main(["--score-only", "--benchmark", "pope", "--data-root", root,
                     "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "e3e3926" in err[0] and "coco_pope_random.json" in err[0]


# --------------------------------------------------------------------------- MME


@pytest.mark.parametrize("variant", ["complete", "cut_images", "missing_subtasks"])
def test_mme_equals_official(tmp_path, variant):
    rng = random.Random(21)
    root = str(tmp_path / "data")
    base = os.path.join(root, "MME", "MME_Benchmark_release_version")
    gt_lines, records = {}, []
    texts = ["Yes", "No", "yes", "no", "Yes, it is.", "Not at all", "I think yes", "N", "",
             "no.", "YES"]
    cats = ["existence", "count", "OCR", "artwork", "code_reasoning", "text_translation"]
    for cat in cats:
        os.makedirs(os.path.join(base, cat), exist_ok=True)
        for k in range(6):
            stem = f"{k:04d}"
            open(os.path.join(base, cat, stem + ".jpg"), "wb").close()
            qa = [(f"Is {cat} {k} a? Please answer yes or no.", "Yes"),
                  (f"Is {cat} {k} b?  Please answer yes or no.", "No")]   # double space kept
            with open(os.path.join(base, cat, stem + ".txt"), "w") as f:
                f.write("".join(f"{q}\t{a}\n" for q, a in qa))
            for q, a in qa:
                gt_lines[(cat, stem + ".txt", q)] = a
                # llava_mme.jsonl leaves "Please answer yes or no." out of the prompt;
                # convert_answer_to_mme.py puts it back (with one space, else two)
                bare = q.replace("Please answer yes or no.", "").strip()
                records.append(_record(f"{cat}/{stem}.jpg", f"{bare}\n{SUFFIX}", rng.choice(texts)))
    if variant == "cut_images":
        records = records[: 2 * 17]                         # whole images, subtasks cut mid-way
    elif variant == "missing_subtasks":
        records = [r for r in records if not r["question_id"].startswith(("count", "OCR"))]
    expected = ref.mme(gt_lines, records)
    s = _score(tmp_path, root, "mme", records)
    got = {c: v["score"] for c, v in s["subtasks"].items()}
    assert got == pytest.approx(expected)
    perception = sum(v for c, v in expected.items() if c in ("existence", "count", "OCR", "artwork"))
    assert s["score"] == pytest.approx(perception)
    if variant != "complete":
        assert s["n_subtasks_answered"] < len(cats)


# --------------------------------------------------------------------------- MMBench


def _make_mmbench(root, rng, n=40):
    d = os.path.join(root, "mmbench")
    os.makedirs(d, exist_ok=True)
    cols = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image",
            "source", "l2-category", "comment", "split"]
    img = base64.b64encode(b"not decoded when scoring").decode()
    words = ["dog", "cat", "bird", "fish", "tree", "car"]
    rows = []
    for i in range(n):
        k = rng.choice([2, 3, 4])
        opts = rng.sample(words, k)
        ans = rng.randrange(k)
        for c in range(k if rng.random() < 0.8 else 1):     # most questions have circular copies
            rot = opts[c:] + opts[:c]
            row = {"index": i + c * 1_000_000, "question": f"Which one {i}?",
                   "hint": "nan" if i % 3 else f"hint {i}",
                   "answer": "ABCD"[(ans - c) % k], "category": f"cat{i % 3}",
                   "image": img, "source": "s", "l2-category": f"l2{i % 2}", "comment": "",
                   "split": "dev"}
            for j, letter in enumerate("ABCD"):
                row[letter] = rot[j] if j < k else "nan"
            rows.append(row)
    with open(os.path.join(d, "mmbench_dev_20230712.tsv"), "w") as f:
        f.write("\t".join(cols) + "\n")
        for r in rows:
            f.write("\t".join(str(r[c]) for c in cols) + "\n")
    return rows


def _mm_answer(rng, shown, right):
    pool = [right, right, right + ".", f"({right})", f"The answer is {right}.",
            shown[right], "A", "B", "C", "A cat is here", "Answer: D", "none of them", "",
            f"{right} and B", "I think " + shown[rng.choice(list(shown))]]
    return rng.choice(pool)


@pytest.mark.parametrize("all_rounds", [False, True])
@pytest.mark.parametrize("variant", ["complete", "cut", "holes"])
def test_mmbench_equals_official_circular(tmp_path, all_rounds, variant):
    rng = random.Random(31 + all_rounds)
    root = str(tmp_path / "data")
    rows = _make_mmbench(root, rng)
    records = []
    for row in rows:
        opts = [row[c] for c in "ABCD" if row[c] != "nan"]
        right = "ABCD".index(row["answer"])
        for r in range(len(opts) if all_rounds else 1):
            shown = dict(zip("ABCD", opts))
            letter = "ABCD"[(right - r) % len(opts)]
            q = row["question"] if row["hint"] == "nan" else row["hint"] + "\n" + row["question"]
            q += "".join(f"\n{c}. {o}" for c, o in shown.items())
            records.append(_record(row["index"], q, _mm_answer(rng, shown, letter), round_id=r,
                                   options=opts, option_char=list(shown)))
            opts = opts[1:] + opts[:1]
    records = _variants(records, rng)[variant]
    expected = ref.mmbench(rows, records, all_rounds=all_rounds)
    s = _score(tmp_path, root, "mmbench", records)
    assert s["score"] == pytest.approx(expected, abs=1e-9)
    assert s["layout"] == ("all-rounds" if all_rounds else "one record per tsv row")
    if variant == "complete":
        assert 0 < expected < 100
    assert s["n_unmatched_records"] == 0
    # the file's own layout decides, whatever the harness was told
    flipped = _score(tmp_path, root, "mmbench", records, [] if all_rounds else ["--all-rounds"])
    assert flipped["score"] == s["score"] and flipped["layout"] == s["layout"]


# --------------------------------------------------------------------------- GQA


def test_gqa_equals_official(tmp_path):
    rng = random.Random(2)
    root = str(tmp_path / "data")
    d = os.path.join(root, "gqa")
    os.makedirs(os.path.join(d, "data", "images"), exist_ok=True)
    qs, rows, records = {}, [], []
    for i in range(50):
        qid = str(2000 + i)
        ans = rng.choice(["yes", "no", "left", "man", "red"])
        qs[qid] = {"imageId": f"n{i}", "question": f"q{i}?", "answer": ans,
                   "types": {"structural": "query"}}
        rows.append({"question_id": qid, "image": f"n{i}.jpg", "text": f"q{i}?\n{SUFFIX}"})
        records.append(_record(qid, f"q{i}?\n{SUFFIX}",
                               rng.choice([ans, ans.capitalize() + ".", ans + "..", " " + ans,
                                           "the " + ans, "Yes", "No."])))
    _write(os.path.join(d, "data", "testdev_balanced_questions.json"), qs)
    _write(os.path.join(d, "llava_gqa_testdev_balanced.jsonl"), rows, lines=True)
    s = _score(tmp_path, root, "gqa", records)
    assert s["score"] == pytest.approx(ref.gqa(qs, records))
