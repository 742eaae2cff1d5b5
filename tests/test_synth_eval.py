"""The synthvqa benchmark: tools/make_synth.py's files, the reader, the scorer and an eval on a tiny model."""
import json
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest
from PIL import Image

from paddle_rc.eval import benchmarks as B
from paddle_rc.eval import cli
from paddle_rc.eval.scorers import score_synthvqa
from paddle_rc.errors import UserError
from paddle_rc.synth import generate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import make_synth  # noqa: E402


def _make(root, seed=21, n=30):
    assert make_synth.main(["--seed", str(seed), "--n", str(n), "--out", str(root), "--no-progress"]) == 0
    return os.path.join(str(root), "synthvqa")


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def test_make_synth_layout_is_deterministic_and_matches_the_generator(tmp_path):
    a, b = _make(tmp_path / "a"), _make(tmp_path / "b")
    for name in ("llava_synthvqa.jsonl", "synthvqa_annotations.json"):
        assert _read(os.path.join(a, name)) == _read(os.path.join(b, name))
    rows = [json.loads(l) for l in open(os.path.join(a, "llava_synthvqa.jsonl"))]
    anns = json.load(open(os.path.join(a, "synthvqa_annotations.json")))
    assert anns["generator"]["seed"] == 21 and anns["generator"]["n"] == 30
    items = generate(21, 30)
    assert len(rows) == len(anns["annotations"]) == 30 and len(os.listdir(os.path.join(a, "images"))) == 30
    for row, ann, it in zip(rows, anns["annotations"], items):
        assert row["question_id"] == ann["question_id"] == it.id
        assert row["text"] == it.question + "\nAnswer the question using a single word or phrase."
        assert row["category"] == ann["qtype"] == it.qtype and ann["answer"] == it.answer
        assert ann["target"] == it.target and [tuple(o["bbox"]) for o in ann["objects"]] == [o.bbox for o in it.objects]
        pixels = np.asarray(Image.open(os.path.join(a, "images", row["image"])))
        assert np.array_equal(pixels, np.asarray(it.image))  # lossless
        assert np.array_equal(pixels, np.asarray(Image.open(os.path.join(b, "images", row["image"]))))
    assert not [f for f in os.listdir(tmp_path / "a") if f.startswith(".")]  # no temporary folder left


def test_make_synth_user_errors(tmp_path):
    _make(tmp_path, n=3)
    for argv, needle in ((["--seed", "1", "--n", "3", "--out", str(tmp_path)], "--overwrite"),
                         (["--seed", "1", "--n", "0", "--out", str(tmp_path / "x")], "--n >= 1")):
        p = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_synth.py")] + argv,
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
        assert p.returncode == 2 and p.stderr.strip().startswith("error:") and needle in p.stderr
        assert len(p.stderr.strip().splitlines()) == 1
    # --overwrite replaces the benchmark with the new seed's items
    assert make_synth.main(["--seed", "2", "--n", "4", "--out", str(tmp_path), "--overwrite", "--no-progress"]) == 0
    bench = B.load_benchmark("synthvqa", str(tmp_path))
    assert [it.question_id for it in bench.items] == [f"synth-2-{i:06d}" for i in range(4)]


def test_scorer_by_hand():
    gt = {"a": {"answer": "2", "qtype": "count"}, "b": {"answer": "yes", "qtype": "exist"},
          "c": {"answer": "red", "qtype": "colour"}, "d": {"answer": "star", "qtype": "shape"},
          "e": {"answer": "no", "qtype": "exist"}}
    preds = {"a": "Two.",        # number word -> digit, period dropped: right
             "b": "Yes",         # case: right
             "c": "the red",     # article dropped: right
             "d": "stars",       # not the same word: wrong
             }                   # "e" missing: wrong
    s = score_synthvqa(preds, gt)
    assert s["accuracy"] == 60.0 and s["n"] == 5 and s["n_missing"] == 1
    assert s["per_question_type"] == {"colour": 100.0, "count": 100.0, "exist": 50.0, "shape": 0.0}
    assert s["n_per_question_type"] == {"colour": 1, "count": 1, "exist": 2, "shape": 1}


def test_reader_and_missing_files(tmp_path):
    d = _make(tmp_path, n=12)
    bench = B.load_benchmark("synth", str(tmp_path))
    assert bench.name == "synthvqa" and len(bench.items) == 12
    it = bench.items[0]
    assert it.prompt.endswith("single word or phrase.") and "\n" not in it.question
    assert it.metadata["qtype"] == it.metadata["category"] and os.path.isfile(it.image)
    os.unlink(os.path.join(d, "synthvqa_annotations.json"))
    with pytest.raises(UserError, match="synthvqa_annotations.json"):
        B.load_benchmark("synthvqa", str(tmp_path))


