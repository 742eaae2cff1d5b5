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

    def set_method(self, method, budget=None, **options):
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
    # our records carry LLaVA's "<image>" prompt, so eval_science_qa.py's IMG rule finds them
    rec = _lines(os.path.join(out2, "sqa_img", "none.jsonl"))[0]
    assert rec["prompt"].startswith("<image>\nContext:")
    with open(os.path.join(out2, "sqa_img", "none.summary.json")) as f:
        s = json.load(f)
    assert s["n_img"] == 1 and s["score"] == 0.0 and s["coverage"] == "1/2"


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


# --------------------------------------------------------------------------- reuse, merge, report


def test_answers_of_another_setup_are_never_reused(data_root, tmp_path, capsys):
    out = str(tmp_path / "out")
    base = ["--benchmark", "gqa", "--data-root", data_root, "--method", "rc", "--out", out,
            "--no-progress"]
    assert _run(base, FakePredictor()) == 0
    capsys.readouterr()
    for extra, what, pred in [(["--max-new-tokens", "64"], "max_new_tokens", FakePredictor()),
                              (["--conv-mode", "llava_v1"], "conv_mode", FakePredictor()),
                              ([], "model.digest", FakePredictor())]:
        if what == "model.digest":
            pred.identity = {"kind": "fake", "digest": "another model"}
        else:
            pred.conv_mode = "llava_v1" if "--conv-mode" in extra else None
        assert _run(base + extra, pred) == 2
        err = [l for l in capsys.readouterr().err.splitlines() if not l.startswith("note:")]
        assert len(err) == 1 and err[0].startswith("error: ") and what in err[0], err
        assert "--overwrite" in err[0] and pred.calls == []
    # --overwrite starts over with the new setup and answers everything again
    pred = FakePredictor(answers={"Is it overcast?": "no"})
    assert _run(base + ["--max-new-tokens", "64", "--overwrite"], pred) == 0
    assert len(pred.calls) == 2
    with open(os.path.join(out, "gqa", "rc.manifest.json")) as f:
        m = json.load(f)
    assert m["generation"]["max_new_tokens"] == 64 and m["method"] == "rc"
    assert m["model"] == FakePredictor.identity and m["paddle_rc"]
    # answers on disk without a manifest are not trusted either
    os.unlink(os.path.join(out, "gqa", "rc.manifest.json"))
    assert _run(base + ["--max-new-tokens", "64"], FakePredictor()) == 2
    assert "no readable run manifest" in capsys.readouterr().err


