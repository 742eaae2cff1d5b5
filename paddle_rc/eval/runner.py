"""Ask a predictor every question of a benchmark, resumably, and score the answer files.

Files under ``out/<benchmark>/`` for a run tag (``none``, ``rc``, ``rc-b64``, ...):

* ``<tag>.jsonl``           answers, LLaVA layout (question_id, prompt, text, model_id, metadata)
* ``<tag>.<N>_<k>.jsonl``   answers of chunk k of N (``--num-chunks/--chunk-idx``), merged
                            into ``<tag>.jsonl`` by :func:`merge_chunks`
* ``<tag>.errors.jsonl``    items skipped because their image could not be read
* ``<tag>.summary.json``    scores (written atomically)
* ``<tag>.upload.json``     server upload file where the benchmark has one (VQAv2 test-dev)

The predictor and the image loader are parameters so tests can inject fakes; by default they
come from ``paddle_rc.pipeline`` and ``paddle_rc.data.image`` (imported only when needed).
"""
import json
import math
import os
import sys
import time
import uuid

from paddle_rc.errors import UserError

from .io import (JsonlAppender, atomic_write_json, atomic_write_text, read_jsonl_tolerant,
                 repair_jsonl)

DEMO_NOTE = ("built-in demo model (random weights, fixed seed): the answers and scores are "
             "not meaningful; pass --model DIR for real results")


def run_tag(method, budget=None):
    """File-name tag of a (method, budget) run; ``none`` keeps every token so has no budget."""
    if budget is None or method == "none":
        return method
    return f"{method}-b{budget}"


def bench_dir(out_dir, bench_name):
    return os.path.join(out_dir, bench_name)


def answers_path(out_dir, bench_name, tag, num_chunks=1, chunk_idx=0):
    base = os.path.join(bench_dir(out_dir, bench_name), tag)
    if num_chunks > 1:
        return f"{base}.{num_chunks}_{chunk_idx}.jsonl"
    return base + ".jsonl"


def errors_path(answers_file):
    return answers_file[: -len(".jsonl")] + ".errors.jsonl"


def get_chunk(items, num_chunks, chunk_idx):
    """LLaVA's split_list/get_chunk: consecutive slices of ceil(len/n) items. A chunk index past
    the last non-empty slice gets nothing (instead of LLaVA's IndexError)."""
    if num_chunks < 1 or not 0 <= chunk_idx < num_chunks:
        raise UserError(f"--chunk-idx must be in [0, {num_chunks}) and --num-chunks >= 1")
    if not items:
        return []
    size = math.ceil(len(items) / num_chunks)
    return items[chunk_idx * size:(chunk_idx + 1) * size]


def limited_items(bench, limit=None):
    return bench.items[:limit] if limit else list(bench.items)


def _default_loader():
    try:
        from paddle_rc.data.image import load_image  # the model side owns image decoding
    except ImportError as e:
        raise UserError(f"image loader paddle_rc.data.image.load_image not available ({e})") \
            from None
    return load_image


def _image_source(item):
    return item.image() if callable(item.image) else item.image


def _describe_image(item):
    return item.image if isinstance(item.image, str) else repr(item.image)


def _record(item, out, method, budget, model_id):
    meta = dict(item.metadata)
    meta.update({"question": item.question, "method": method, "budget": budget,
                 "visual_tokens": out.get("visual_tokens"),
                 "visual_tokens_before": out.get("visual_tokens_before"),
                 "stage_counts": out.get("stage_counts"), "timings": out.get("timings")})
    rec = {"question_id": item.question_id, "prompt": item.prompt, "text": out["text"],
           "answer_id": uuid.uuid4().hex, "model_id": model_id, "uid": item.uid,
           "metadata": meta}
    if "round_id" in item.metadata:  # LLaVA's MMBench answer files carry these at top level
        rec["round_id"] = item.metadata["round_id"]
        rec["options"] = item.metadata.get("options")
        rec["option_char"] = item.metadata.get("option_char")
    return rec


