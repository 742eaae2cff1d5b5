"""Readers on small generated copies of each benchmark's real file layout.

``make_data_root`` is also used by test_eval_runner.py.
"""
import base64
import io
import json
import os

import pytest
from PIL import Image

from paddle_rc.errors import UserError
from paddle_rc.eval import benchmarks as B

SUFFIX = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."


def _img(path, color=(200, 30, 30), size=(24, 16)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _png_bytes(color):
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), color).save(buf, format="PNG")
    return buf.getvalue()


def _jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def _json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def make_vqav2(root):
    d = os.path.join(root, "vqav2")
    qs, anns = [], []
    spec = [(1, 11, "How many dogs?", "number", "how many", ["2"] * 10),
            (2, 12, "Is it sunny?", "yes/no", "is it", ["yes"] * 8 + ["no"] * 2),
            (3, 13, "What color is the bus?", "other", "what color", ["red"] * 10)]
    for qid, img, q, at, qt, answers in spec:
        _img(os.path.join(d, "val2014", "COCO_val2014_%012d.jpg" % img))
        qs.append({"image_id": img, "question": q, "question_id": qid})
        anns.append({"question_id": qid, "image_id": img, "answer_type": at, "question_type": qt,
                     "multiple_choice_answer": answers[0],
                     "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                                 for i, a in enumerate(answers)]})
    _json(os.path.join(d, "v2_OpenEnded_mscoco_val2014_questions.json"), {"questions": qs})
    _json(os.path.join(d, "v2_mscoco_val2014_annotations.json"), {"annotations": anns})
    rows = [{"question_id": 100 + i, "image": "COCO_test2015_%012d.jpg" % i,
             "text": f"What is {i}?\n{SUFFIX}", "category": "default"} for i in range(3)]
    for r in rows:
        _img(os.path.join(d, "test2015", r["image"]))
    _jsonl(os.path.join(d, "llava_vqav2_mscoco_test-dev2015.jsonl"), rows)
    _jsonl(os.path.join(d, "llava_vqav2_mscoco_test2015.jsonl"),
           rows + [{"question_id": 999, "image": "x.jpg", "text": "q", "category": "default"}])


def make_textvqa(root):
    d = os.path.join(root, "textvqa")
    data, rows = [], []
    for i, (img, q, ans) in enumerate([("003a8ae2ef43b901", "what brand is this camera?",
                                        ["Nikon"] * 7 + ["nikon camera"] * 3),
                                       ("003a8ae2ef43b901", "what is written on the strap?",
                                        ["Coca-Cola"] * 10),
                                       ("00b1a4a5b9c1d2e3", "what number is shown?",
                                        ["12"] * 10)]):
        _img(os.path.join(d, "train_images", img + ".jpg"))
        data.append({"question_id": 34600 + i, "image_id": img, "question": q.capitalize(),
                     "answers": ans})
        # LLaVA's file: question_id is the image id (so it repeats), OCR line in the prompt.
        rows.append({"question_id": img, "image": img + ".jpg",
                     "text": f"{q}\nReference OCR token: nikon, 12\n{SUFFIX}",
                     "category": "default"})
    _json(os.path.join(d, "TextVQA_0.5.1_val.json"), {"dataset_name": "textvqa", "data": data})
    _jsonl(os.path.join(d, "llava_textvqa_val_v051_ocr.jsonl"), rows)


def make_gqa(root):
    d = os.path.join(root, "gqa")
    qs, rows = {}, []
    for qid, img, q, a, st in [("201307251", "n161313", "Is it overcast?", "no", "verify"),
                               ("201640614", "n235859", "Who is wearing a dress?", "woman",
                                "query")]:
        _img(os.path.join(d, "data", "images", img + ".jpg"))
        qs[qid] = {"imageId": img, "question": q, "answer": a, "fullAnswer": a,
                   "types": {"structural": st, "semantic": "attr", "detailed": "x"}}
        rows.append({"question_id": qid, "image": img + ".jpg", "text": f"{q}\n{SUFFIX}",
                     "category": "default"})
    _json(os.path.join(d, "data", "testdev_balanced_questions.json"), qs)
    _jsonl(os.path.join(d, "llava_gqa_testdev_balanced.jsonl"), rows)


POPE_SPEC = {  # split: [(image, object, label)]
    "adversarial": [("COCO_val2014_000000000001.jpg", "dog", "yes"),
                    ("COCO_val2014_000000000001.jpg", "cat", "no")],
    "popular": [("COCO_val2014_000000000002.jpg", "car", "yes"),
                ("COCO_val2014_000000000002.jpg", "bus", "no")],
    "random": [("COCO_val2014_000000000003.jpg", "tree", "yes"),
               ("COCO_val2014_000000000003.jpg", "kite", "no")],
}


def make_pope(root):
    d = os.path.join(root, "pope")
    rows, qid = [], 0
    for split, spec in POPE_SPEC.items():
        labels = []
        for i, (img, obj, lab) in enumerate(spec):
            _img(os.path.join(d, "val2014", img))
            q = f"Is there a {obj} in the image?"
            labels.append({"question_id": i + 1, "image": img, "text": q, "label": lab})
            qid += 1
            rows.append({"question_id": qid, "image": img, "text": f"{q}\n{SUFFIX}",
                         "category": split})
        # The official label files are JSON lines despite the .json name.
        _jsonl(os.path.join(d, "coco", f"coco_pope_{split}.json"), labels)
    _jsonl(os.path.join(d, "llava_pope_test.jsonl"), rows)


def make_mme(root, with_jsonl=False):
    d = os.path.join(root, "MME", "MME_Benchmark_release_version")
    # Flat subtask folder (image + txt side by side).
    _img(os.path.join(d, "existence", "000000006040.jpg"))
    with open(os.path.join(d, "existence", "000000006040.txt"), "w") as f:
        f.write("Is there a train in this image? Please answer yes or no.\tYes\n"
                "Is there a bed in this image? Please answer yes or no.\tNo\n")
    # images/ + questions_answers_YN/ subtask folder.
    for stem in ("10002", "10049"):
        _img(os.path.join(d, "artwork", "images", stem + ".jpg"))
        os.makedirs(os.path.join(d, "artwork", "questions_answers_YN"), exist_ok=True)
        with open(os.path.join(d, "artwork", "questions_answers_YN", stem + ".txt"), "w") as f:
            f.write(f"Is this artwork {stem} by Monet? Please answer yes or no.\tYes\n"
                    f"Is this artwork {stem} by Dali?  Please answer yes or no.\tNo\n")
    _img(os.path.join(d, "code_reasoning", "0020.png"))
    with open(os.path.join(d, "code_reasoning", "0020.txt"), "w") as f:
        f.write("Will the code print 3? Please answer yes or no.\tYes\n"
                "Will the code print 4? Please answer yes or no.\tNo\n")
    if with_jsonl:
        rows = [{"question_id": "existence/000000006040.jpg",
                 "image": "existence/000000006040.jpg",
                 "text": f"Is there a train in this image? Please answer yes or no.\n{SUFFIX}",
                 "category": "existence"}]
        _jsonl(os.path.join(root, "MME", "llava_mme.jsonl"), rows)


def make_sqa(root):
    d = os.path.join(root, "scienceqa")
    problems = {
        "5": {"question": "Which property do these objects have in common?",
              "choices": ["shiny", "slippery", "opaque"], "answer": 2, "hint": "",
              "image": "image.png", "split": "test", "subject": "natural science", "grade": "g2"},
        "7": {"question": "Which is a mammal?", "choices": ["frog", "whale"], "answer": 1,
              "hint": "", "image": "image.png", "split": "test", "subject": "natural science",
              "grade": "g3"},
        "9": {"question": "Which word rhymes?", "choices": ["cat", "dog"], "answer": 0,
              "hint": "", "image": None, "split": "test", "subject": "language", "grade": "g1"},
    }
    _json(os.path.join(d, "problems.json"), problems)
    _json(os.path.join(d, "pid_splits.json"), {"test": ["5", "7", "9"], "val": []})
    convs = []
    for pid, p in problems.items():
        opts = "\n".join(f"{'ABCDE'[i]}. {c}" for i, c in enumerate(p["choices"]))
        row = {"id": pid, "conversations": [
            {"from": "human", "value": f"Context: N/A\n{p['question']}\n{opts}"},
            {"from": "gpt", "value": "The answer is " + "ABCDE"[p["answer"]] + "."}]}
        if p["image"]:
            row["image"] = f"{pid}/image.png"
            row["conversations"][0]["value"] = "<image>\n" + row["conversations"][0]["value"]
            _img(os.path.join(d, "images", "test", pid, "image.png"))
        convs.append(row)
    _json(os.path.join(d, "llava_test_CQM-A.json"), convs)


def make_mmbench(root):
    d = os.path.join(root, "mmbench")
    os.makedirs(d, exist_ok=True)
    cols = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image",
            "source", "l2-category", "comment", "split"]
    rows = [
        [0, "What animal is shown?", "", "dog", "cat", "bird", "", "B", "object_localization",
         base64.b64encode(_png_bytes((10, 200, 10))).decode(), "src", "FP-S", "", "dev"],
        [1, "Which season is it?", "Look at the trees.", "winter", "summer", "nan", "nan", "A",
         "scene", base64.b64encode(_png_bytes((10, 10, 200))).decode(), "src", "CP", "", "dev"],
        # the tsv's own circular copy of question 0 (options rotated once)
        [1000000, "What animal is shown?", "", "cat", "bird", "dog", "", "A",
         "object_localization", base64.b64encode(_png_bytes((10, 200, 10))).decode(), "src",
         "FP-S", "", "dev"],
    ]
    with open(os.path.join(d, "mmbench_dev_20230712.tsv"), "w") as f:
        f.write("\t".join(cols) + "\n")
        for r in rows:
            f.write("\t".join(str(x) for x in r) + "\n")


def make_data_root(root):
    make_vqav2(root)
    make_textvqa(root)
    make_gqa(root)
    make_pope(root)
    make_mme(root)
    make_sqa(root)
    make_mmbench(root)
    return root


# --------------------------------------------------------------------------- tests


@pytest.fixture
def data_root(tmp_path):
    return make_data_root(str(tmp_path / "eval"))


def test_vqav2_val_items_and_gt(data_root):
    b = B.load_benchmark("vqav2", data_root)
    assert b.name == "vqav2_val"
    it = b.items[0]
    assert it.prompt == "How many dogs?\n" + SUFFIX
    assert it.question == "How many dogs?"
    assert "<image>" not in it.prompt
    assert it.image.endswith(os.path.join("val2014", "COCO_val2014_000000000011.jpg"))
    assert os.path.exists(it.image)
    assert it.metadata["answer_type"] == "number"
    answers = b.ground_truth["2"]["answers"]   # the annotation dicts, answer_id and all
    assert [a["answer"] for a in answers].count("no") == 2
    assert len({a["answer_id"] for a in answers}) == 10


def test_vqav2_testdev_submission_covers_full_test_split(data_root):
    b = B.load_benchmark("vqav2_testdev", data_root)
    assert [it.question_id for it in b.items] == [100, 101, 102]
    assert b.items[0].question == "What is 0?"
    sub = b.submission_fn({"100": "Two.", "102": "Yes"})
    assert sub == [{"question_id": 100, "answer": "2"}, {"question_id": 101, "answer": ""},
                   {"question_id": 102, "answer": "yes"}, {"question_id": 999, "answer": ""}]


def test_textvqa_prompt_keeps_ocr_question_does_not(data_root):
    b = B.load_benchmark("textvqa", data_root)
    assert len(b.items) == 3
    # question ids repeat (they are image ids) so uids disambiguate.
    assert [it.uid for it in b.items] == ["003a8ae2ef43b901#0", "003a8ae2ef43b901#1",
                                          "00b1a4a5b9c1d2e3"]
    it = b.items[0]
    assert "Reference OCR token: nikon, 12" in it.prompt and it.prompt.endswith(SUFFIX)
    assert it.question == "What brand is this camera?"
    assert "OCR" not in it.question
    assert b.ground_truth[b.items[1].uid]["answers"] == ["Coca-Cola"] * 10


def test_gqa_reader(data_root):
    b = B.load_benchmark("gqa", data_root)
    assert b.items[1].question == "Who is wearing a dress?"
    assert b.ground_truth["201640614"] == {"answer": "woman", "structural": "query"}


def test_pope_labels_per_split(data_root):
    b = B.load_benchmark("pope", data_root)
    assert len(b.items) == 6
    assert {g["category"] for g in b.ground_truth.values()} == set(POPE_SPEC)
    labels = [b.ground_truth[it.uid]["label"] for it in b.items]
    assert labels == ["yes", "no"] * 3
    assert b.items[0].question == "Is there a dog in the image?"
    assert not b.notes  # matched by (image, question), not by position


def test_mme_from_folders(data_root):
    b = B.load_benchmark("mme", data_root)
    assert len(b.items) == 8
    cats = sorted({it.metadata["category"] for it in b.items})
    assert cats == ["artwork", "code_reasoning", "existence"]
    it = [i for i in b.items if i.metadata["category"] == "existence"][0]
    # as in LLaVA's llava_mme.jsonl: the yes/no request is left to the short-answer suffix
    assert it.prompt == "Is there a train in this image?\n" + SUFFIX
    assert it.question == "Is there a train in this image?"
    assert it.image.endswith(os.path.join("existence", "000000006040.jpg"))
    # two questions per image share a question id; uids differ
    same = [i.uid for i in b.items if i.question_id == "artwork/images/10002.jpg"]
    assert same == ["artwork/images/10002.jpg#0", "artwork/images/10002.jpg#1"]
    # the double space before "Please answer" in the GT file still matches
    assert len(b.ground_truth) == 8


def test_mme_llava_jsonl_is_preferred(tmp_path):
    root = str(tmp_path)
    make_mme(root, with_jsonl=True)
    b = B.load_benchmark("mme", root)
    assert len(b.items) == 1
    assert b.ground_truth[b.items[0].uid]["answer"] == "Yes"


def test_sqa_img_only_image_questions(data_root):
    b = B.load_benchmark("scienceqa", data_root)
    assert [it.uid for it in b.items] == ["5", "7"]
    it = b.items[0]
    assert it.prompt == ("Context: N/A\nWhich property do these objects have in common?\n"
                         "A. shiny\nB. slippery\nC. opaque\n" + LETTER)
    assert it.question == "Which property do these objects have in common?"
    assert b.ground_truth["5"] == {"answer": 2, "n_choices": 3}
    # LLaVA's record prompt carries "<image>" (eval_science_qa.py reads it there)
    assert it.record_prompt == "<image>\n" + it.prompt
    # the text-only test problem is not asked but still counts in the overall accuracy
    assert b.extra_ground_truth == {"9": {"answer": 0, "n_choices": 2}}


def test_mmbench_rotations_like_llava_all_rounds(data_root):
    b = B.load_benchmark("mmbench", data_root, all_rounds=True)
    q0 = [it for it in b.items if it.question_id == 0]
    assert len(q0) == 3  # three options -> three rounds
    assert q0[0].prompt == "What animal is shown?\nA. dog\nB. cat\nC. bird\n" + LETTER
    assert q0[1].prompt == "What animal is shown?\nA. cat\nB. bird\nC. dog\n" + LETTER
    assert q0[2].prompt == "What animal is shown?\nA. bird\nB. dog\nC. cat\n" + LETTER
    # LLaVA records the prompt without the answer-format line
    assert q0[1].record_prompt == "What animal is shown?\nA. cat\nB. bird\nC. dog"
    # the right answer ("cat") moves: B, then A, then C
    assert [b.ground_truth[it.uid]["answer"] for it in q0] == ["B", "A", "C"]
    q1 = [it for it in b.items if it.question_id == 1]
    assert len(q1) == 2  # "nan" options end the list
    assert q1[0].prompt.startswith("Look at the trees.\nWhich season is it?\nA. winter")
    assert q1[0].question == "Which season is it?"
    img = Image.open(io.BytesIO(q0[0].image()))
    assert img.size == (20, 20)


def test_mmbench_default_asks_every_tsv_row_once_copies_included(data_root):
    b = B.load_benchmark("mmbench", data_root)
    assert [it.uid for it in b.items] == ["0#r0", "1#r0", "1000000#r0"]
    copy = b.ground_truth["1000000#r0"]
    assert copy["group"] == 0 and copy["answer"] == "A"   # "cat" is first in the copy
    assert b.layout == "one record per tsv row"


@pytest.mark.parametrize("name, victim", [
    ("textvqa", "textvqa/TextVQA_0.5.1_val.json"),
    ("gqa", "gqa/data/testdev_balanced_questions.json"),
    ("pope", "pope/coco/coco_pope_random.json"),
    ("sqa_img", "scienceqa/pid_splits.json"),
    ("mmbench", "mmbench/mmbench_dev_20230712.tsv"),
    ("vqav2_val", "vqav2/v2_mscoco_val2014_annotations.json"),
])
def test_missing_file_is_a_user_error_naming_it(data_root, name, victim):
    os.remove(os.path.join(data_root, victim))
    with pytest.raises(UserError) as e:
        B.load_benchmark(name, data_root)
    assert os.path.join(data_root, victim) in str(e.value)


def test_missing_image_folder_and_unknown_benchmark(data_root):
    import shutil
    shutil.rmtree(os.path.join(data_root, "gqa", "data", "images"))
    with pytest.raises(UserError, match="images"):
        B.load_benchmark("gqa", data_root)
    with pytest.raises(UserError, match="unknown benchmark"):
        B.load_benchmark("vizwiz", data_root)
