"""Ask a predictor every question of a benchmark, resumably, and score the answer files.

Files under ``out/<benchmark>/`` for a run tag (``none``, ``rc``, ``rc-b64``, ...):

* ``<tag>.jsonl``           answers, LLaVA layout (question_id, prompt, text, model_id, metadata)
* ``<tag>.<N>_<k>.jsonl``   answers of chunk k of N (``--num-chunks/--chunk-idx``), merged
                            into ``<tag>.jsonl`` by :func:`merge_chunks`
* ``<tag>.manifest.json``   the setup that wrote the answers (model checksums, method, budget,
                            options, conv mode, generation settings); answers are reused only
                            under an equal manifest
* ``<tag>.errors.jsonl``    items still failing (unreadable image, or the model raised)
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

DEMO_NOTE = ("built-in demo model (a small LLaVA trained on the synthetic task): its scores mean "
             "something on synthvqa only; pass --model DIR for real results")


def run_tag(method, budget=None, positions="compact"):
    """File-name tag of a (method, budget) run; ``none`` keeps every token so has no budget (and no
    position layout); a run with ``positions: full`` ends in ``-fullpos``, with ``source`` in ``-srcpos``."""
    if method == "none":
        return method
    tag = method if budget is None else f"{method}-b{budget}"
    return tag + {"full": "-fullpos", "source": "-srcpos"}.get(positions, "")


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
    rec = {"question_id": item.question_id, "prompt": item.record_prompt, "text": out["text"],
           "answer_id": uuid.uuid4().hex, "model_id": model_id, "uid": item.uid,
           "metadata": meta}
    if "round_id" in item.metadata:  # LLaVA's MMBench answer files carry these at top level
        rec["round_id"] = item.metadata["round_id"]
        rec["options"] = item.metadata.get("options")
        rec["option_char"] = item.metadata.get("option_char")
    return rec


def manifest_path(answers_file):
    return answers_file[: -len(".jsonl")] + ".manifest.json"


def run_files(answers_file):
    """Every file that belongs to one answer file's run (what --overwrite removes)."""
    base = answers_file[: -len(".jsonl")]
    return [answers_file, base + ".errors.jsonl", base + ".manifest.json",
            base + ".summary.json", base + ".upload.json"]


def _describe_diff(old, new, prefix=""):
    """'key old -> new' for every differing leaf; per-file checksums are summed up by the
    model digest, so they are not listed."""
    diffs = []
    for k in sorted(set(old) | set(new)):
        if k == "files":
            continue
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _describe_diff(a, b, prefix + k + ".")
        elif a != b:
            short = (lambda v: (v[:12] + "..") if isinstance(v, str) and len(v) > 16 else v)
            diffs.append(f"{prefix}{k} {short(a)!r} -> {short(b)!r}")
    return diffs


def check_manifest(answers_file, manifest, overwrite=False):
    """Make sure ``answers_file`` holds answers of this very setup before anything is added.

    With ``overwrite`` the run's files are removed first. Otherwise answers on disk are reused
    only when the manifest beside them equals ``manifest``; a difference (or answers without a
    manifest) ends the run with one line naming what differs."""
    mpath = manifest_path(answers_file)
    if overwrite:
        for f in run_files(answers_file):
            if os.path.exists(f):
                os.unlink(f)
    has_answers = os.path.exists(answers_file) and os.path.getsize(answers_file) > 0
    if has_answers:
        old = None
        if os.path.exists(mpath):
            try:
                with open(mpath, "r", encoding="utf-8") as f:
                    old = json.load(f)
            except ValueError:
                old = None
        if old is None:
            raise UserError(f"{answers_file} has answers but no readable run manifest, so they "
                            "may come from another model or setting; rerun with --overwrite to "
                            "start that run over (or pick another --out)")
        diff = _describe_diff(old, manifest)
        if len(diff) > 4:
            diff = diff[:4] + [f"and {len(diff) - 4} more"]
        if diff:
            raise UserError(f"{answers_file} was written with another setup ({'; '.join(diff)}); "
                            "rerun with --overwrite to start that run over (or pick another --out)")
    atomic_write_json(mpath, manifest)


def _answer_many(predictor, images, items, max_new_tokens):
    """One model call for the batch: the predictor's batched API when it has one."""
    prompts = [it.prompt for it in items]
    questions = [it.question for it in items]
    if hasattr(predictor, "answer_batch"):
        return predictor.answer_batch(images, prompts, questions, max_new_tokens=max_new_tokens,
                                      temperature=0.0)
    return [predictor.answer(im, p, q, max_new_tokens=max_new_tokens, temperature=0.0)
            for im, p, q in zip(images, prompts, questions)]


_PER_ITEM_TIMINGS = ("preprocess", "vision", "prefill", "decode")


def _per_item(out, n):
    """A batch's stage times are shared by its items: each record gets its 1/n share."""
    if n == 1:
        return out
    out = dict(out)
    t = dict(out.get("timings") or {})
    for k in _PER_ITEM_TIMINGS:
        if isinstance(t.get(k), (int, float)):
            t[k] = t[k] / n
    out["timings"] = t
    return out