def run_benchmark(bench, predictor, method, budget=None, out_dir="outputs/eval", *,
                  image_loader=None, limit=None, max_new_tokens=128, num_chunks=1,
                  chunk_idx=0, progress=True, demo=False):
    """Answer the (limited, chunked) items of ``bench`` that are not on disk yet.

    Returns a dict with the answers path and counts. A KeyboardInterrupt (or any predictor
    exception) propagates; every answer written before it is already durable.
    """
    loader = image_loader or _default_loader()
    tag = run_tag(method, budget)
    path = answers_path(out_dir, bench.name, tag, num_chunks, chunk_idx)
    items = get_chunk(limited_items(bench, limit), num_chunks, chunk_idx)
    records, bad, torn = repair_jsonl(path)
    if bad:
        raise UserError(f"{path} has unreadable lines {bad[:5]} (not a torn last line); "
                        "move the file away to start that run again")
    done = {r.get("uid", str(r.get("question_id"))) for r in records}
    err_path = errors_path(path)
    repair_jsonl(err_path)
    known_errors = {(e.get("uid"), e.get("error"))
                    for e in read_jsonl_tolerant(err_path)[0]}
    todo = [it for it in items if it.uid not in done]
    predictor.set_method(method, budget)
    model_id = getattr(predictor, "model_id", "unknown")
    n_new = n_err = 0
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(items), initial=len(items) - len(todo), unit="q",
                   desc=f"{bench.name}/{tag}" + (f" [{chunk_idx}/{num_chunks}]" if num_chunks > 1 else ""),
                   dynamic_ncols=True, file=sys.stderr)
    try:
        with JsonlAppender(path) as answers, JsonlAppender(err_path) as errors:
            for item in todo:
                try:
                    image = loader(_image_source(item))
                except Exception as e:  # a bad image is data, not a reason to stop the run
                    msg = f"{type(e).__name__}: {e}"
                    if (item.uid, msg) not in known_errors:
                        errors.write({"uid": item.uid, "question_id": item.question_id,
                                      "image": _describe_image(item), "error": msg,
                                      "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
                        known_errors.add((item.uid, msg))
                    n_err += 1
                    if bar:
                        bar.update(1)
                    continue
                out = predictor.answer(image, item.prompt, item.question,
                                       max_new_tokens=max_new_tokens, temperature=0.0)
                rec = _record(item, out, method, budget, model_id)
                if demo:
                    rec["metadata"]["note"] = DEMO_NOTE
                answers.write(rec)
                n_new += 1
                if bar:
                    bar.update(1)
    finally:
        if bar:
            bar.close()
    if os.path.exists(err_path) and os.path.getsize(err_path) == 0:
        os.unlink(err_path)
    return {"answers": path, "tag": tag, "n_items": len(items), "n_resumed": len(items) - len(todo),
            "n_new": n_new, "n_errors": n_err, "torn_line_dropped": torn}


def merge_chunks(bench, out_dir, tag, num_chunks, limit=None):
    """Concatenate the chunk files of a run into ``<tag>.jsonl`` in question order (LLaVA's
    merge step), dropping duplicates. Missing chunk files are an error: the merge would
    silently lose questions."""
    parts = [answers_path(out_dir, bench.name, tag, num_chunks, k) for k in range(num_chunks)]
    missing = [p for p in parts if not os.path.exists(p)]
    if missing:
        raise UserError(f"cannot merge: chunk answer file(s) missing: {', '.join(missing)}")
    by_uid, errors = {}, {}
    for p in parts:
        recs, bad, _, _ = read_jsonl_tolerant(p)
        if bad:
            raise UserError(f"{p} has unreadable lines {bad[:5]}")
        for r in recs:
            by_uid.setdefault(r.get("uid", str(r.get("question_id"))), r)
        for e in read_jsonl_tolerant(errors_path(p))[0]:
            errors[e.get("uid")] = e
    order = [it.uid for it in limited_items(bench, limit)]
    merged = [by_uid[u] for u in order if u in by_uid]
    merged += [r for u, r in by_uid.items() if u not in set(order)]
    dst = answers_path(out_dir, bench.name, tag)
    atomic_write_text(dst, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in merged))
    err_dst = errors_path(dst)
    left = [errors[u] for u in order if u in errors and u not in by_uid]
    if left:
        atomic_write_text(err_dst, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in left))
    elif os.path.exists(err_dst):
        os.unlink(err_dst)
    return {"answers": dst, "n_records": len(merged), "n_errors": len(left)}


# --------------------------------------------------------------------------- scoring