def test_merge_refuses_incomplete_chunks_unless_allowed(data_root, tmp_path, capsys):
    out = str(tmp_path / "out")
    base = ["--benchmark", "mme", "--data-root", data_root, "--method", "none", "--out", out,
            "--no-progress", "--num-chunks", "2"]
    assert _run(base + ["--chunk-idx", "0"], FakePredictor()) == 0
    assert _run(base + ["--chunk-idx", "1"], FakePredictor(kill_after=2)) == 130   # cut short
    capsys.readouterr()
    assert _run(base + ["--merge"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.2_1.jsonl has 2/4" in err[0] and "--allow-partial" in err[0]
    assert not os.path.exists(os.path.join(out, "mme", "none.jsonl"))
    assert _run(base + ["--merge", "--allow-partial"]) == 0
    cap = capsys.readouterr()
    line = [l for l in cap.out.splitlines() if l.startswith("mme")][0]
    # two of three subtasks answered (code_reasoning was in the lost part): a partial headline
    assert "partial: 6/8 answered; 2/3 subtasks" in line and "answered 6/8" in line
    warn = [l for l in cap.err.splitlines() if l.startswith("warning:")]
    assert len(warn) == 1 and "mme/none" in warn[0]
    with open(os.path.join(out, "mme", "none.summary.json")) as f:
        s = json.load(f)
    assert s["partial"] and s["missing_subtasks"] and s["coverage"] == "6/8"
    assert "partial" in open(os.path.join(out, "report.md")).read()


def test_report_is_rebuilt_from_every_summary(data_root, tmp_path):
    out = str(tmp_path / "out")
    os.makedirs(out)
    with open(os.path.join(out, "report.png"), "wb") as f:
        f.write(b"stale picture of an older run")
    old = os.umask(0o022)
    try:
        assert _run(["--benchmark", "gqa,pope", "--data-root", data_root, "--method", "none",
                     "--out", out, "--no-progress"], FakePredictor()) == 0
        # a single run per benchmark: nothing to plot, so the stale picture is gone
        assert not os.path.exists(os.path.join(out, "report.png"))
        # a narrower rerun (one benchmark, another method) keeps the other rows
        assert _run(["--benchmark", "gqa", "--data-root", data_root, "--method", "rc",
                     "--out", out, "--no-progress"], FakePredictor()) == 0
    finally:
        os.umask(old)
    with open(os.path.join(out, "report.json")) as f:
        rows = json.load(f)["rows"]
    assert {(r["benchmark"], r["tag"]) for r in rows} >= {("gqa", "none"), ("gqa", "rc"),
                                                         ("pope", "none"), ("pope_acc", "none")}
    assert os.path.exists(os.path.join(out, "report.png"))       # gqa now has two runs
    for name in ("report.md", "report.csv", "report.json", "report.png",
                 os.path.join("gqa", "rc.summary.json")):
        assert os.stat(os.path.join(out, name)).st_mode & 0o777 == 0o644, name


def test_errors_file_keeps_only_items_still_failing(data_root, tmp_path):
    out = str(tmp_path / "out")
    img = os.path.join(data_root, "gqa", "data", "images", "n161313.jpg")
    with open(img, "rb") as f:
        good = f.read()
    with open(img, "wb") as f:
        f.write(b"broken")
    argv = ["--benchmark", "gqa", "--data-root", data_root, "--method", "none", "--out", out,
            "--no-progress"]
    assert _run(argv, FakePredictor()) == 0
    err_file = os.path.join(out, "gqa", "none.errors.jsonl")
    assert [e["uid"] for e in _lines(err_file)] == ["201307251"]
    assert _run(argv, FakePredictor()) == 0                      # still broken: listed once
    assert len(_lines(err_file)) == 1
    with open(img, "wb") as f:
        f.write(good)
    assert _run(argv, FakePredictor()) == 0
    assert not os.path.exists(err_file)
    with open(os.path.join(out, "gqa", "none.summary.json")) as f:
        s = json.load(f)
    assert s["coverage"] == "2/2" and "n_errors" not in s and not s["partial"]
    # the retried item is put back in question order
    assert [r["uid"] for r in _lines(os.path.join(out, "gqa", "none.jsonl"))] == \
        [it.uid for it in B.load_benchmark("gqa", data_root).items]


class BatchPredictor(FakePredictor):
    """answer_batch like paddle_rc.pipeline.Predictor; raises when a batch holds ``poison``."""

    def __init__(self, poison=None, **kw):
        super().__init__(**kw)
        self.poison = poison
        self.batches = []

    def answer_batch(self, images, prompts, questions, max_new_tokens=128, temperature=0.0):
        self.batches.append(len(prompts))
        if self.poison and any(x in p for x in self.poison for p in prompts):
            raise RuntimeError("shape mismatch in the vision tower")
        outs = [self.answer(im, p, q, max_new_tokens, temperature)
                for im, p, q in zip(images, prompts, questions)]
        for o in outs:
            o["timings"] = {"vision": 0.3, "prefill": 0.6, "decode": 0.9, "batch_size": len(outs)}
        return outs


def test_batches_and_a_failing_item_inside_one(data_root, tmp_path):
    out = str(tmp_path / "out")
    pred = BatchPredictor(poison=("a car", "a bus"))   # the two "popular" POPE questions
    assert _run(["--benchmark", "pope", "--data-root", data_root, "--method", "none",
                 "--out", out, "--no-progress", "--batch-size", "4"], pred) == 0
    # batch 1 = 4 items (fails, then each alone), batch 2 = the last 2 items
    assert pred.batches == [4, 1, 1, 1, 1, 2]
    recs = _lines(os.path.join(out, "pope", "none.jsonl"))
    assert [r["metadata"]["split"] for r in recs] == ["adversarial"] * 2 + ["random"] * 2
    errs = _lines(os.path.join(out, "pope", "none.errors.jsonl"))
    assert [e["kind"] for e in errs] == ["model", "model"]
    assert "shape mismatch" in errs[0]["error"]
    # a batch's stage times are shared: each record carries its share
    last = recs[-1]["metadata"]
    assert last["batch_size"] == 2 and last["timings"]["prefill"] == pytest.approx(0.3)
    with open(os.path.join(out, "pope", "none.summary.json")) as f:
        s = json.load(f)
    assert s["coverage"] == "4/6" and s["n_errors"] == 2 and s["missing_splits"] == ["popular"]


def test_batched_greedy_answers_equal_batch_1_on_a_random_model(data_root, tmp_path, random_model):
    """The real predictor (the random 576-patch test model, RC on): images of different sizes and
    prompts of different lengths in one batch."""
    from paddle_rc.predictor import build_predictor
    predictor = build_predictor(random_model, method="rc")
    texts = {}
    for bs in (1, 4):
        out = str(tmp_path / f"b{bs}")
        assert _run(["--benchmark", "pope,mmbench", "--data-root", data_root, "--method", "rc",
                     "--max-new-tokens", "6", "--out", out, "--no-progress",
                     "--batch-size", str(bs)], predictor) == 0
        texts[bs] = [(r["uid"], r["text"], r["metadata"]["visual_tokens"])
                     for name in ("pope", "mmbench")
                     for r in _lines(os.path.join(out, name, "rc.jsonl"))]
    assert len(texts[1]) == 9 and texts[1] == texts[4]
    assert len({t for _, t, _ in texts[1]}) > 1          # not one constant answer


def test_evalbatch_benchmark_user_errors(tmp_path):
    import importlib.util
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tool = os.path.join(repo, "tools", "benchmark.py")
    p = subprocess.run([sys.executable, tool, "evalbatch", "--preset", "huge"], capture_output=True,
                       text=True, timeout=120, cwd=str(tmp_path))
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "unknown preset" in lines[0]
    spec = importlib.util.spec_from_file_location("benchmark_tool", tool)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for args, needle in [(["--backends", "gpu"], "--backends"),
                         (["--batch-sizes", "0,4"], "at least 1")]:
        with pytest.raises(UserError, match=needle):
            mod.main(["evalbatch", *args])


def test_evalbatch_benchmark_runs_and_checks_answers(monkeypatch):
    from paddle_rc.benchmark.eval_batch import run_eval_batch_benchmark
    rows = run_eval_batch_benchmark(batch_sizes=(1, 3), items=3, repeats=1, max_new_tokens=3,
                                    backends=("dynamic",), say=lambda m: None)
    assert [(r["backend"], r["batch_size"]) for r in rows] == [("dynamic", 1), ("dynamic", 3)]
    assert rows[0]["speedup"] == 1.0 and all(r["items_per_s"] > 0 for r in rows)


def test_mme_half_answered_image_is_warned_about(data_root, tmp_path, capsys):
    bench = B.load_benchmark("mme", data_root)
    path = str(tmp_path / "llava-mme.jsonl")
    with open(path, "w") as f:
        for it in bench.items[1:]:                      # first image loses one of its questions
            f.write(json.dumps({"question_id": it.question_id, "prompt": it.prompt,
                                "text": "Yes"}) + "\n")
    assert _run(["--benchmark", "mme", "--data-root", data_root, "--method", "none", "--out",
                 str(tmp_path / "out"), "--score-only", "--answers", path]) == 0
    warn = [l for l in capsys.readouterr().err.splitlines() if l.startswith("warning:")]
    assert len(warn) == 2 and "mme/llava-mme 1" in warn[1] and "calculation.py" in warn[1]
