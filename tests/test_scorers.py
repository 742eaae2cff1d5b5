"""Scorer cases worked out by hand from the official scripts' rules (values in comments)."""
import pytest

from paddle_rc.eval import scorers as S
from paddle_rc.eval.normalize import (evalai_process, vqa_normalize_prediction,
                                      vqa_process_punctuation)

# --------------------------------------------------------------------------- VQA normalisation


@pytest.mark.parametrize("raw, expected", [
    ("Two dogs.", "2 dogs"),        # number word -> digit, trailing period removed
    ("Two.", "2"),
    ("isnt", "isn't"),              # contractions table
    ("whats that", "what's that"),
    ("Youre", "you're"),            # lower-cased before the table lookup
    ("The dog", "dog"),             # articles dropped
    ("an apple a day", "apple day"),
    ("none", "0"),
    ("2.5", "2.5"),                 # a period followed by a digit stays
    ("yes!", "yes"),                # "!" -> " ", split() swallows the space
    ("red, white", "red white"),    # ", " present -> "," deleted
    ("red,white", "red white"),     # no space around "," -> replaced by a space
    ("1,000", "1000"),              # digit,digit -> deleted
    ("1,000 dogs-cats", "1000 dogscats"),  # digit comma anywhere => every symbol deleted
    ("it's", "it's"),               # apostrophes are not punctuation
    ("U.S.A.", "usa"),              # periods not before a digit go
    ("hello\tworld\n", "hello world"),
])
def test_vqa_prediction_normalisation(raw, expected):
    assert vqa_normalize_prediction(raw) == expected


def test_period_strip_removes_at_most_32_periods():
    # periodStrip.sub("", text, re.UNICODE): re.UNICODE == 32 is taken as the count.
    assert vqa_process_punctuation("." * 40) == "." * 8


def test_uppercase_contraction_keys_never_fire():
    # "Im" is a key but processDigitArticle lower-cases first, so "im" stays "im".
    assert vqa_normalize_prediction("Im") == "im"


# --------------------------------------------------------------------------- VQA accuracy


def test_vqa_accuracy_identical_gts_compare_the_prediction_as_submitted():
    # All ten GTs equal: no processing on either side, only whitespace is cleaned.
    assert S.vqa_accuracy("2", ["2"] * 10) == 1.0                # 9 others match -> min(1, 3)
    assert S.vqa_accuracy("  2\n", ["2"] * 10) == 1.0
    assert S.vqa_accuracy("two", ["2"] * 10) == 0.0              # number words stay words
    assert S.vqa_accuracy("Two.", ["2"] * 10) == 0.0
    assert S.vqa_accuracy("red white", ["red, white"] * 10) == 0.0
    # GT whitespace is cleaned before the "all identical" test.
    assert S.vqa_accuracy("yes", ["yes", " yes", "yes\t"] + ["yes"] * 7) == 1.0


def test_vqa_accuracy_leave_one_out():
    # GT: 2 x "2", 8 x "3"; prediction "2".
    # leaving out a "2" (2 times): 1 match -> 1/3; leaving out a "3" (8 times): 2 -> 2/3.
    # mean = (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    assert S.vqa_accuracy("2", ["2", "2"] + ["3"] * 8) == pytest.approx(0.6)
    # 3 matching GTs: leaving one of them out leaves 2 -> 2/3 (3 times); else 3 -> 1 (7 times)
    # mean = (3 * 2/3 + 7) / 10 = 0.9
    assert S.vqa_accuracy("cat", ["cat"] * 3 + ["dog"] * 7) == pytest.approx(0.9)