class OraclePredictor:
    """Answers from the annotations for some question types (as 'The X.'), 'zzz' otherwise. Questions
    repeat across images, so the answer is looked up by the image's pixels."""

    model_id = "oracle"

    def __init__(self, answers, right_types):
        self.answers, self.right_types = answers, right_types

    def set_method(self, method, budget=None, **options):
        self.method, self.budget = method, budget

    def answer(self, image, prompt, question, max_new_tokens=128, temperature=0.0):
        ans, qtype = self.answers[np.asarray(image).tobytes()]
        text = f"The {ans}." if qtype in self.right_types else "zzz"
        return {"text": text, "visual_tokens": 10, "visual_tokens_before": 576, "stage_counts": {},
                "timings": {"vision": 0.01, "prefill": 0.02, "decode": 0.03}}


def test_eval_summary_and_report_per_question_type(tmp_path):
    d = _make(tmp_path / "data", n=24)
    anns = json.load(open(os.path.join(d, "synthvqa_annotations.json")))["annotations"]
    answers = {np.asarray(Image.open(os.path.join(d, "images", a["image"])).convert("RGB")).tobytes():
               (a["answer"], a["qtype"]) for a in anns}
    out = str(tmp_path / "out")
    rc = cli.main(["--benchmark", "synthvqa", "--data-root", str(tmp_path / "data"), "--method", "rc",
                   "--out", out, "--no-progress"], predictor=OraclePredictor(answers, {"colour", "count"}))
    assert rc == 0
    s = json.load(open(os.path.join(out, "synthvqa", "rc.summary.json")))
    n_right = sum(a["qtype"] in ("colour", "count") for a in anns)
    assert s["score"] == round(100.0 * n_right / 24, 2)
    assert s["per_question_type"]["colour"] == s["per_question_type"]["count"] == 100.0
    assert s["per_question_type"]["word"] == s["per_question_type"]["exist"] == 0.0
    assert s["extra_scores"]["synthvqa_colour"] == 100.0
    report = open(os.path.join(out, "report.md")).read()
    assert "| synthvqa_count | rc | 100.00 |" in report and "| synthvqa_word | rc | 0.00 |" in report
    # the per-type table: run, tokens, overall, then the types in alphabetical order
    pt = s["per_question_type"]
    assert (f"| rc | 10.0 | {s['score']:.1f} | " + " | ".join(f"{pt[t]:.1f}" for t in sorted(pt))
            + " | 0.0100 | 0.0200 |") in report


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A random-weight checkpoint at 112 px (64 patches) with the project's tiny tokenizers."""
    from conftest import tiny_llava_config

    from paddle_rc.data.clip_tokenizer import CLIPTokenizer
    from paddle_rc.data.llama_tokenizer import LlamaTokenizer
    from paddle_rc.data.tiny_tokenizers import build_tiny_clip_bpe, build_tiny_sentencepiece
    from paddle_rc.models import LlavaForConditionalGeneration
    from paddle_rc.models.weights import save_weights

    d = str(tmp_path_factory.mktemp("synth_ckpt"))
    build_tiny_sentencepiece(os.path.join(d, "tokenizer"))
    build_tiny_clip_bpe(os.path.join(d, "clip_tokenizer"))
    llm_tok = LlamaTokenizer.from_dir(os.path.join(d, "tokenizer"))
    clip_tok = CLIPTokenizer.from_dir(os.path.join(d, "clip_tokenizer"))
    cfg = tiny_llava_config(vocab=llm_tok.vocab_size, image_size=112)
    cfg.text.vocab_size = clip_tok.vocab_size
    cfg.text.bos_token_id, cfg.text.eos_token_id = clip_tok.bos_token_id, clip_tok.eos_token_id
    cfg.text.pad_token_id = clip_tok.pad_token_id
    cfg.llm.bos_token_id, cfg.llm.eos_token_id = llm_tok.bos_token_id, llm_tok.eos_token_id
    cfg.llm.pad_token_id = llm_tok.pad_token_id
    paddle.seed(3)
    model = LlavaForConditionalGeneration(cfg)
    cfg.save(d)
    save_weights(model, d)
    return d


