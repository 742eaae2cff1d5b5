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