def test_vqa_differing_gts_process_both_sides():
    # GTs differ -> punctuation, numbers, articles, contractions on GTs *and* prediction.
    assert S.vqa_accuracy("Two", ["2"] * 9 + ["3"]) == pytest.approx(0.9 * 1 + 0.1 * 1)
    assert S.vqa_accuracy("red white", ["red, white"] * 4 + ["red white"] * 6) == 1.0
    assert S.vqa_accuracy("the dog", ["Dog"] * 3 + ["cat"] * 7) == pytest.approx(0.9)
    assert S.vqa_accuracy("isnt", ["isn't"] * 3 + ["no"] * 7) == pytest.approx(0.9)
    # "yes!" -> "yes" on both sides now.
    assert S.vqa_accuracy("yes", ["yes!"] * 3 + ["no"] * 7) == pytest.approx(0.9)


def test_vqa_leave_one_out_is_by_annotation_dict():
    # The official loop drops every annotation dict equal to the one left out. Real
    # annotations differ by answer_id; dicts without one drop all their twins at once.
    twins = [{"answer": "cat"}] * 3 + [{"answer": "dog", "answer_id": i} for i in range(7)]
    # leaving out a "cat" leaves no cat -> 0 (3 times); leaving out a dog -> 3 cats -> 1 (7)
    assert S.vqa_accuracy("cat", twins) == pytest.approx(0.7)


def test_score_vqav2_per_answer_type_and_missing():
    gt = {1: {"answers": ["yes"] * 10, "answer_type": "yes/no", "question_type": "is"},
          2: {"answers": ["2"] * 10, "answer_type": "number", "question_type": "how many"},
          3: {"answers": ["red"] * 10, "answer_type": "other", "question_type": "what"},
          4: {"answers": ["", " "] + ["x"] * 8, "answer_type": "other", "question_type": "what"}}
    out = S.score_vqav2({1: "Yes", 2: "three"}, gt)   # 1 right, 1 wrong, 2 missing
    # missing answers are uploaded as '': question 4 has two empty GTs -> (2*1/3+8*2/3)/10 = .6
    assert out["overall"] == pytest.approx(round(100 * 1.6 / 4, 2))
    assert out["per_answer_type"] == {"number": 0.0, "other": 30.0, "yes/no": 100.0}
    assert out["n_missing"] == 2


# --------------------------------------------------------------------------- TextVQA


def test_evalai_processor():
    assert evalai_process("Coca-Cola") == "coca cola"
    assert evalai_process("McDonald's") == "mcdonald 's"   # "'s" split off
    assert evalai_process("What?") == "what"
    assert evalai_process("1,000") == "1000"                # "," dropped by word_tokenize


def test_textvqa_mean_over_answered_questions_only():
    gt = {"a": {"answers": ["nokia"] * 10}, "b": {"answers": ["stop"] * 10},
          "c": {"answers": ["exit"] * 10}}
    out = S.score_textvqa({"a": "Nokia", "b": "go"}, gt)   # c unanswered: not in the mean
    assert out["accuracy"] == 50.0 and out["n"] == 2 and out["n_missing"] == 1
    assert S.score_textvqa({}, gt)["accuracy"] is None


def test_textvqa_accuracy():
    # GTs are processed too: "Coca-Cola" -> "coca cola" matches "COCA COLA".
    assert S.textvqa_accuracy("COCA COLA", ["Coca-Cola"] * 10) == 1.0
    # unique "nokia": 2 of 10. Same leave-one-out arithmetic as above -> 0.6
    assert S.textvqa_accuracy("Nokia.", ["nokia"] * 2 + ["nokia phone"] * 8) == pytest.approx(0.6)
    assert S.textvqa_accuracy("samsung", ["nokia"] * 10) == 0.0


# --------------------------------------------------------------------------- GQA


def test_gqa_normalisation():
    gt = {"a": {"answer": "yes"}, "b": {"answer": "left"}, "c": {"answer": "no"},
          "d": {"answer": "man"}}
    out = S.score_gqa({"a": "Yes.", "b": "Left...", "c": " no", "d": "The man"}, gt)
    # "Yes." -> "yes" ok; "Left..." -> "left" ok; " no" keeps its space; "the man" != "man"
    assert out["accuracy"] == 50.0


# --------------------------------------------------------------------------- POPE


