"""Runner / CLI: answer-file layout, resume after a kill, torn lines, bad images, chunks +
merge, score-only, config overrides and the report."""
import io
import json
import os

import pytest
from PIL import Image

from paddle_rc.errors import UserError
from paddle_rc.eval import benchmarks as B
from paddle_rc.eval import cli

from test_eval_layouts import make_data_root


def pil_loader(src):
    """Stand-in for paddle_rc.data.image.load_image: path or bytes -> RGB image."""
    try:
        im = Image.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src)
        return im.convert("RGB")
    except Exception as e:
        raise UserError(f"cannot read image {src if isinstance(src, str) else '<bytes>'}: {e}")


class FakePredictor:
    """Deterministic answers; optional KeyboardInterrupt after ``kill_after`` answers."""

    model_id = "fake-llava"
    identity = {"kind": "fake", "digest": "0"}

    def __init__(self, kill_after=None, answers=None):
        self.kill_after = kill_after
        self.calls = []
        self.method, self.budget = "none", None
        self.answers = answers or {}

    def set_method(self, method, budget=None):
        self.method, self.budget = method, budget

    def answer(self, image, prompt, question, max_new_tokens=128, temperature=0.0):
        assert isinstance(image, Image.Image)
        assert "<image>" not in prompt and temperature == 0.0
        if self.kill_after is not None and len(self.calls) >= self.kill_after:
            raise KeyboardInterrupt
        self.calls.append(prompt)
        text = self.answers.get(question)
        if text is None:
            text = "Yes" if self.method == "none" else "No"
        kept = 576 if self.method == "none" else (self.budget or 64)
        return {"text": text, "visual_tokens": kept, "visual_tokens_before": 576,
                "stage_counts": {"visual": kept}, "timings": {"vision": 0.01, "prefill":
                                                              0.002 * kept, "decode": 0.05}}


@pytest.fixture
def data_root(tmp_path):
    return make_data_root(str(tmp_path / "eval"))


def _run(argv, predictor=None):
    return cli.main(argv, predictor=predictor, image_loader=pil_loader)