MAX_FAILURES_IN_A_ROW = 20


def run_benchmark(bench, predictor, method, budget=None, out_dir="outputs/eval", *,
                  image_loader=None, limit=None, max_new_tokens=128, num_chunks=1,
                  chunk_idx=0, progress=True, demo=False, batch_size=1, manifest=None,
                  overwrite=False, positions="compact"):
    """Answer the (limited, chunked) items of ``bench`` that are not on disk yet, ``batch_size``
    questions per model call.

    ``manifest`` describes the setup (model identity, method, generation settings, ...); the
    answers on disk are reused only when they were written under the same one. An item whose
    image cannot be read, or on which the model raises, is recorded in ``<tag>.errors.jsonl``
    and skipped; that file keeps only the items still failing. Returns the answers path and
    counts. A KeyboardInterrupt propagates; every answer written before it is durable.
    """
    if batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    loader = image_loader or _default_loader()
    tag = run_tag(method, budget, positions)
    path = answers_path(out_dir, bench.name, tag, num_chunks, chunk_idx)
    items = get_chunk(limited_items(bench, limit), num_chunks, chunk_idx)
    check_manifest(path, manifest if manifest is not None else {}, overwrite)
    records, bad, torn = repair_jsonl(path)
    if bad:
        raise UserError(f"{path} has unreadable lines {bad[:5]} (not a torn last line); "
                        "rerun with --overwrite to start that run over")
    done = {r.get("uid", str(r.get("question_id"))) for r in records}
    err_path = errors_path(path)
    repair_jsonl(err_path)
    old_errors = {e.get("uid"): e for e in read_jsonl_tolerant(err_path)[0]}
    todo = [it for it in items if it.uid not in done]
    predictor.set_method(method, budget, positions=positions)
    model_id = getattr(predictor, "model_id", "unknown")
    new_errors, attempted = {}, set()
    n_new = 0
    failures_in_a_row = 0
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(items), initial=len(items) - len(todo), unit="q",
                   desc=f"{bench.name}/{tag}" + (f" [{chunk_idx}/{num_chunks}]" if num_chunks > 1 else ""),
                   dynamic_ncols=True, file=sys.stderr)

    def fail(item, e, kind):
        new_errors[item.uid] = {"uid": item.uid, "question_id": item.question_id,
                                "image": _describe_image(item), "kind": kind,
                                "error": f"{type(e).__name__}: {e}",
                                "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        errors.write(new_errors[item.uid])

    try:
        with JsonlAppender(path) as answers, JsonlAppender(err_path) as errors:
            for start in range(0, len(todo), batch_size):
                batch, images = [], []
                for item in todo[start:start + batch_size]:
                    attempted.add(item.uid)
                    try:
                        images.append(loader(_image_source(item)))
                        batch.append(item)
                    except Exception as e:  # a bad image is data, not a reason to stop the run
                        fail(item, e, "image")
                if batch:
                    try:
                        outs = list(zip(batch, _answer_many(predictor, images, batch,
                                                            max_new_tokens)))
                        n_out = len(batch)
                    except Exception:
                        # Find the culprit: each item alone (greedy answers do not depend on
                        # the batch, so the others lose nothing).
                        outs, n_out = [], 1
                        for item, image in zip(batch, images):
                            try:
                                outs.append((item, _answer_many(predictor, [image], [item],
                                                                max_new_tokens)[0]))
                            except Exception as e:
                                fail(item, e, "model")
                                failures_in_a_row += 1
                                if failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
                                    raise UserError(
                                        f"the model failed on {failures_in_a_row} items in a row "
                                        f"(last: {type(e).__name__}: {e}); see {err_path}") from None
                    for item, out in outs:
                        rec = _record(item, _per_item(out, n_out), method, budget, model_id)
                        rec["metadata"]["batch_size"] = n_out
                        if demo:
                            rec["metadata"]["note"] = DEMO_NOTE
                        answers.write(rec)
                        n_new += 1
                        failures_in_a_row = 0
                if bar:
                    bar.update(len(todo[start:start + batch_size]))
    finally:
        if bar:
            bar.close()
        _finish(path, err_path, bench, old_errors, new_errors, attempted)
    return {"answers": path, "tag": tag, "n_items": len(items), "n_resumed": len(items) - len(todo),
            "n_new": n_new, "n_errors": len(new_errors), "torn_line_dropped": torn}


def _finish(path, err_path, bench, old_errors, new_errors, tried):
    """Answers in question order (eval_pope.py pairs by position; a resumed run appends the
    items it retried at the end), and an errors file with only the items still failing."""
    records, _, _, _ = read_jsonl_tolerant(path)
    answered = {r.get("uid", str(r.get("question_id"))) for r in records}
    rank = {it.uid: i for i, it in enumerate(bench.items)}
    keys = [rank.get(r.get("uid"), len(rank)) for r in records]
    if keys != sorted(keys):
        order = sorted(range(len(records)), key=lambda i: keys[i])
        atomic_write_text(path, "".join(json.dumps(records[i], ensure_ascii=False) + "\n"
                                        for i in order))
    left = {u: e for u, e in old_errors.items() if u not in tried and u not in answered}
    left.update({u: e for u, e in new_errors.items() if u not in answered})
    ordered = sorted(left.values(), key=lambda e: rank.get(e.get("uid"), len(rank)))
    if ordered:
        atomic_write_text(err_path, "".join(json.dumps(e, ensure_ascii=False) + "\n"
                                            for e in ordered))
    elif os.path.exists(err_path):
        os.unlink(err_path)


def chunk_status(bench, out_dir, tag, num_chunks, limit=None):
    """[(chunk file, answered, expected)] for every chunk of a run."""
    items = limited_items(bench, limit)
    out = []
    for k in range(num_chunks):
        p = answers_path(out_dir, bench.name, tag, num_chunks, k)
        want = {it.uid for it in get_chunk(items, num_chunks, k)}
        got = set()
        if os.path.exists(p):
            got = {r.get("uid", str(r.get("question_id"))) for r in read_jsonl_tolerant(p)[0]}
        out.append((p, len(want & got), len(want)))
    return out


def merge_chunks(bench, out_dir, tag, num_chunks, limit=None, allow_partial=False):
    """Concatenate the chunk files of a run into ``<tag>.jsonl`` in question order (LLaVA's
    merge step), dropping duplicates. A missing chunk file is an error, and so is a chunk with
    unanswered items unless ``allow_partial``: the merged file would silently lack questions.
    The chunks must share one run manifest, which the merged file then carries."""
    parts = [answers_path(out_dir, bench.name, tag, num_chunks, k) for k in range(num_chunks)]
    missing = [p for p in parts if not os.path.exists(p)]
    if missing:
        raise UserError(f"cannot merge: chunk answer file(s) missing: {', '.join(missing)}")
    short = [(p, got, want) for p, got, want in chunk_status(bench, out_dir, tag, num_chunks, limit)
             if got < want]
    if short and not allow_partial:
        raise UserError("cannot merge incomplete chunks: " + ", ".join(
            f"{os.path.basename(p)} has {got}/{want}" for p, got, want in short)
            + "; rerun those chunks to finish them, or pass --allow-partial to merge anyway")
    manifests = []
    for p in parts:
        mp = manifest_path(p)
        if os.path.exists(mp):
            with open(mp, "r", encoding="utf-8") as f:
                manifests.append(json.load(f))
        else:
            manifests.append(None)
    if any(m != manifests[0] for m in manifests):
        raise UserError(f"cannot merge: the chunks of {tag} were written with different setups "
                        "(their .manifest.json files differ); rerun the odd chunk with --overwrite")
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
    if manifests[0] is not None:
        atomic_write_json(manifest_path(dst), manifests[0])
    err_dst = errors_path(dst)
    left = [errors[u] for u in order if u in errors and u not in by_uid]
    if left:
        atomic_write_text(err_dst, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in left))
    elif os.path.exists(err_dst):
        os.unlink(err_dst)
    return {"answers": dst, "n_records": len(merged), "n_errors": len(left),
            "incomplete_chunks": len(short)}