@pytest.mark.parametrize("text, parsed", [
    ("No, there is not.", "no"),
    ("Yes, there is a dog in the image.", "yes"),
    ("There is no dog.", "no"),
    ("NO", "yes"),                 # only "No", "no", "not" count
    ("Not really", "yes"),
    ("Yes. But no cat.", "yes"),   # only the first sentence is read
    ("no,", "no"),                 # commas removed before splitting
    ("", "yes"),
])
def test_pope_llava_parsing(text, parsed):
    assert S.pope_parse_llava(text) == parsed


def _pope_gt(spec):
    """{key: gt} from {split: [(key, label)]} in label-file order."""
    gt = {}
    for split, rows in spec.items():
        labels = [l for _, l in rows]
        for pos, (k, l) in enumerate(rows):
            gt[k] = {"label": l, "category": split, "pos": pos, "split_labels": labels}
    return gt


def test_pope_metrics_per_split_and_mean_f1():
    gt = _pope_gt({"adversarial": [("a1", "yes"), ("a2", "yes"), ("a3", "no"), ("a4", "no")],
                   "random": [("r1", "yes"), ("r2", "no")]})
    preds = {"a1": "Yes", "a2": "No", "a3": "Yes, there is.", "a4": "No, there is not.",
             "r1": "Yes", "r2": "no"}
    out = S.score_pope(preds, gt)
    adv = out["splits"]["adversarial"]
    # TP=1 (a1) FN=1 (a2) FP=1 (a3) TN=1 (a4): acc .5, precision .5, recall .5, F1 .5
    assert (adv["TP"], adv["FP"], adv["TN"], adv["FN"]) == (1, 1, 1, 1)
    assert adv["precision"] == 0.5 and adv["recall"] == 0.5 and adv["f1"] == 0.5
    assert adv["yes_ratio"] == 0.5
    assert out["splits"]["random"]["f1"] == 1.0
    assert out["f1_mean"] == pytest.approx(75.0)   # (0.5 + 1.0) / 2 x 100
    assert out["n_misaligned"] == 0


def test_pope_pairs_by_position_like_eval_pope():
    gt = _pope_gt({"random": [("r1", "yes"), ("r2", "no"), ("r3", "yes"), ("r4", "no")]})
    # A prefix: zip stops at the answers -> 2 pairs, both right.
    out = S.score_pope({"r1": "Yes", "r2": "No"}, gt)
    assert out["splits"]["random"]["n"] == 2 and out["splits"]["random"]["accuracy"] == 1.0
    # A gap: r3's answer is paired with r2's label "no" -> the official script calls it FP.
    out = S.score_pope({"r1": "Yes", "r3": "Yes"}, gt)
    m = out["splits"]["random"]
    assert (m["TP"], m["FP"]) == (1, 1) and out["n_misaligned"] == 1
    # File order decides, not question order.
    out = S.score_pope({"r2": "No", "r1": "Yes"}, gt)
    assert out["splits"]["random"]["accuracy"] == 0.0 and out["n_misaligned"] == 2
    assert S.score_pope({}, gt)["f1_mean"] is None


def test_pope_lmms_exact_match():
    gt = {k: {"label": l, "category": "random"} for k, l in
          [("1", "yes"), ("2", "yes"), ("3", "no"), ("4", "no")]}
    out = S.score_pope_lmms({"1": "Yes", "2": "Yes.", "3": "no", "4": "yes"}, gt)
    # "Yes" -> "yes" hit; "yes." is neither class -> wrong and outside TP/FN; 3 hit; 4 FP
    assert out["accuracy"] == 0.5
    assert out["precision"] == 0.5            # TP=1, FP=1
    assert out["recall"] == 1.0               # TP=1, FN=0 ("yes." is not "no")
    assert out["yes_ratio"] == 0.5            # lmms-eval counts ground-truth yes


# --------------------------------------------------------------------------- MME


