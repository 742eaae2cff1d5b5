"""tools/infer.py beyond one question: many images, URLs, picture formats, and chat."""
import functools
import http.server
import io
import json
import os
import threading

import numpy as np
import pytest
from PIL import Image

from test_cli_errors import run_tool

FAST = ["--max-new-tokens", "6", "--json"]


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    d = tmp_path_factory.mktemp("pics")
    rng = np.random.default_rng(0)
    for name, size in (("b.png", (90, 60)), ("a.jpg", (64, 64)), ("c.webp", (50, 120))):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(d / name)
    (d / "notes.txt").write_text("not an image")
    return d


def _lines(capsys_out):
    return [json.loads(l) for l in capsys_out.strip().splitlines()]


def _single(capsys, path):
    from paddle_rc.cli import run
    from test_cli_errors import _tool

    tool = _tool("infer")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run(lambda: tool.main(FAST + ["--image", str(path)]))
    assert e.value.code == 0
    return json.loads(capsys.readouterr().out)


def test_image_dir_in_batches_equals_one_at_a_time(capsys, pictures):
    from paddle_rc.cli import run
    from test_cli_errors import _tool

    tool = _tool("infer")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run(lambda: tool.main(FAST + ["--image-dir", str(pictures), "--batch-size", "2"]))
    assert e.value.code == 0
    captured = capsys.readouterr()
    lines = _lines(captured.out)
    assert [os.path.basename(l["image"]) for l in lines] == ["a.jpg", "b.png", "c.webp"]
    assert "answering" in captured.err  # the progress bar
    for line in lines:
        one = _single(capsys, line["image"])
        assert (line["answer"], line["visual_tokens_after"]) == (one["answer"], one["visual_tokens_after"])


def test_unreadable_image_lines(capsys, pictures, tmp_path):
    from paddle_rc.cli import run
    from test_cli_errors import _tool

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    tool = _tool("infer")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run(lambda: tool.main(FAST + ["--images", str(pictures / "a.jpg"), str(bad), str(pictures / "b.png"),
                                      "--batch-size", "3"]))
    captured = capsys.readouterr()
    assert e.value.code == 2
    errors = [l for l in captured.err.splitlines() if l.startswith("error")]
    assert errors == ["error: 1 of 3 images could not be read (their JSON lines say why)"]
    lines = _lines(captured.out)
    assert [("error" in l) for l in lines] == [False, True, False]
    assert "cannot read image" in lines[1]["error"]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(pictures):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(pictures)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_urls_only_with_allow_download(capsys, pictures, server):
    url = f"{server}/a.jpg"
    code, err = run_tool(capsys, "infer", FAST + ["--image", url])
    assert code == 2 and len(err) == 1 and "pass --allow-download" in err[0]
    code, err = run_tool(capsys, "infer", FAST + ["--images", url])
    assert code == 2 and "pass --allow-download" in err[0]
    from paddle_rc.cli import run
    from test_cli_errors import _tool

    tool = _tool("infer")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run(lambda: tool.main(FAST + ["--image", url, "--allow-download"]))
    assert e.value.code == 0
    fetched = json.loads(capsys.readouterr().out)
    assert fetched["answer"] == _single(capsys, pictures / "a.jpg")["answer"]
    code, err = run_tool(capsys, "infer", FAST + ["--image", f"{server}/missing.png", "--allow-download"])
    assert code == 2 and len(err) == 1 and err[0].startswith("error: cannot download")


@pytest.mark.parametrize("ext,fmt", [(".png", "PNG"), (".jpg", "JPEG"), (".webp", "WEBP")])
def test_save_vis_format_follows_the_extension(capsys, tmp_path, ext, fmt):
    path = tmp_path / f"kept{ext}"
    code, err = run_tool(capsys, "infer", FAST + ["--save-vis", str(path)])
    assert code == 0, err
    with Image.open(path) as im:
        assert im.format == fmt
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_save_vis_fastv_draws_the_patches_kept_in_the_llm(capsys, tmp_path):
    """--method fastv --save-vis: the kept cells of the picture are the prefill's recorded indices."""
    from paddle_rc.demo import demo_image, demo_question
    from paddle_rc.predictor import build_predictor

    path = tmp_path / "kept.png"
    code, err = run_tool(capsys, "infer", FAST + ["--method", "fastv", "--save-vis", str(path)])
    assert code == 0, err
    pred = build_predictor(method="fastv")
    pred.answer(demo_image(), demo_question(), max_new_tokens=1)
    result = pred.last_visual.result
    kept = set(result.llm_kept[0].tolist())
    n = result.samples[0].n_patches
    assert len(kept) == pred.last_visual.kept_in_llm == n // 2
    g = int(round(n ** 0.5))
    cell = 768 // g
    side = cell * g
    base = np.asarray(pred.processor.model_view(demo_image()).convert("RGB").resize((side, side), Image.BICUBIC),
                      dtype=np.float64)
    with Image.open(path) as im:
        pic = np.asarray(im.convert("RGB"), dtype=np.float64)[:, :side]
    m = cell // 4  # inside the grid lines and the kept frame
    seen = set()
    checked = 0
    for p in range(n):
        r, c = divmod(p, g)
        ys, xs = slice(r * cell + m, (r + 1) * cell - m), slice(c * cell + m, (c + 1) * cell - m)
        b = base[ys, xs].mean()
        if b < 40:  # too dark to tell kept from dimmed
            continue
        checked += 1
        ratio = pic[ys, xs].mean() / b
        assert ratio > 0.9 or ratio < 0.35, (p, ratio)
        if ratio > 0.9:
            seen.add(p)
    assert checked > n // 2
    assert seen == {p for p in kept if base[(p // g) * cell + m:(p // g + 1) * cell - m,
                                            (p % g) * cell + m:(p % g + 1) * cell - m].mean() >= 40}


def test_save_vis_refuses_unknown_extension_before_work(capsys, tmp_path):
    code, err = run_tool(capsys, "infer", FAST + ["--save-vis", str(tmp_path / "kept.xyz")])
    assert code == 2 and len(err) == 1 and "end the name with .png" in err[0]
    code, err = run_tool(capsys, "infer", FAST + ["--method", "none", "--save-vis", str(tmp_path / "k.png")])
    assert code == 2 and "needs a compression method" in err[0]


def test_save_vis_folder_for_many_images(capsys, pictures, tmp_path):
    out = tmp_path / "vis"
    code, err = run_tool(capsys, "infer", FAST + ["--image-dir", str(pictures), "--save-vis", str(out)])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]


