"""Do a method's kept tokens land on the objects a synthvqa answer depends on?

For every question with a non-empty `target` (the asked objects, see docs/eval-data.md), a method
"covers" it when each target object keeps at least one token of its own: a patch kept by the visual
filter (top-k, random, dominant ...), recovered by RC's text score, or chosen as a merge centre. Merged
members and the extra token do not count (their content is averaged with other patches). The vision
tower and the compression run, the LLM does not, so this is cheap and isolates where the tokens go
from how well the LLM reads them. `rc:no-text` is rc with an empty question (text recovery off).
"""
from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from typing import List, Optional, Sequence, Tuple

import numpy as np
import paddle

from paddle_rc.errors import UserError

MIN_OVERLAP = 0.2  # a patch belongs to an object when the object's box covers this much of it


def object_patches(bbox, image_px: int, grid: int, min_overlap: float = MIN_OVERLAP) -> List[int]:
    """Raster indices of the grid x grid patches that the half-open pixel box covers by >= min_overlap of
    the patch's area (at least the most-covered patch), for a square image of image_px pixels."""
    x0, y0, x1, y1 = bbox
    step = image_px / grid
    edges = np.arange(grid + 1) * step
    ox = np.clip(np.minimum(edges[1:], x1) - np.maximum(edges[:-1], x0), 0, None)
    oy = np.clip(np.minimum(edges[1:], y1) - np.maximum(edges[:-1], y0), 0, None)
    frac = np.outer(oy, ox) / (step * step)
    idx = np.flatnonzero(frac.reshape(-1) >= min_overlap)
    if idx.size == 0:
        idx = np.array([int(frac.argmax())])
    return [int(i) for i in idx]


def _parse_run(text: str) -> Tuple[str, Optional[int], bool]:
    """'rc' | 'rc@32' | 'rc:no-text@32' -> (method, budget, use_question)."""
    name, _, budget = text.partition("@")
    method, _, flag = name.partition(":")
    if flag not in ("", "no-text"):
        raise UserError(f"unknown run flag {flag!r} in {text!r} (only :no-text)")
    try:
        b = int(budget) if budget else None
    except ValueError:
        raise UserError(f"budget in {text!r} must be an integer") from None
    return method, b, flag != "no-text"


def run_coverage(predictor, data_root: str, runs: Sequence[str], *, limit: Optional[int] = None,
                 batch: int = 16, progress: bool = True) -> List[dict]:
    """-> one row per run: {run, method, budget, n, tokens, covered, covered_by_text, per_qtype}.

    covered: % of questions whose every target object keeps a token of its own; covered_by_text: the
    part of those that would not be covered without the text-recovered patches."""
    from paddle_rc.data.image import load_image
    from paddle_rc.synth.layout import ANNOTATIONS_FILE, BENCH_DIR, IMAGES_DIR
    from paddle_rc.synth.questions import prompt

    d = os.path.join(data_root, BENCH_DIR)
    path = os.path.join(d, ANNOTATIONS_FILE)
    if not os.path.isfile(path):
        raise UserError(f"missing {path} (write it with tools/make_synth.py)")
    with open(path, encoding="utf-8") as f:
        anns = [a for a in json.load(f)["annotations"] if a["target"]][:limit]
    vcfg = predictor.model.config.vision
    grid = vcfg.image_size // vcfg.patch_size
    rows = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(runs) * len(anns), unit="q", desc="coverage", file=sys.stderr, dynamic_ncols=True)
    for spec in runs:
        method, budget, use_q = _parse_run(spec)
        predictor.set_method(method, budget)
        hits, text_hits, tokens, per_type = [], [], [], defaultdict(list)
        for k in range(0, len(anns), batch):
            chunk = anns[k:k + batch]
            images = [load_image(os.path.join(d, IMAGES_DIR, a["image"])) for a in chunk]
            questions = [a["question"] if use_q else "" for a in chunk]
            with paddle.no_grad():
                pixels = paddle.to_tensor(predictor.processor(images))
                te, ht = predictor.text_embeddings(questions, [prompt(q) for q in questions])
                visual = predictor.model.encode_images(pixels, te, ht)
            for b, (a, im) in enumerate(zip(chunk, images)):
                if im.size[0] != im.size[1]:
                    raise UserError(f"{a['image']}: synthvqa images are square")
                if visual.result is None:  # `none` keeps every patch
                    kept, text = set(range(grid * grid)), set()
                else:
                    s = visual.result.samples[b]
                    kept, text = set(s.visual) | set(s.text) | set(s.centres), set(s.text) - set(s.visual)
                own = [set(object_patches(a["objects"][i]["bbox"], im.size[0], grid)) for i in a["target"]]
                hit = all(p & kept for p in own)
                by_text = hit and not all(p & (kept - text) for p in own)
                hits.append(hit)
                text_hits.append(by_text)
                per_type[a["qtype"]].append(hit)
                tokens.append(int(visual.lengths[b]))
            if bar:
                bar.update(len(chunk))
        pct = lambda xs: round(100.0 * sum(xs) / len(xs), 1) if xs else None  # noqa: E731
        rows.append({"run": spec, "method": method, "budget": budget, "question": use_q, "n": len(hits),
                     "tokens": round(float(np.mean(tokens)), 1) if tokens else None,
                     "covered": pct(hits), "covered_by_text": pct(text_hits),
                     "per_qtype": {t: pct(v) for t, v in sorted(per_type.items())}})
    if bar:
        bar.close()
    return rows


def format_coverage_table(rows: List[dict]) -> str:
    types = sorted({t for r in rows for t in r["per_qtype"]})
    head = ["run", "tokens", "covered %", "by text only %"] + types
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["run"], f"{r['tokens']:.1f}", f"{r['covered']:.1f}", f"{r['covered_by_text']:.1f}"]
        cells += ["-" if r["per_qtype"].get(t) is None else f"{r['per_qtype'][t]:.1f}" for t in types]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