def test_thirty_question_eval_of_two_methods_on_a_tiny_model(tmp_path, tiny_checkpoint):
    _make(tmp_path / "data", seed=5, n=30)
    out = str(tmp_path / "out")
    rc = cli.main(["--model", tiny_checkpoint, "--benchmark", "synthvqa", "--data-root", str(tmp_path / "data"),
                   "--method", "none,rc", "--budget", "16", "--max-new-tokens", "3", "--out", out,
                   "--no-progress"])
    assert rc == 0
    anns = {a["question_id"]: a for a in
            json.load(open(os.path.join(tmp_path, "data", "synthvqa", "synthvqa_annotations.json")))["annotations"]}
    from paddle_rc.eval.normalize import vqa_normalize_prediction
    for tag, tokens in (("none", 64), ("rc-b16", 16)):
        s = json.load(open(os.path.join(out, "synthvqa", tag + ".summary.json")))
        recs = [json.loads(l) for l in open(os.path.join(out, "synthvqa", tag + ".jsonl"))]
        assert s["n_answered"] == len(recs) == 30 and s["avg_visual_tokens"] == tokens
        right = [vqa_normalize_prediction(r["text"]) == anns[r["question_id"]]["answer"] for r in recs]
        assert s["score"] == round(100.0 * sum(right) / 30, 2)
        assert sum(s["n_per_question_type"].values()) == 30
    report = open(os.path.join(out, "report.md")).read()
    assert "| synthvqa | rc-b16 |" in report and "synthvqa_spatial" in report


def test_object_patches_by_hand():
    from paddle_rc.benchmark.coverage import object_patches

    # 336 px in a 16 x 16 grid: 21 px patches. Box x 21..46: all of patch 1, 5/21 = 0.24 of patch 2.
    assert object_patches((21, 0, 47, 21), 336, 16) == [1, 2]
    assert object_patches((21, 0, 46, 21), 336, 16) == [1]           # 4/21 = 0.19 of patch 2 is too little
    assert object_patches((40, 40, 44, 44), 336, 16) == [16 + 1]     # tiny box: the most-covered patch
    assert object_patches((0, 0, 336, 336), 336, 16) == list(range(256))


def test_coverage_runs_and_counts(tmp_path, tiny_checkpoint):
    from paddle_rc.benchmark.coverage import format_coverage_table, run_coverage
    from paddle_rc.predictor import build_predictor

    _make(tmp_path, seed=8, n=18)
    anns = json.load(open(os.path.join(tmp_path, "synthvqa", "synthvqa_annotations.json")))["annotations"]
    rows = run_coverage(build_predictor(model_dir=tiny_checkpoint), str(tmp_path),
                        ["none", "random@4", "rc@8", "rc:no-text@8"], batch=5, progress=False)
    n = sum(1 for a in anns if a["target"])
    assert [r["n"] for r in rows] == [n] * 4 and n == 18  # every synth-v3 question has a target object
    assert rows[0]["covered"] == 100.0 and rows[0]["tokens"] == 64
    assert rows[1]["tokens"] == 4 and rows[1]["covered"] < 100.0
    assert rows[3]["covered_by_text"] == 0.0 and not rows[3]["question"]
    assert rows[2]["covered_by_text"] <= rows[2]["covered"]
    assert "| random@4 | 4.0 |" in format_coverage_table(rows)


def test_eval_positions_full_is_its_own_run(tmp_path):
    """--positions full answers under its own tag (rc-b8-fullpos) with the layout in its manifest, so the
    compact run's answers are never reused for it; the predictor is asked for that layout."""
    d = _make(tmp_path / "data", n=6)
    anns = json.load(open(os.path.join(d, "synthvqa_annotations.json")))["annotations"]
    answers = {np.asarray(Image.open(os.path.join(d, "images", a["image"])).convert("RGB")).tobytes():
               (a["answer"], a["qtype"]) for a in anns}
    seen = []

    class Recording(OraclePredictor):
        def set_method(self, method, budget=None, **options):
            seen.append((method, budget, options))
            super().set_method(method, budget)

    out = str(tmp_path / "out")
    common = ["--benchmark", "synthvqa", "--data-root", str(tmp_path / "data"), "--method", "rc", "--budget", "8",
              "--out", out, "--no-progress"]
    assert cli.main(common, predictor=Recording(answers, {"colour"})) == 0
    assert cli.main(common + ["--positions", "full"], predictor=Recording(answers, {"colour"})) == 0
    assert {s[2]["positions"] for s in seen[:len(seen) // 2]} == {"compact"}
    assert {s[2]["positions"] for s in seen[len(seen) // 2:]} == {"full"}
    files = sorted(os.listdir(os.path.join(out, "synthvqa")))
    assert "rc-b8.jsonl" in files and "rc-b8-fullpos.jsonl" in files
    from paddle_rc.eval.runner import run_tag

    assert run_tag("none", None, "full") == "none" and run_tag("rc", None, "full") == "rc-fullpos"
    assert cli.main(common + ["--positions", "sideways"], predictor=Recording(answers, set())) == 2