def _lines(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def test_answer_file_layout_and_summary(data_root, tmp_path):
    out = str(tmp_path / "out")
    rc = _run(["--benchmark", "pope,mmbench", "--data-root", data_root, "--method", "rc",
               "--budget", "64", "--out", out, "--no-progress"], FakePredictor())
    assert rc == 0
    recs = _lines(os.path.join(out, "pope", "rc-b64.jsonl"))
    assert len(recs) == 6
    r = recs[0]
    assert {"question_id", "prompt", "text", "model_id", "metadata"} <= set(r)
    assert r["model_id"] == "fake-llava" and r["text"] == "No"
    m = r["metadata"]
    assert m["visual_tokens"] == 64 and m["visual_tokens_before"] == 576
    assert set(m["timings"]) == {"vision", "prefill", "decode"}
    assert m["method"] == "rc" and m["budget"] == 64 and m["split"] == "adversarial"
    mm = _lines(os.path.join(out, "mmbench", "rc-b64.jsonl"))
    assert [x["round_id"] for x in mm] == [0, 0, 0]      # LLaVA's default: one per tsv row
    assert [x["question_id"] for x in mm] == [0, 1, 1000000]
    with open(os.path.join(out, "pope", "rc-b64.summary.json")) as f:
        s = json.load(f)
    # "No" everywhere: every split has TP = 0 -> F1 0, accuracy 50%
    assert s["score"] == 0.0 and s["extra_scores"]["pope_acc"] == 50.0
    assert s["avg_visual_tokens"] == 64
    for ext in ("md", "csv", "json"):
        assert os.path.exists(os.path.join(out, "report." + ext))
    assert not any(f.endswith(".tmp") for f in os.listdir(os.path.join(out, "pope")))


def test_kill_then_resume_loses_nothing_and_duplicates_nothing(data_root, tmp_path):
    out = str(tmp_path / "out")
    argv = ["--benchmark", "mme", "--data-root", data_root, "--method", "none", "--out", out,
            "--no-progress"]
    assert _run(argv, FakePredictor(kill_after=3)) == 130
    path = os.path.join(out, "mme", "none.jsonl")
    first = _lines(path)
    assert len(first) == 3
    # A kill in the middle of a write leaves half a line behind.
    with open(path, "a") as f:
        f.write('{"question_id": "artwork/10049.jpg", "prompt": "Is this art')
    pred = FakePredictor()
    assert _run(argv, pred) == 0
    recs = _lines(path)  # would raise on a torn line still in the file
    bench = B.load_benchmark("mme", data_root)
    assert [r["uid"] for r in recs] == [it.uid for it in bench.items]
    assert len(pred.calls) == len(bench.items) - 3          # only the missing ones were asked
    assert [r["answer_id"] for r in recs[:3]] == [r["answer_id"] for r in first]
    # a third run has nothing to do
    pred2 = FakePredictor()
    assert _run(argv, pred2) == 0 and pred2.calls == []


def test_torn_line_detection_unit(tmp_path):
    from paddle_rc.eval.io import read_jsonl_tolerant, repair_jsonl
    p = str(tmp_path / "a.jsonl")
    with open(p, "w") as f:
        f.write('{"uid": "1"}\n{"uid": "2"}\n{"uid": "3"')  # complete JSON but no newline
    recs, bad, end, torn = read_jsonl_tolerant(p)
    assert [r["uid"] for r in recs] == ["1", "2"] and torn and not bad
    repair_jsonl(p)
    with open(p) as f:
        assert f.read() == '{"uid": "1"}\n{"uid": "2"}\n'
    with open(p, "w") as f:
        f.write('{"uid": "1"}\n{"uid"\n{"uid": "3"}\n')  # damage in the middle is not a kill
    assert read_jsonl_tolerant(p)[1] == [2]


def test_corrupt_and_missing_images_are_recorded_not_fatal(data_root, tmp_path):
    out = str(tmp_path / "out")
    bad = os.path.join(data_root, "gqa", "data", "images", "n161313.jpg")
    with open(bad, "wb") as f:
        f.write(b"\x89PNG not really an image")
    rc = _run(["--benchmark", "gqa,sqa_img", "--data-root", data_root, "--method", "none",
               "--out", out, "--no-progress"], FakePredictor())
    assert rc == 0
    errs = _lines(os.path.join(out, "gqa", "none.errors.jsonl"))
    assert [e["uid"] for e in errs] == ["201307251"]
    assert "cannot read image" in errs[0]["error"] and errs[0]["image"] == bad
    assert [r["uid"] for r in _lines(os.path.join(out, "gqa", "none.jsonl"))] == ["201640614"]
    with open(os.path.join(out, "gqa", "none.summary.json")) as f:
        s = json.load(f)
    assert s["n_errors"] == 1 and s["n_answered"] == 1 and s["n_items"] == 2
    assert s["coverage"] == "1/2" and s["partial"]
    # a missing image file (deleted after reading the layout) is handled the same way
    os.remove(os.path.join(data_root, "scienceqa", "images", "test", "7", "image.png"))
    out2 = str(tmp_path / "out2")
    assert _run(["--benchmark", "sqa_img", "--data-root", data_root, "--method", "none",
                 "--out", out2, "--no-progress"], FakePredictor()) == 0
    assert [e["uid"] for e in _lines(os.path.join(out2, "sqa_img", "none.errors.jsonl"))] == ["7"]


def test_chunks_plus_merge_equal_single_run(data_root, tmp_path):
    answers = {"Is it overcast?": "no"}
    single, chunked = str(tmp_path / "single"), str(tmp_path / "chunked")
    base = ["--benchmark", "mme,gqa,mmbench", "--data-root", data_root, "--method", "rc",
            "--no-progress"]
    assert _run(base + ["--out", single], FakePredictor(answers=answers)) == 0
    for k in range(3):
        assert _run(base + ["--out", chunked, "--num-chunks", "3", "--chunk-idx", str(k)],
                    FakePredictor(answers=answers)) == 0
    assert not os.path.exists(os.path.join(chunked, "mme", "rc.jsonl"))
    assert _run(base + ["--out", chunked, "--num-chunks", "3", "--merge"]) == 0
    for name in ("mme", "gqa", "mmbench"):
        a = [(r["uid"], r["text"]) for r in _lines(os.path.join(single, name, "rc.jsonl"))]
        b = [(r["uid"], r["text"]) for r in _lines(os.path.join(chunked, name, "rc.jsonl"))]
        assert a == b and len(a) == len(B.load_benchmark(name, data_root).items)
        with open(os.path.join(single, name, "rc.summary.json")) as f:
            sa = json.load(f)
        with open(os.path.join(chunked, name, "rc.summary.json")) as f:
            sb = json.load(f)
        assert sa["score"] == sb["score"] and sa["n_answered"] == sb["n_answered"]
    with open(os.path.join(single, "gqa", "rc.summary.json")) as f:
        assert json.load(f)["score"] == 50.0     # "no" right, "No" for "woman" wrong


def test_merge_with_a_missing_chunk_is_a_user_error(data_root, tmp_path, capsys):
    out = str(tmp_path / "out")
    base = ["--benchmark", "gqa", "--data-root", data_root, "--method", "rc", "--no-progress",
            "--out", out, "--num-chunks", "2"]
    assert _run(base + ["--chunk-idx", "0"], FakePredictor()) == 0
    capsys.readouterr()
    assert _run(base + ["--merge"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot merge") and "rc.2_1.jsonl" in err[0]


def test_score_only_and_llava_answer_files(data_root, tmp_path):
    out = str(tmp_path / "out")
    os.makedirs(os.path.join(out, "sqa_img"))
    # An answer file as LLaVA's model_vqa_science.py writes it (no uid, "<image>" in prompt).
    llava = os.path.join(str(tmp_path), "llava-v1.5-7b.jsonl")
    bench = B.load_benchmark("sqa_img", data_root)
    with open(llava, "w") as f:
        for it, text in zip(bench.items, ["C", "The answer is A."]):
            f.write(json.dumps({"question_id": it.question_id, "prompt": "<image>\n" + it.prompt,
                                "text": text, "answer_id": "x", "model_id": "llava",
                                "metadata": {}}) + "\n")
    rc = _run(["--benchmark", "sqa_img", "--data-root", data_root, "--method", "none",
               "--out", out, "--score-only", "--answers", llava])
    assert rc == 0
    with open(os.path.join(out, "sqa_img", "none.summary.json")) as f:
        s = json.load(f)
    assert s["score"] == 50.0 and s["n_unmatched_records"] == 0   # "C" right, "A" wrong
    # score-only without answers on disk names the missing file
    assert _run(["--benchmark", "gqa", "--data-root", data_root, "--method", "rc",
                 "--out", out, "--score-only"]) == 2


def test_user_error_exit_code_and_one_line(tmp_path, capsys):
    rc = _run(["--benchmark", "textvqa", "--data-root", str(tmp_path), "--method", "none"],
              FakePredictor())
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "llava_textvqa_val_v051_ocr.jsonl" in err[0]


def test_config_file_and_overrides(data_root, tmp_path):
    cfg = tmp_path / "eval.yml"
    cfg.write_text(f"eval:\n  benchmark: [gqa]\n  data_root: {data_root}\n  method: none\n"
                   f"  out: {tmp_path / 'from_cfg'}\n  progress: false\n  limit: 5\n")
    args = cli.build_parser().parse_args(["-c", str(cfg), "-o", "limit=1", "-o",
                                          "method=[none, rc]", "--budget", "32,64"])
    c = cli.resolve_config(args)
    assert c["limit"] == 1 and c["method"] == ["none", "rc"] and c["budget"] == "32,64"
    assert cli.plan_runs(cli._as_list(c["method"]), cli._budgets(c["budget"])) == \
        [("none", None), ("rc", 32), ("rc", 64)]
    assert _run(["-c", str(cfg), "-o", "limit=1"], FakePredictor()) == 0
    assert len(_lines(os.path.join(str(tmp_path / "from_cfg"), "gqa", "none.jsonl"))) == 1
    with open(os.path.join(str(tmp_path / "from_cfg"), "gqa", "none.summary.json")) as f:
        s = json.load(f)
    assert s["n_items"] == 1 and s["score"] == 0.0   # --limit also limits what is scored
    with pytest.raises(UserError, match="unknown setting"):
        cli.resolve_config(cli.build_parser().parse_args(["-o", "bugdet=3"]))


def test_report_relative_scores_and_png(data_root, tmp_path):
    out = str(tmp_path / "out")
    answers = {"Is it overcast?": "no", "Who is wearing a dress?": "woman"}

    class P(FakePredictor):
        def answer(self, image, prompt, question, **kw):
            r = super().answer(image, prompt, question, **kw)
            if self.method != "none" and (self.budget or 0) < 64:
                r["text"] = "yes"                      # small budgets lose the GQA answers
            return r

    rc = _run(["--benchmark", "gqa,pope", "--data-root", data_root, "--method", "none,rc,random",
               "--budget", "32,128", "--out", out, "--no-progress"], P(answers=answers))
    assert rc == 0
    with open(os.path.join(out, "report.json")) as f:
        rows = json.load(f)["rows"]
    gqa = {r["tag"]: r for r in rows if r["benchmark"] == "gqa"}
    assert gqa["none"]["score"] == 100.0 and gqa["none"]["rel_to_none_pct"] == 100.0
    assert gqa["rc-b32"]["score"] == 0.0 and gqa["rc-b128"]["rel_to_none_pct"] == 100.0
    assert gqa["rc-b128"]["avg_visual_tokens"] == 128
    assert gqa["rc-b32"]["prefill_s"] == pytest.approx(0.064)
    md = open(os.path.join(out, "report.md")).read()
    assert "| gqa | rc-b32 | 0.00 | 0.0 |" in md
    png = os.path.join(out, "report.png")
    assert os.path.getsize(png) > 5000
    assert Image.open(png).size[0] > 400


def test_tools_eval_script_user_error_exit_2(tmp_path):
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, os.path.join(repo, "tools", "eval.py"), "--benchmark",
                        "pope", "--data-root", str(tmp_path), "--score-only"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "llava_pope_test.jsonl" in lines[0]
    assert "Traceback" not in p.stderr


def test_distributed_launch_ranks_become_chunks(data_root, tmp_path, monkeypatch):
    answers = {"Is it overcast?": "no"}
    single, chunked = str(tmp_path / "single"), str(tmp_path / "launched")
    base = ["--benchmark", "gqa", "--data-root", data_root, "--method", "rc", "--no-progress"]
    assert _run(base + ["--out", single], FakePredictor(answers=answers)) == 0
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")
    for rank in ("0", "1"):
        monkeypatch.setenv("PADDLE_TRAINER_ID", rank)
        assert _run(base + ["--out", chunked], FakePredictor(answers=answers)) == 0
    monkeypatch.delenv("PADDLE_TRAINERS_NUM")
    monkeypatch.delenv("PADDLE_TRAINER_ID")
    assert not os.path.exists(os.path.join(chunked, "gqa", "rc.jsonl"))
    assert _run(base + ["--out", chunked, "--num-chunks", "2", "--merge"]) == 0
    a = [(r["uid"], r["text"]) for r in _lines(os.path.join(single, "gqa", "rc.jsonl"))]
    b = [(r["uid"], r["text"]) for r in _lines(os.path.join(chunked, "gqa", "rc.jsonl"))]
    assert a == b and len(a) == len(B.load_benchmark("gqa", data_root).items)
