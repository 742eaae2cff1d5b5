"""tools/serve.py through the official openai client and raw HTTP, against tools/infer.py's answers."""
import concurrent.futures as cf
import io
import os
import threading
import time

import httpx
import numpy as np
import openai
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from random_model import NAME as MODEL, random_checkpoint
from serve_util import Server, data_url, infer_json, user_message

MAX_IMAGE_BYTES = 300_000


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Four images of different sizes and kinds, as files (for infer.py) and data: URLs (for the server)."""
    from paddle_rc.demo import demo_image

    rng = np.random.default_rng(0)
    pics = [demo_image(), demo_image().rotate(90).resize((180, 320)),
            Image.fromarray(rng.integers(0, 255, (120, 200, 3), dtype=np.uint8)), demo_image().convert("L")]
    d = tmp_path_factory.mktemp("images")
    paths = []
    for i, p in enumerate(pics):
        paths.append(str(d / f"img{i}.png"))
        p.save(paths[-1])
    return [(path, data_url(p)) for path, p in zip(paths, pics)]


@pytest.fixture(scope="module")
def server(images):
    """The random 576-patch test model (tests/random_model.py): the real geometry, and long answers to
    stream, stop and sample (the built-in trained model answers in a word)."""
    s = Server("--model", random_checkpoint(), "--max-batch-size", "8", "--max-image-bytes", str(MAX_IMAGE_BYTES),
               "--allow-local-files", os.path.dirname(images[0][0]))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _ask(client, url, text, max_tokens=12, **extra):
    return client.chat.completions.create(model=MODEL, messages=user_message(url, text),
                                          max_tokens=max_tokens, temperature=0, **extra)


def _infer(path, question, method, max_tokens=12, budget=None, extra=()):
    argv = ["--model", random_checkpoint(), "--image", path, "--question", question, "--method", method,
            "--max-new-tokens", str(max_tokens)]
    return infer_json(argv + (["--budget", str(budget)] if budget else []) + list(extra))


# ---- answers ------------------------------------------------------------------------------------------

def test_models_and_health(server, client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    card = models.data[0].model_extra["paddle_rc"]
    assert card["kind"] == "dynamic" and "rc" in card["methods"] and card["visual_tokens_per_image"] == 576
    assert card["demo"] is False  # an explicit --model: no demo note
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_plain_answer_equals_infer(client, images):
    path, url = images[0]
    r = _ask(client, url, "What is in this image?", max_tokens=16)
    ref = _infer(path, "What is in this image?", "rc", 16)
    assert r.choices[0].message.content == ref["answer"]
    assert r.choices[0].message.role == "assistant"
    ext = r.model_extra["paddle_rc"]
    assert (ext["method"], ext["visual_tokens_after"], ext["stage_counts"]) == (
        "rc", ref["visual_tokens_after"], ref["stage_counts"])
    u = r.usage
    assert (u.model_extra["visual_tokens_before"], u.model_extra["visual_tokens_after"]) == (576, ref["visual_tokens_after"])
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.completion_tokens <= 16 and r.choices[0].finish_reason in ("stop", "length")


def test_stream_equals_plain(client, images):
    _, url = images[1]
    plain = _ask(client, url, "Describe the picture.", max_tokens=24)
    chunks = list(_ask(client, url, "Describe the picture.", max_tokens=24, stream=True,
                       stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # it did stream
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == plain.choices[0].finish_reason
    assert finals[0].model_extra["paddle_rc"]["visual_tokens_after"] == plain.usage.model_extra["visual_tokens_after"]
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_two_methods_per_request(client, images):
    path, url = images[2]
    q = "What color is the car?"
    got = {}
    for method, budget in (("rc", None), ("prumerge+", None), ("cls-topk", 40), ("fastv", 20)):
        comp = {"method": method} if budget is None else {"method": method, "budget": budget}
        r = _ask(client, url, q, extra_body={"compression": comp})
        ref = _infer(path, q, method, budget=budget)
        assert r.choices[0].message.content == ref["answer"], method
        assert r.usage.model_extra["visual_tokens_after"] == ref["visual_tokens_after"], method
        got[method] = r.usage
    assert got["cls-topk"].model_extra["visual_tokens_after"] == 40
    assert got["fastv"].model_extra["visual_tokens_after"] == 20  # kept after its LLM layer
    # the prompt counts the visual tokens after compression: same text, different totals (FastV's
    # prompt holds every visual token: its first layers see them all)
    fastv = got.pop("fastv")
    text_part = {m: u.prompt_tokens - u.model_extra["visual_tokens_after"] for m, u in got.items()}
    assert len(set(text_part.values())) == 1
    assert len({u.prompt_tokens for u in got.values()}) == 3
    assert fastv.prompt_tokens == text_part["rc"] + fastv.model_extra["visual_tokens_before"]


def test_stop_sequences_and_seeded_sampling(client, images):
    path, url = images[0]
    full = _ask(client, url, "Tell me more.", max_tokens=24).choices[0].message.content
    stop = full[len(full) // 2:len(full) // 2 + 3]
    cut = full[:full.find(stop)].strip()
    r = _ask(client, url, "Tell me more.", max_tokens=24, stop=[stop])
    assert r.choices[0].message.content == cut and r.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       _ask(client, url, "Tell me more.", max_tokens=24, stop=stop, stream=True) if c.choices)
    assert streamed == cut
    kw = dict(temperature=0.9, top_p=0.8, seed=7, max_tokens=12)
    a = client.chat.completions.create(model=MODEL, messages=user_message(url, "Hi"), **kw)
    ref = _infer(path, "Hi", "rc", 12, extra=["--temperature", "0.9", "--top-p", "0.8", "--seed", "7"])
    assert a.choices[0].message.content == ref["answer"]


def test_picture_on_request(client, images):
    _, url = images[0]
    r = _ask(client, url, "What is this?", max_tokens=2, extra_body={"return_picture": True})
    pic = r.model_extra["paddle_rc"]["picture"]
    assert pic.startswith("data:image/png;base64,")
    import base64

    img = Image.open(io.BytesIO(base64.b64decode(pic.split(",", 1)[1])))
    assert img.size[0] > 336
    assert "picture" not in _ask(client, url, "What is this?", max_tokens=2).model_extra["paddle_rc"]


def test_32_concurrent_requests_equal_infer(server, client, images):
    """16 different inputs (4 images x 2 questions x 2 methods), each sent twice at once, streamed and not."""
    questions = ["What is this?", "What color is the car?"]
    inputs = [(k, q, m) for k in range(4) for q in questions for m in ("rc", "none")]
    before = _metrics(server)

    def one(case):
        (k, q, method), stream = case
        kw = dict(extra_body={"compression": {"method": method}})
        if stream:
            chunks = _ask(client, images[k][1], q, stream=True, **kw)
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return _ask(client, images[k][1], q, **kw).choices[0].message.content

    cases = [(inp, stream) for stream in (False, True) for inp in inputs]
    with cf.ThreadPoolExecutor(32) as ex:
        answers = list(ex.map(one, cases))
    reference = {inp: _infer(images[inp[0]][0], inp[1], inp[2])["answer"] for inp in inputs}
    for (inp, stream), answer in zip(cases, answers):
        assert answer == reference[inp], (inp, stream)
    after = _metrics(server)
    steps = after["paddle_rc_batch_size_count"] - before.get("paddle_rc_batch_size_count", 0)
    rows = after["paddle_rc_batch_size_sum"] - before.get("paddle_rc_batch_size_sum", 0)
    assert rows / steps > 2  # decoded in batches, not one by one
    assert after["paddle_rc_requests_total|code=200"] - before.get("paddle_rc_requests_total|code=200", 0) == 32


def _metrics(server) -> dict:
    """/metrics read by prometheus_client's own parser (an independent check of the format)."""
    out = {}
    for fam in text_string_to_metric_families(httpx.get(server.url + "/metrics").text):
        for s in fam.samples:
            key = s.name + "".join(f"|{k}={v}" for k, v in sorted(s.labels.items()) if k != "le")
            if "le" in s.labels:
                continue
            out[key] = s.value
    return out