@pytest.mark.parametrize("text, parsed", [
    ("Yes", "yes"), ("yes, there is a train", "yes"), ("No.", "no"),
    ("Not sure", "no"),          # "not " contains "no"
    ("I think yes", "other"),    # neither in the first 4 chars
    ("Y", "other"),
])
def test_mme_parse(text, parsed):
    assert S.mme_parse(text) == parsed


def test_mme_acc_plus_and_totals():
    gt = {
        "e1a": ("Yes", "existence", "e/1"), "e1b": ("No", "existence", "e/1"),
        "e2a": ("Yes", "existence", "e/2"), "e2b": ("No", "existence", "e/2"),
        "c1a": ("Yes", "count", "c/1"), "c1b": ("No", "count", "c/1"),
        "k1a": ("Yes", "code_reasoning", "k/1"), "k1b": ("No", "code_reasoning", "k/1"),
    }
    gt = {k: {"answer": a, "category": c, "image": i} for k, (a, c, i) in gt.items()}
    preds = {"e1a": "Yes", "e1b": "no", "e2a": "yes, ...", "e2b": "Yes",
             "c1a": "Yes", "c1b": "No", "k1a": "maybe", "k1b": "No"}
    out = S.score_mme(preds, gt)
    ex = out["subtasks"]["existence"]
    # 3 of 4 questions right -> acc 75; image 1 both right, image 2 not -> acc+ 50
    assert (ex["acc"], ex["acc_plus"], ex["score"]) == (75.0, 50.0, 125.0)
    assert out["subtasks"]["count"]["score"] == 200.0
    assert out["perception"] == 325.0
    # code_reasoning: 1 of 2 right -> 50, acc+ 0 -> 50
    assert out["cognition"] == 50.0
    assert out["total"] == 375.0
    # Only answered questions reach calculation.py: drop count entirely and image e/2.
    for k in ("c1a", "c1b", "e2a", "e2b"):
        del preds[k]
    out = S.score_mme(preds, gt)
    assert out["subtasks"]["existence"]["score"] == 200.0
    assert "count" in out["missing_subtasks"] and out["perception"] == 200.0
    assert out["n_subtasks_answered"] == 2 and out["images_half_answered"] == 0


# --------------------------------------------------------------------------- ScienceQA


@pytest.mark.parametrize("text, letter", [
    ("B", "B"),
    ("B. slippery", "B"),
    ("The answer is B.", "B"),
    ("I think. The answer is C, clearly", "C"),   # "." in the regex is any character
    ("The answer is B", "FAILED"),                 # nothing after the letter
    ("the answer is B.", "FAILED"),                # case-sensitive
    ("The answer is A. The answer is B.", "FAILED"),  # must match exactly once
    (" B", "FAILED"),
    ("b", "FAILED"),
    ("B.slippery", "FAILED"),
])
def test_sqa_parse(text, letter):
    assert S.sqa_parse(text) == letter


def test_sqa_scoring_letter_range_and_failed():
    gt = {"1": {"answer": 1, "n_choices": 2}, "2": {"answer": 0, "n_choices": 2},
          "3": {"answer": 2, "n_choices": 3}, "4": {"answer": 0, "n_choices": 2},
          "5": {"answer": 0, "n_choices": 2}, "6": {"answer": 1, "n_choices": 2}}
    preds = {"1": "The answer is B.", "2": "E", "3": "C. opaque", "4": "dunno", "6": "B"}
    prompts = {k: "<image>\nQ" for k in ("1", "2", "3", "4")}
    prompts["6"] = "Q (text only)"
    out = S.score_sqa(preds, gt, prompts)
    # IMG: 1 right; "E" is outside 2 choices -> wrong; 3 right; FAILED wrong -> 2 / 4.
    # 5 is unanswered: prompt 'Unknown', so it leaves the IMG denominator.
    assert out["img_accuracy"] == 50.0 and out["n_img"] == 4
    # all test problems: 1, 3, 6 right of 6 (the missing 5 is FAILED)
    assert out["accuracy"] == 50.0 and out["n"] == 6
    assert out["n_failed"] == 2
    # no record carries <image>: the official script would divide by zero
    assert S.score_sqa(preds, gt, {})["img_accuracy"] is None