def _match_records(bench, records):
    """{uid: record}. Our files carry ``uid``; answer files written by LLaVA's own scripts do
    not, so those are matched on (question_id, prompt), (question_id, round_id) or question_id."""
    by_qp, by_qr, by_q = {}, {}, {}
    qid_count = {}
    for it in bench.items:
        q = str(it.question_id)
        by_qp[(q, it.prompt.strip())] = it.uid
        if "round_id" in it.metadata:
            by_qr[(q, int(it.metadata["round_id"]))] = it.uid
        qid_count[q] = qid_count.get(q, 0) + 1
        by_q[q] = it.uid
    uids = {it.uid for it in bench.items}
    out = {}
    for r in records:
        uid = r.get("uid")
        if uid not in uids:
            q = str(r.get("question_id"))
            prompt = str(r.get("prompt", "")).replace("<image>", "").strip()
            uid = by_qp.get((q, prompt))
            if uid is None and "round_id" in r:
                uid = by_qr.get((q, int(r["round_id"])))
            if uid is None and qid_count.get(q) == 1:
                uid = by_q[q]
        if uid is not None and uid not in out:
            out[uid] = r
    return out


def _cost_stats(records):
    toks = [r["metadata"]["visual_tokens"] for r in records
            if isinstance(r.get("metadata"), dict)
            and isinstance(r["metadata"].get("visual_tokens"), (int, float))]
    before = [r["metadata"]["visual_tokens_before"] for r in records
              if isinstance(r.get("metadata"), dict)
              and isinstance(r["metadata"].get("visual_tokens_before"), (int, float))]
    stages = {}
    for r in records:
        t = (r.get("metadata") or {}).get("timings") or {}
        for k, v in t.items():
            if isinstance(v, (int, float)):
                stages.setdefault(k, []).append(float(v))
    return {"avg_visual_tokens": sum(toks) / len(toks) if toks else None,
            "avg_visual_tokens_before": sum(before) / len(before) if before else None,
            "mean_timings": {k: sum(v) / len(v) for k, v in sorted(stages.items())}}


def score_answers(bench, answers_file, *, method=None, budget=None, limit=None,
                  summary_path=None):
    """Score one answer file against ``bench`` (restricted to the first ``limit`` items) and
    write ``<tag>.summary.json`` next to it (atomically), plus the upload file if any."""
    if not os.path.exists(answers_file):
        raise UserError(f"answers file not found: {answers_file}")
    records, bad, _, torn = read_jsonl_tolerant(answers_file)
    if bad:
        raise UserError(f"{answers_file} has unreadable lines {bad[:5]}")
    scope = bench.subset([it.uid for it in limited_items(bench, limit)]) if limit else bench
    matched = _match_records(scope, records)
    preds = {u: r.get("text") for u, r in matched.items()}
    summary = scope.score(preds)
    base = answers_file[: -len(".jsonl")] if answers_file.endswith(".jsonl") else answers_file
    tag = os.path.basename(base)
    summary.update({"benchmark": bench.name, "tag": tag, "answers_file": answers_file,
                    "method": method if method is not None else _guess(records, "method", tag),
                    "budget": budget if budget is not None else _guess(records, "budget", None),
                    "model_id": _guess_top(records, "model_id"),
                    "n_records": len(records), "n_unmatched_records": len(records) - len(matched),
                    "torn_line_dropped": torn})
    summary.update(_cost_stats(list(matched.values())))
    if any((r.get("metadata") or {}).get("note") == DEMO_NOTE for r in records):
        summary["note"] = DEMO_NOTE
    err = errors_path(answers_file) if answers_file.endswith(".jsonl") else None
    if err and os.path.exists(err):
        summary["n_image_errors"] = len(read_jsonl_tolerant(err)[0])
        summary["errors_file"] = err
    if scope.submission_fn is not None:
        up = base + ".upload.json"
        atomic_write_json(up, scope.submission_fn(preds))
        summary["upload_file"] = up
    atomic_write_json(summary_path or base + ".summary.json", summary)
    return summary


def _guess(records, key, default):
    for r in records:
        v = (r.get("metadata") or {}).get(key)
        if v is not None:
            return v
    return default


def _guess_top(records, key):
    for r in records:
        if r.get(key) is not None:
            return r[key]
    return None
