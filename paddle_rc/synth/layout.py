"""Write the task in LLaVA's evaluation layout: what `tools/eval.py --benchmark synthvqa` reads.

    <root>/synthvqa/llava_synthvqa.jsonl         {question_id, image, text, category} per line, text =
                                                  question + LLaVA's short-answer instruction, category = qtype
    <root>/synthvqa/images/<question_id>.png     the 336x336 scene (PNG: the exact generated pixels)
    <root>/synthvqa/synthvqa_annotations.json    {generator: {name, version, seed, n}, annotations: [
                                                  {question_id, image, question, answer, qtype, target,
                                                   caption, objects: [{kind, shape, colour, size, bbox,
                                                   word, striped, dots}]}]}
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile

from paddle_rc.errors import UserError
from paddle_rc.synth.items import make_item
from paddle_rc.synth.questions import prompt

GENERATOR_VERSION = "synth-v3"  # bump when the same seed would give different items
BENCH_DIR = "synthvqa"
QUESTIONS_FILE = "llava_synthvqa.jsonl"
ANNOTATIONS_FILE = "synthvqa_annotations.json"
IMAGES_DIR = "images"


def write_synthvqa(root: str, seed: int, n: int, *, overwrite: bool = False, progress: bool = True) -> str:
    """Generate items 0..n-1 of `seed` under root/synthvqa (built in a temporary folder, then renamed into
    place, so a reader never sees half a benchmark). Returns the benchmark folder."""
    if seed < 0 or n < 1:
        raise UserError(f"--seed must be >= 0 and --n >= 1 (got seed={seed}, n={n})")
    final = os.path.join(root, BENCH_DIR)
    if os.path.exists(final) and not overwrite:
        raise UserError(f"{final} exists; pass --overwrite to replace it")
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".synthvqa.", dir=root)
    try:
        os.makedirs(os.path.join(tmp, IMAGES_DIR))
        rows, anns = [], []
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=n, unit="item", desc=f"synthvqa seed {seed}", file=sys.stderr, dynamic_ncols=True)
        for i in range(n):
            it = make_item(seed, i)
            image = f"{it.id}.png"
            it.image.save(os.path.join(tmp, IMAGES_DIR, image), format="PNG", compress_level=1)  # noise compresses badly anyway
            rows.append({"question_id": it.id, "image": image, "text": prompt(it.question), "category": it.qtype})
            anns.append({"question_id": it.id, "image": image, "question": it.question, "answer": it.answer,
                         "qtype": it.qtype, "target": it.target, "caption": it.caption,
                         "objects": [dataclasses.asdict(o) for o in it.objects]})
            if bar:
                bar.update(1)
        if bar:
            bar.close()
        with open(os.path.join(tmp, QUESTIONS_FILE), "w", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
        with open(os.path.join(tmp, ANNOTATIONS_FILE), "w", encoding="utf-8") as f:
            json.dump({"generator": {"name": "paddle_rc.synth", "version": GENERATOR_VERSION, "seed": seed, "n": n},
                       "annotations": anns}, f, indent=1)
        if os.path.exists(final):
            old = tempfile.mkdtemp(prefix=".synthvqa.old.", dir=root)
            os.rename(final, os.path.join(old, BENCH_DIR))
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