# --------------------------------------------------------------------------- MMBench


@pytest.mark.parametrize("answer, letter", [
    ("B", "B"),
    ("The answer is B.", "B"),           # decorated "B."
    ("(C)", "C"),
    ("C) bird", "C"),
    ("Answer:D", None),                  # ":D" only counts as its own token
    ("answer :D", "D"),
    ("A and B", None),                   # two bare letters
    ("A cat is on the mat", None),       # "A" with > 3 tokens may be an article
])
def test_mmbench_infer_option(answer, letter):
    assert S.mmbench_infer_option(answer) == letter


def test_mmbench_infer_text():
    ch = {"A": "dog", "B": "cat", "C": "bird"}
    assert S.mmbench_extract("A cat is on the mat", ch) == "B"
    assert S.mmbench_extract("a dog and a cat", ch) is None        # two options' texts
    assert S.mmbench_extract("I don't know", ch) is None


def test_mmbench_round_answer():
    # options [x, y, z], right = B (y). Round 1 shows [y, z, x] -> A; round 2 [z, x, y] -> C.
    assert [S.mmbench_round_answer("B", 3, r) for r in range(3)] == ["B", "A", "C"]
    assert S.mmbench_round_answer("A", 4, 1) == "D"


def _mm_gt(index, answer, options, rounds=None):
    out = {}
    n = len(options)
    opts = list(options)
    for r in range(rounds or n):
        out[f"{index}#r{r}"] = {"group": index % 1_000_000, "index": index, "round": r,
                                "answer": S.mmbench_round_answer(answer, n, r),
                                "choices": dict(zip("ABCD", opts)), "category": "cat",
                                "l2_category": "l2"}
        opts = opts[1:] + opts[:1]
    return out


def test_mmbench_circular_one_failed_round_fails_the_question():
    gt = {**_mm_gt(0, "B", ["dog", "cat", "bird"]), **_mm_gt(1, "A", ["winter", "summer"])}
    preds = {"0#r0": "B", "0#r1": "A", "0#r2": "I cannot tell",   # last round unmapped
             "1#r0": "A", "1#r1": "B. winter"}
    out = S.score_mmbench(preds, gt)
    assert out["circular_accuracy"] == 50.0     # only question 1 survives every round
    assert out["round0_accuracy"] == 100.0      # both right in round 0
    assert out["n_unmapped"] == 1
    assert out["unmapped_ratio"] == pytest.approx(1 / 5)
    # a wrong (mapped) round also fails the question
    preds["0#r2"] = "A"
    assert S.score_mmbench(preds, gt)["circular_accuracy"] == 50.0
    preds["0#r2"] = "C"
    assert S.score_mmbench(preds, gt)["circular_accuracy"] == 100.0


def test_mmbench_circular_copies_group_by_index_mod_1e6():
    # LLaVA's default file: one record per tsv row; rows 7 and 1000007 are one question.
    gt = {**_mm_gt(7, "B", ["dog", "cat"], rounds=1),
          **_mm_gt(1_000_007, "A", ["cat", "dog"], rounds=1),
          **_mm_gt(8, "A", ["x", "y"], rounds=1)}
    preds = {"7#r0": "B", "1000007#r0": "A", "8#r0": "A"}
    out = S.score_mmbench(preds, gt)
    assert out["n_questions"] == 2 and out["circular_accuracy"] == 100.0
    preds["1000007#r0"] = "B"          # the copy fails -> the question fails
    assert S.score_mmbench(preds, gt)["circular_accuracy"] == 50.0
    del preds["1000007#r0"]            # a missing copy is wrong too
    out = S.score_mmbench(preds, gt)
    assert out["circular_accuracy"] == 50.0 and out["n_missing"] == 1
    assert out["round0_accuracy"] == 100.0   # rows 7 and 8 as first shown