def test_many_image_flag_errors(capsys, pictures, tmp_path):
    code, err = run_tool(capsys, "infer", FAST + ["--image", "x.png", "--images", "y.png"])
    assert code == 2 and "give one of --image, --images, --image-dir" in err[0]
    code, err = run_tool(capsys, "infer", FAST + ["--image-dir", str(tmp_path)])
    assert code == 2 and "no image files in" in err[0]
    code, err = run_tool(capsys, "infer", FAST + ["--image-dir", str(pictures), "--batch-size", "0"])
    assert code == 2 and "--batch-size must be at least 1" in err[0]
    code, err = run_tool(capsys, "infer", FAST + ["--recompress"])
    assert code == 2 and "--recompress only applies to --chat" in err[0]


# ---- chat ---------------------------------------------------------------------------------------

def test_multi_turn_prompt_is_llavas():
    from paddle_rc.data.conversation import get_template

    t = get_template("vicuna_v1")
    got = t.prompt("And the sky?", history=[("What is this?", "A house.")])
    assert got == (t.system + " USER: <image>\nWhat is this? ASSISTANT: A house.</s>USER: And the sky? ASSISTANT:")
    assert t.prompt("What is this?") == t.system + " USER: <image>\nWhat is this? ASSISTANT:"


@pytest.fixture(scope="module")
def predictor():
    from paddle_rc.predictor import build_predictor

    return build_predictor(method="rc")


def test_chat_first_turn_is_answer_and_keep_reuses_its_tokens(predictor):
    from paddle_rc.demo import demo_image

    image = demo_image()
    kw = dict(max_new_tokens=5)
    session = predictor.chat(image)
    first = session.ask("What color is the small star?", **kw)
    assert first["text"] == predictor.answer(image, "What color is the small star?", **kw)["text"]
    second = session.ask("What word is on the small sign?", **kw)
    assert second["turn"] == 2 and second["question"] == "What color is the small star?"
    assert second["prompt"].endswith(f"{first['text']}</s>USER: What word is on the small sign? ASSISTANT:")
    # keep: the same visual tokens as turn 1 (the text encoder still reads the first question)
    assert second["stage_counts"] == first["stage_counts"]
    ids = predictor.tok.llm.tokenize_with_image(second["prompt"], predictor.config.image_token_index)
    assert ids.count(predictor.tok.llm.eos_token_id) == 1  # "</s>" ends the first answer as EOS
    fresh = predictor.chat(image, recompress=True)
    fresh.ask("What color is the small star?", **kw)
    again = fresh.ask("What word is on the small sign?", **kw)
    assert again["question"] == "What word is on the small sign?"
    alone = predictor.answer(image, "What word is on the small sign?", **kw)
    assert again["stage_counts"] == alone["stage_counts"]  # compressed for the new question
    session.reset()
    assert session.ask("What color is the small star?", **kw)["text"] == first["text"]


def test_chat_cli_reads_stdin(capsys, monkeypatch):
    from paddle_rc.cli import run
    from test_cli_errors import _tool

    monkeypatch.setattr("sys.stdin", io.StringIO("What is this?\n\nAnd the sky?\n/reset\nHello?\n/exit\nignored\n"))
    tool = _tool("infer")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run(lambda: tool.main(["--chat", "--max-new-tokens", "4", "--json"]))
    assert e.value.code == 0
    lines = _lines(capsys.readouterr().out)
    assert [(l["turn"], l["question"]) for l in lines] == [(1, "What is this?"), (2, "And the sky?"), (1, "Hello?")]


def test_chat_too_long_ends_in_one_error(capsys, monkeypatch):
    from paddle_rc.demo import default_model
    from paddle_rc.models.config import LlavaConfig

    context = LlavaConfig.load(default_model()).llm.max_position_embeddings
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi\n" + "word " * context + "\n"))
    code, err = run_tool(capsys, "infer", ["--chat", "--max-new-tokens", "4"])
    assert code == 2 and err[-1].startswith("error: the prompt is") and "context" in err[-1]