# ---- bad input ------------------------------------------------------------------------------------------

def _tiny_png():
    return data_url(Image.new("RGB", (20, 20), (200, 10, 10)))


def _big_png():
    rng = np.random.default_rng(1)  # noise does not compress: ~400 KB, over the server's 300 KB limit
    return data_url(Image.fromarray(rng.integers(0, 255, (380, 380, 3), dtype=np.uint8)))


def _truncated_png():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    import base64

    return "data:image/png;base64," + base64.b64encode(buf.getvalue()[:600]).decode()


def _msg(url=None, text="What?", extra_parts=()):
    parts = ([{"type": "image_url", "image_url": {"url": url}}] if url else []) + [{"type": "text", "text": text}]
    return [{"role": "user", "content": parts + list(extra_parts)}]


BAD = {  # name -> (request body, expected status, a phrase the message must hold)
    "missing image": (lambda: {"messages": _msg()}, 400, "no image"),
    "text-only content": (lambda: {"messages": [{"role": "user", "content": "hi"}]}, 400, "no image"),
    "two images": (lambda: {"messages": _msg(_tiny_png(), extra_parts=[
        {"type": "image_url", "image_url": {"url": _tiny_png()}}])}, 400, "2 images"),
    "not an image": (lambda: {"messages": _msg("data:image/png;base64,aGVsbG8gd29ybGQ=")}, 400, "not an image"),
    "truncated image": (lambda: {"messages": _msg(_truncated_png())}, 400, "truncated"),
    "bad base64": (lambda: {"messages": _msg("data:image/png;base64,@@@")}, 400, "base64"),
    "oversized image": (lambda: {"messages": _msg(_big_png())}, 413, "--max-image-bytes"),
    "remote URL": (lambda: {"messages": _msg("https://example.com/cat.png")}, 400, "not fetched"),
    "unknown method": (lambda: {"messages": _msg(_tiny_png()), "compression": {"method": "magic"}}, 400,
                       "unknown compression method"),
    "budget 0": (lambda: {"messages": _msg(_tiny_png()), "compression": {"method": "rc", "budget": 0}}, 400,
                 "from 1 to 576"),
    "budget past the visual tokens": (lambda: {"messages": _msg(_tiny_png()),
                                               "compression": {"method": "rc", "budget": 577}}, 400, "from 1 to 576"),
    "unknown method option": (lambda: {"messages": _msg(_tiny_png()),
                                       "compression": {"method": "rc", "options": {"nope": 1}}}, 400, "no option"),
    "text past the context": (lambda: {"messages": _msg(_tiny_png(), "word " * 3000)}, 400, "context"),
    "max_tokens past the context": (lambda: {"messages": _msg(_tiny_png()), "max_tokens": 5000}, 400, "context"),
    "max_tokens 0": (lambda: {"messages": _msg(_tiny_png()), "max_tokens": 0}, 400, "max_tokens"),
    "temperature 5": (lambda: {"messages": _msg(_tiny_png()), "temperature": 5}, 400, "temperature"),
    "n 2": (lambda: {"messages": _msg(_tiny_png()), "n": 2}, 400, "not supported"),
    "multi-turn": (lambda: {"messages": _msg(_tiny_png()) + [{"role": "assistant", "content": "x"}]}, 400,
                   "one user message"),
    "no messages": (lambda: {"messages": []}, 400, "non-empty"),
    "unknown model": (lambda: {"model": "gpt-9", "messages": _msg(_tiny_png())}, 404, "does not exist"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_a_4xx_in_openai_shape(client, name):
    body, status, phrase = BAD[name]
    body = body()
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model=body.pop("model", MODEL), messages=body.pop("messages"),
                                       extra_body=body)
    assert e.value.status_code == status
    err = e.value.response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and phrase in err["message"], err


def test_raw_http_errors_and_the_server_keeps_serving(server, client, images):
    url = server.url + "/v1/chat/completions"
    cases = [
        (httpx.post(url, content=b'{"messages": [', headers={"content-type": "application/json"}), 400, "JSON"),
        (httpx.post(url, content=b"[1, 2]"), 400, "JSON object"),
        (httpx.post(url, content=b"\xff\xfe"), 400, "JSON"),
        (httpx.post(url, content=b"x" * (MAX_IMAGE_BYTES * 2 + 2 ** 20)), 413, "bytes"),
        (httpx.get(url), 405, "not allowed"),
        (httpx.get(server.url + "/v1/nothing"), 404, "no route"),
    ]
    for r, status, phrase in cases:
        assert r.status_code == status and phrase in r.json()["error"]["message"], r.text
    # a prompt that fits only once compressed: fine with rc at budget 32, past the context uncompressed
    context = client.models.list().data[0].model_extra["paddle_rc"]["context_length"]
    text = _text_of_tokens(context - 250)
    ok = _ask(client, images[0][1], text, max_tokens=4, extra_body={"compression": {"method": "rc", "budget": 32}})
    assert ok.usage.prompt_tokens - 32 + 576 > context  # would not fit uncompressed
    with pytest.raises(openai.BadRequestError, match="context"):
        _ask(client, images[0][1], text, max_tokens=4, extra_body={"compression": {"method": "none"}})
    assert _ask(client, images[0][1], "Still there?", max_tokens=3).choices[0].message.content is not None
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def _text_of_tokens(n: int) -> str:
    """A question whose whole prompt (template and placeholder included) is at most n text tokens."""
    from paddle_rc.data.conversation import get_template
    from paddle_rc.models.config import LlavaConfig
    from paddle_rc.pipeline import Tokenizers

    config = LlavaConfig.load(random_checkpoint())
    tok = Tokenizers(random_checkpoint()).llm
    count = lambda w: len(tok.tokenize_with_image(get_template(config.conv_mode).prompt("word " * w),  # noqa: E731
                                                  config.image_token_index)) - 1
    words = n
    while count(words) > n:
        words -= max(1, (count(words) - n) // 4)
    return "word " * words


def test_local_files_only_under_the_allowed_directory(client, images):
    name = os.path.basename(images[0][0])
    r = client.chat.completions.create(model=MODEL, messages=user_message(name, "What?"), max_tokens=6,
                                       temperature=0)
    assert r.choices[0].message.content == _infer(images[0][0], "What?", "rc", 6)["answer"]
    with pytest.raises(openai.PermissionDeniedError, match="outside"):
        client.chat.completions.create(model=MODEL, messages=user_message("../../etc/passwd", "x"))
    with pytest.raises(openai.BadRequestError, match="not found"):
        client.chat.completions.create(model=MODEL, messages=user_message("missing.png", "x"))


# ---- queue and disconnects ------------------------------------------------------------------------------

def test_full_queue_is_a_503_and_a_disconnect_frees_the_slot(images):
    s = Server("--max-batch-size", "1", "--max-queue", "1")  # no --model: the built-in trained model
    try:
        card = httpx.get(s.url + "/v1/models").json()["data"][0]
        assert card["id"] == "synthvqa-demo" and card["paddle_rc"]["demo"] is True  # the page shows its note
        url = images[0][1]
        health = lambda: httpx.get(s.url + "/health").json()  # noqa: E731
        body = {"messages": user_message(url, "Go on."), "max_tokens": 1800, "ignore_eos": True, "stream": True,
                "compression": {"method": "rc", "budget": 16}}
        with httpx.Client(timeout=60) as http, http.stream("POST", s.url + "/v1/chat/completions", json=body) as a:
            lines = a.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))  # A is being decoded
            short = {"messages": user_message(url, "Short."), "max_tokens": 2}
            result = {}
            waiter = threading.Thread(target=lambda: result.update(
                r=httpx.post(s.url + "/v1/chat/completions", json=short, timeout=60)))
            waiter.start()
            for _ in range(200):
                if health()["queue_depth"] == 1:
                    break
                time.sleep(0.02)
            assert health()["queue_depth"] == 1  # B waits for the single slot
            c = httpx.post(s.url + "/v1/chat/completions", json=short, timeout=60)
            assert c.status_code == 503 and c.headers["retry-after"] == "1"
            assert c.json()["error"]["code"] == "queue_full"
            # (this server has no --allow-local-files: a path is refused before it reaches the queue)
            local = httpx.post(s.url + "/v1/chat/completions", json={"messages": user_message(images[0][0], "x")})
            assert local.status_code == 400 and "--allow-local-files" in local.json()["error"]["message"]
        # A's client is gone: its slot goes to B long before A's 1800 tokens would have been done
        waiter.join(60)
        assert result["r"].status_code == 200
        for _ in range(100):
            if health()["active_sequences"] == 0:
                break
            time.sleep(0.05)
        m = _metrics(s)
        assert m["paddle_rc_requests_cancelled_total"] == 1
        assert m["paddle_rc_batch_size_count"] < 1000  # decode steps: A stopped early
        assert m["paddle_rc_queue_depth"] == 0 and m["paddle_rc_active_sequences"] == 0
    finally:
        s.stop()


