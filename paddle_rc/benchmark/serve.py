"""tools/serve.py under load: throughput and latency at several numbers of concurrent clients.

Four servers run side by side (dynamic model / its Paddle Inference export x batching on / off,
where off is --max-batch-size 1) and are measured in turn, one at a time, for each concurrency and
repeat, so that all of them see the same machine state (the project's interleaving rule). Each
client sends its requests back to back; every request asks for the same number of new tokens
(ignore_eos), so requests are comparable across configurations. Greedy answers of the same input
must agree across the runs of one backend (batched or not, any concurrency), or the benchmark stops
instead of timing a wrong answer.
"""
from __future__ import annotations

import base64
import io
import os
import shutil
import statistics
import tempfile
import threading
import time

QUESTIONS = ["What is in this image?", "What color is the car?", "Is there a sign?", "Describe the scene.",
             "How many trees are there?", "Where is the sun?", "What is on the left?", "Is it daytime?"]


def _images():
    from paddle_rc.demo import demo_image

    base = demo_image()
    pics = [base, base.rotate(90), base.resize((200, 336)), base.transpose(0)]
    out = []
    for p in pics:
        buf = io.BytesIO()
        p.save(buf, format="PNG")
        out.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())
    return out


def _body(i: int, images: list, max_tokens: int) -> dict:
    return {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": images[i % len(images)]}},
        {"type": "text", "text": QUESTIONS[i % len(QUESTIONS)]}]}],
        "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}


def _load(url: str, concurrency: int, requests: int, images: list, max_tokens: int) -> dict:
    """`concurrency` clients share `requests` requests, each sending its next one when the last returns."""
    import httpx

    latencies, answers, errors = [], {}, []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client():
        with httpx.Client(timeout=600) as http:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                r = http.post(url + "/v1/chat/completions", json=_body(i, images, max_tokens))
                dt = time.perf_counter() - t0
                with lock:
                    if r.status_code != 200:
                        errors.append(f"{r.status_code}: {r.text[:200]}")
                        continue
                    out = r.json()
                    latencies.append(dt)
                    answers[i] = (out["choices"][0]["message"]["content"], out["usage"]["completion_tokens"],
                                  out["paddle_rc"]["mean_batch_size"])

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
    tokens = sum(a[1] for a in answers.values())
    return {"wall": wall, "latencies": latencies, "tokens": tokens,
            "answers": {i: a[0] for i, a in answers.items()},
            "mean_batch": statistics.mean(a[2] for a in answers.values())}


def _percentile(values, q):
    xs = sorted(values)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def run_serve_benchmark(model_dir=None, deploy_dir=None, method="rc", budget=None, concurrency=(1, 4, 16),
                        requests=32, max_tokens=32, max_batch_size=16, repeats=1, threads=None,
                        backends=("dynamic", "deploy"), say=print) -> list:
    import logging

    from paddle_rc.serving.process import ServerProcess

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    scratch = None
    common = ["--max-queue", str(max(requests, max(concurrency)) + 8)] + (
        ["--threads", str(threads)] if threads else [])
    comp = ["--method", method] + ([] if budget is None else ["--budget", str(budget)])
    sources = {}
    if "dynamic" in backends:
        sources["dynamic"] = (["--model", model_dir] if model_dir else []) + comp
    if "deploy" in backends:
        if deploy_dir is None:
            scratch = tempfile.mkdtemp(prefix="paddle_rc_serve_bench_")
            deploy_dir = os.path.join(scratch, "deploy")
            say(f"exporting {'the demo model' if model_dir is None else model_dir} with {method} to {deploy_dir}")
            from paddle_rc.demo import default_model
            from paddle_rc.export import export_model

            export_model(model_dir or default_model(), deploy_dir, method=method, budget=budget)
        sources["deploy"] = ["--deploy", deploy_dir]
    servers = {}
    try:
        for backend, args in sources.items():
            for batching in (True, False):
                size = max_batch_size if batching else 1
                say(f"starting {backend} server, --max-batch-size {size}")
                servers[(backend, batching)] = ServerProcess(*args, *common, "--max-batch-size", str(size))
        images = _images()
        runs = {key: {c: [] for c in concurrency} for key in servers}
        for key, server in servers.items():  # warm-up: first calls pay one-time costs
            _load(server.url, 2, 4, images, 4)
        for rep in range(repeats):
            for c in concurrency:
                for key, server in servers.items():
                    say(f"repeat {rep + 1}/{repeats}: {c} clients -> {key[0]}, batching {'on' if key[1] else 'off'}")
                    runs[key][c].append(_load(server.url, c, requests, images, max_tokens))
        references = {}
        for key in runs:
            for c in concurrency:
                for res in runs[key][c]:
                    reference = references.setdefault(key[0], res["answers"])
                    res["agree"] = sum(res["answers"].get(i) == a for i, a in reference.items()) / len(reference)
                    if res["answers"] != reference and key[0] == "dynamic":  # deploy: see docs/serving.md
                        bad = [i for i in reference if res["answers"].get(i) != reference[i]]
                        raise RuntimeError(f"{key} at {c} clients answered {len(bad)} requests differently "
                                           f"(e.g. request {bad[0]}); not timing a wrong answer")
    finally:
        for server in servers.values():
            server.stop()
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    rows = []
    for (backend, batching), per_c in runs.items():
        for c, results in per_c.items():
            best = min(results, key=lambda r: r["wall"])  # the least disturbed repeat
            lat = [x for r in results for x in r["latencies"]]
            rows.append({"backend": backend, "batching": batching, "max_batch_size": max_batch_size if batching else 1,
                         "clients": c, "requests": requests, "new_tokens": max_tokens,
                         "requests_per_s": requests / best["wall"], "tokens_per_s": best["tokens"] / best["wall"],
                         "p50_s": _percentile(lat, 0.5), "p95_s": _percentile(lat, 0.95),
                         "mean_batch": statistics.mean(r["mean_batch"] for r in results),
                         "same_answers": min(r["agree"] for r in results)})
    off = {(r["backend"], r["clients"]): r["requests_per_s"] for r in rows if not r["batching"]}
    for r in rows:
        r["vs_batching_off"] = r["requests_per_s"] / off[(r["backend"], r["clients"])] if off else None
    return rows


def format_rows(rows: list) -> str:
    head = ("| backend | batching | clients | requests/s | tokens/s | p50 latency (s) | p95 latency (s) | "
            "mean decode batch | throughput vs batching off |")
    lines = [head, "|" + "---|" * 9]
    for r in sorted(rows, key=lambda r: (r["backend"], r["clients"], not r["batching"])):
        lines.append(f"| {r['backend']} | {'on (' + str(r['max_batch_size']) + ')' if r['batching'] else 'off'} | "
                     f"{r['clients']} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.1f} | {r['p50_s']:.2f} | "
                     f"{r['p95_s']:.2f} | {r['mean_batch']:.1f} | {r['vs_batching_off']:.2f}x |")
    return "\n".join(lines)
