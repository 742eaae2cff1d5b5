"""`benchmark.py versus` at tiny shapes: every row, both sides, the ratios, and the no-transformers path."""
import os
import stat
import subprocess
import sys

import pytest

from paddle_rc.benchmark.versus import format_versus_table, run_versus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIT = dict(width=32, layers=3, heads=4, image_size=56, patch=14, projection=16)
TEXT = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            projection_dim=16, bos_token_id=98, eos_token_id=99, pad_token_id=99)
LLAMA = dict(hidden=64, intermediate=96, heads=4, vocab=128)
CASES = ["tower to the feature layer", "tower + rc", "exported tower + rc", "rc step alone", "prefill",
         "decode, per token", "exported prefill", "exported decode, per token"]


def _run(**kw):
    return run_versus(repeats=2, llm_layers=2, export_layers=1, seq=12, decode_steps=3, vit=VIT, text=TEXT,
                      llama=LLAMA, threads=1, pause=0.0, **kw)


def test_versus_rows_against_transformers():
    pytest.importorskip("transformers")
    res = _run()
    rows = {r["case"]: r for r in res["rows"]}
    assert list(rows) == CASES
    assert res["info"]["transformers_note"] is None and res["info"]["threads"] == 1
    for name in ("tower to the feature layer", "tower + rc", "prefill", "decode, per token"):
        r = rows[name]
        assert r["versus"].startswith("transformers")
        assert 0 < r["paddle_rc_min_s"] <= r["paddle_rc_median_s"] and 0 < r["ref_min_s"] <= r["ref_median_s"]
        assert r["ratio_min"] == pytest.approx(r["paddle_rc_min_s"] / r["ref_min_s"])
    # The tower + rc row and the plain tower row are timed against the same transformers tower.
    assert rows["tower + rc"]["ref_min_s"] == rows["tower to the feature layer"]["ref_min_s"]
    assert rows["exported tower + rc"]["ref_min_s"] == rows["tower + rc"]["paddle_rc_min_s"]
    assert rows["exported prefill"]["versus"] == "dynamic paddle_rc"
    assert rows["rc step alone"]["ref_min_s"] == rows["tower to the feature layer"]["paddle_rc_min_s"]
    table = format_versus_table(res)
    assert table.count("\n| ") == len(CASES) + 1 and "transformers 4." in table


def test_versus_without_transformers_says_so_in_one_line(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    res = _run(stages=("llm",), transformers_python=str(fake))
    note = res["info"]["transformers_note"]
    assert note and "\n" not in note and "torch and transformers" in note
    rows = {r["case"]: r for r in res["rows"]}
    assert list(rows) == ["prefill", "decode, per token"]
    assert rows["prefill"]["ref_min_s"] is None and rows["prefill"]["paddle_rc_min_s"] > 0
    assert note in format_versus_table(res)


def test_versus_cli_rejects_unknown_stage():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "versus", "--stages", "gpu"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: --stages")