# ---- a deployment ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    import subprocess
    import sys

    from serve_util import ROOT

    out = str(tmp_path_factory.mktemp("deploy") / "rc32")
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "export.py"), "--out", out, "--method", "rc",
                    "--budget", "32", "--json"], check=True, capture_output=True,
                   env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"))
    return out


def test_deployment_serves_its_export_only(deployment, images):
    s = Server("--deploy", deployment, "--max-batch-size", "4")
    try:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
        model = c.models.list().data[0]
        assert model.id == "deploy:rc32" and model.model_extra["paddle_rc"]["compression"]["fixed"]
        qs = ["What is this?", "Describe it.", "What color is the car?", "How many trees?"]
        with cf.ThreadPoolExecutor(4) as ex:
            rs = list(ex.map(lambda k: c.chat.completions.create(
                model=model.id, messages=user_message(images[k][1], qs[k]), max_tokens=10, temperature=0), range(4)))
        for k, r in enumerate(rs):
            ref = infer_json(["--deploy", deployment, "--image", images[k][0], "--question", qs[k],
                              "--max-new-tokens", "10"])
            assert r.choices[0].message.content == ref["answer"]
            assert r.usage.model_extra["visual_tokens_after"] == 32
        same = c.chat.completions.create(model=model.id, messages=user_message(images[0][1], "x"), max_tokens=2,
                                         extra_body={"compression": {"method": "rc", "budget": 32}})
        assert same.usage.model_extra["visual_tokens_after"] == 32
        for comp in ({"method": "prumerge"}, {"method": "rc", "budget": 64}):
            with pytest.raises(openai.BadRequestError) as e:
                c.chat.completions.create(model=model.id, messages=user_message(images[0][1], "x"),
                                          extra_body={"compression": comp})
            err = e.value.response.json()["error"]
            assert err["code"] == "compression_fixed" and "exported with rc budget 32" in err["message"]
    finally:
        s.stop()