# --------------------------------------------------------------------------- scoring


def _match_records(bench, records):
    """{uid: record}. Our files carry ``uid``; answer files written by LLaVA's own scripts do
    not, so those are matched on (question_id, prompt), (question_id, round_id) or question_id."""
    by_qp, by_qr, by_q = {}, {}, {}
    qid_count = {}
    for it in bench.items:
        q = str(it.question_id)
        by_qp[(q, it.prompt.strip())] = it.uid
        by_qp[(q, it.record_prompt.replace("<image>", "").strip())] = it.uid
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
            if uid is None and q in bench.extra_ground_truth:
                uid = q
            if uid is None and bench.match_record is not None:
                uid = bench.match_record(r)
                uid = uid if uid in uids else None
        if uid is not None:
            out[uid] = r  # a repeated question: the last record counts, as the official dicts do
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
    if bench.layout_for is not None:
        bench = bench.layout_for(records) or bench
    scope = bench.subset([it.uid for it in limited_items(bench, limit)]) if limit else bench
    matched = _match_records(scope, records)
    preds = {u: r.get("text") for u, r in matched.items()}
    prompts = {u: r.get("prompt") for u, r in matched.items()}
    summary = scope.score(preds, prompts)
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
    mpath = manifest_path(answers_file) if answers_file.endswith(".jsonl") else None
    if mpath and os.path.exists(mpath):
        with open(mpath, "r", encoding="utf-8") as f:
            summary["manifest"] = json.load(f)
    err = errors_path(answers_file) if answers_file.endswith(".jsonl") else None
    if err and os.path.exists(err):
        summary["n_errors"] = len(read_jsonl_tolerant(err)[0])
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
