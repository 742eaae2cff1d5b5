"""tools/quantize.py end to end: a tiny float checkpoint -> int8 / int4 checkpoint dirs that
from_pretrained loads, with logits close to float and identical to in-memory quantization."""
import filecmp
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from paddle_rc.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool():
    spec = importlib.util.spec_from_file_location("quantize_tool", os.path.join(ROOT, "tools", "quantize.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def float_ckpt(tmp_path_factory):
    from conftest import tiny_llava_config

    from paddle_rc.data.tiny_tokenizers import build_tiny_clip_bpe, build_tiny_sentencepiece
    from paddle_rc.models import LlavaForConditionalGeneration
    from paddle_rc.models.weights import save_weights

    d = str(tmp_path_factory.mktemp("float_ckpt"))
    cfg = tiny_llava_config()
    paddle.seed(3)
    model = LlavaForConditionalGeneration(cfg)
    cfg.save(d)
    save_weights(model, d)
    build_tiny_sentencepiece(os.path.join(d, "tokenizer"))
    build_tiny_clip_bpe(os.path.join(d, "clip_tokenizer"))
    return d


def _prompts(n=64, length=12, vocab=96, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(n, length)).astype("int64")
    ids[:, 0] = 1
    ids[:, 4] = -200  # the image placeholder: the visual tokens go through the quantized LLM too
    return ids


def _logits(model, ids, pixels):
    with paddle.no_grad():
        return model(paddle.to_tensor(ids), pixel_values=paddle.to_tensor(pixels)).logits.numpy()


@pytest.mark.parametrize("argv,bits,group,max_linear_ratio", [
    (["--bits", "8"], 8, -1, 0.27),
    (["--bits", "4", "--group-size", "64"], 4, 64, 0.15),
    (["--bits", "4", "--clip-search"], 4, -1, 0.15),
    (["--bits", "8", "--quantize-lm-head"], 8, -1, 0.27),
])
def test_quantize_tool_end_to_end(float_ckpt, tmp_path, capsys, argv, bits, group, max_linear_ratio):
    from paddle_rc.benchmark.quant_eval import logits_errors
    from paddle_rc.models import LlavaForConditionalGeneration
    from paddle_rc.quant import QuantConfig, WeightOnlyLinear, quantize_model

    dst = str(tmp_path / "q")
    js = str(tmp_path / "q.json")
    assert _tool().main(["--model", float_ckpt, "--dst", dst, "--json", js] + argv) == 0
    out = capsys.readouterr().out
    assert "checkpoint weights:" in out and "MB ->" in out

    # A complete checkpoint dir, nothing temporary left next to it.
    assert sorted(os.listdir(tmp_path)) == ["q", "q.json"]
    with open(os.path.join(dst, "config.json"), encoding="utf-8") as f:
        q = json.load(f)["quantization"]
    assert (q["weight_bits"], q["group_size"]) == (bits, group)
    assert q["clip_search"] == ("--clip-search" in argv)
    for sub in ("tokenizer", "clip_tokenizer"):
        cmp = filecmp.dircmp(os.path.join(float_ckpt, sub), os.path.join(dst, sub))
        assert cmp.left_list == cmp.right_list and not cmp.diff_files
    report = json.load(open(js, encoding="utf-8"))
    assert report["bytes_after"] == os.path.getsize(os.path.join(dst, "model.safetensors"))
    assert report["bytes_after"] < report["bytes_before"]
    head = "--quantize-lm-head" in argv
    assert ("lm_head" in q["skip"]) != head
    assert report["quantized_layers"] == 2 * 7 + head   # LLM only: vision (and lm_head unless asked) stay float
    assert report["linear_ratio"] <= max_linear_ratio

    ref_model = LlavaForConditionalGeneration.from_pretrained(float_ckpt)
    loaded = LlavaForConditionalGeneration.from_pretrained(dst)
    assert isinstance(loaded.language_model.layers[0].self_attn.q_proj, WeightOnlyLinear)
    assert isinstance(loaded.lm_head, WeightOnlyLinear) if head else type(loaded.lm_head) is paddle.nn.Linear
    ids = _prompts()
    pixels = np.random.default_rng(1).standard_normal((len(ids), 3, 56, 56)).astype("float32")
    ref = _logits(ref_model, ids, pixels)
    got = _logits(loaded, ids, pixels)

    # The streamed checkpoint holds exactly what in-memory quantization produces.
    mem = LlavaForConditionalGeneration.from_pretrained(float_ckpt)
    quantize_model(mem, QuantConfig.from_dict(q))
    np.testing.assert_array_equal(got, _logits(mem, ids, pixels))

    err = logits_errors(ref, got)
    assert err["prompts"] == 64
    assert err["max_abs"] > 0                      # it really is quantized
    if bits == 8:
        assert err["max_abs_rel"] < 0.05
        assert err["top1_all"] >= 0.9 and err["top1_last"] >= 0.9
    else:
        assert err["max_abs_rel"] < 0.5
        assert err["top1_all"] >= 0.5


def test_quantize_tool_sharded_output_and_overwrite(float_ckpt, tmp_path):
    from paddle_rc.models import LlavaForConditionalGeneration

    dst = str(tmp_path / "q")
    tool = _tool()
    tool.main(["--model", float_ckpt, "--dst", dst, "--bits", "8", "--shard-size", "40KB"])
    files = os.listdir(dst)
    assert "model.safetensors.index.json" in files and "model.safetensors" not in files
    a = LlavaForConditionalGeneration.from_pretrained(dst)
    with pytest.raises(UserError, match="already exists"):
        tool.main(["--model", float_ckpt, "--dst", dst, "--bits", "4"])
    # The user's own files in the folder are not part of the checkpoint: --overwrite keeps them.
    with open(os.path.join(dst, "NOTES.txt"), "w") as f:
        f.write("mine")
    os.makedirs(os.path.join(dst, "eval"))
    tool.main(["--model", float_ckpt, "--dst", dst, "--bits", "4", "--overwrite"])
    files = os.listdir(dst)
    with open(os.path.join(dst, "NOTES.txt")) as f:
        assert f.read() == "mine"
    assert os.path.isdir(os.path.join(dst, "eval"))
    # The old shards went with the old directory.
    assert files.count("model.safetensors") == 1 and "model.safetensors.index.json" not in files
    b = LlavaForConditionalGeneration.from_pretrained(dst)
    assert b.config.quantization["weight_bits"] == 4 and a.config.quantization["weight_bits"] == 8
    assert sorted(os.listdir(tmp_path)) == ["q"]


def test_quantize_tool_errors(float_ckpt, tmp_path):
    tool = _tool()
    dst = str(tmp_path / "out")
    with pytest.raises(UserError, match="not found"):
        tool.main(["--model", str(tmp_path / "nope"), "--dst", dst])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a paddle_rc checkpoint"):
        tool.main(["--model", str(tmp_path / "empty"), "--dst", dst])
    with pytest.raises(UserError, match="weight_bits must be 8 or 4"):
        tool.main(["--model", float_ckpt, "--dst", dst, "--bits", "3"])
    with pytest.raises(UserError, match="group_size 64 or 128"):
        tool.main(["--model", float_ckpt, "--dst", dst, "--bits", "4", "--group-size", "32"])
    q = str(tmp_path / "q8")
    tool.main(["--model", float_ckpt, "--dst", q, "--bits", "8"])
    with pytest.raises(UserError, match="already quantized"):
        tool.main(["--model", q, "--dst", dst, "--bits", "4"])
    with pytest.raises(UserError, match="must differ"):
        tool.main(["--model", float_ckpt, "--dst", float_ckpt, "--overwrite"])
    # A checkpoint whose weights do not match its config is refused before anything is written.
    bad = tmp_path / "bad"
    bad.mkdir()
    from conftest import tiny_llava_config

    cfg = tiny_llava_config()
    cfg.llm.num_hidden_layers = 3
    cfg.save(str(bad))
    os.link(os.path.join(float_ckpt, "model.safetensors"), str(bad / "model.safetensors"))
    with pytest.raises(UserError, match="does not match"):
        tool.main(["--model", str(bad), "--dst", dst])
    assert not os.path.exists(dst)
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


def test_quantize_tool_cli_error_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "quantize.py"), "--model",
                          str(tmp_path / "missing"), "--dst", str(tmp_path / "x"), "--bits", "8"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert lines == [f"error: model directory not found: {tmp_path / 'missing'}"]
    assert "Traceback" not in out.stderr