def test_serve_cli_user_errors(tmp_path):
    import subprocess
    import sys

    from paddle_rc.errors import UserError
    from serve_util import ROOT, TOOLS

    r = subprocess.run([sys.executable, os.path.join(TOOLS, "serve.py"), "--max-batch-size", "0"],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["error: --max-batch-size must be at least 1"]
    sys.path.insert(0, TOOLS)
    import serve

    for args, phrase in ((["--model", str(tmp_path / "nope")], "not found"),
                         (["--max-image-bytes", "lots"], "size like"),
                         (["--allow-local-files", str(tmp_path / "nope")], "not found")):
        with pytest.raises(UserError, match=phrase):
            serve.main(["--port", "0", *args])


# ---- the web page ---------------------------------------------------------------------------------------

def test_web_page_in_headless_chromium(server, images):
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert browser and driver_path, "needs Debian's chromium and chromium-driver (apt-get install, as .ci/run does)"
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        opts.add_argument(arg)
    d = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        d.get(server.url + "/")
        wait = WebDriverWait(d, 120)
        wait.until(lambda d: d.find_element(By.ID, "method").get_attribute("value") == "rc")
        assert not d.find_element(By.ID, "demo-note").is_displayed()  # an explicit --model (see the queue test)
        d.find_element(By.ID, "image-input").send_keys(images[1][0])
        wait.until(lambda d: d.find_element(By.ID, "ask").is_enabled())
        question = d.find_element(By.ID, "question")
        question.clear()
        question.send_keys("What color is the roof?")
        Select(d.find_element(By.ID, "method")).select_by_value("cls-topk")
        d.find_element(By.ID, "budget").send_keys("24")
        tokens = d.find_element(By.ID, "max-tokens")
        tokens.clear()
        tokens.send_keys("12")
        d.find_element(By.ID, "ask").click()
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state"))
        assert d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done", \
            d.find_element(By.ID, "error").text
        ref = _infer(images[1][0], "What color is the roof?", "cls-topk", 12, budget=24)
        assert d.find_element(By.ID, "answer").get_attribute("textContent") == ref["answer"]
        picture = d.find_element(By.ID, "picture")
        assert picture.is_displayed() and d.execute_script("return arguments[0].naturalWidth", picture) > 336
        counts = d.find_element(By.ID, "counts").text
        assert "visual tokens before 576" in counts and "visual tokens after 24" in counts
        assert "vision + compression" in d.find_element(By.ID, "timings").text
        # a bad budget shows the server's message
        d.execute_script("document.body.dataset.state = ''")
        budget = d.find_element(By.ID, "budget")
        budget.clear()
        budget.send_keys("999")
        d.find_element(By.ID, "ask").click()
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state"))
        assert "from 1 to 576" in d.find_element(By.ID, "error").text
    finally:
        d.quit()


def test_server_positions_full_answers_like_infer(images):
    """--positions full holds for every request, whatever compression the request picks, and the model
    card says so; the answers equal tools/infer.py --positions full (and not the compact ones)."""
    path, url = images[0]
    s = Server("--model", random_checkpoint(), "--positions", "full")
    try:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        assert c.models.list().data[0].model_extra["paddle_rc"]["compression"]["positions"] == "full"
        got = [_ask(c, url, "What is in this image?", max_tokens=16, extra_body={"compression": comp})
               .choices[0].message.content for comp in ({"method": "rc", "budget": 32}, {"method": "random", "budget": 32})]
    finally:
        s.stop()
    full = [_infer(path, "What is in this image?", m, 16, 32, ["--positions", "full"])["answer"] for m in ("rc", "random")]
    compact = [_infer(path, "What is in this image?", m, 16, 32)["answer"] for m in ("rc", "random")]
    assert got == full and full != compact
