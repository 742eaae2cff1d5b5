"""The tools' promise: a problem the user can fix ends in one `error: ...` line and exit code 2.

Each case runs the tool's main() under paddle_rc.cli.run in this process (what `python tools/X.py`
does) and checks the exit code and that stderr holds exactly one line, starting with `error:`.
"""
import importlib.util
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool(name):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(capsys, name, argv):
    """-> (exit code, stderr lines) of `python tools/<name>.py argv`."""
    from paddle_rc.cli import run

    tool = _tool(name)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(lambda: tool.main(argv))
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()


def assert_one_error(capsys, name, argv, match):
    code, lines = run_tool(capsys, name, argv)
    assert code == 2, (code, lines)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert match in lines[0], lines[0]


@pytest.fixture(scope="module")
def demo_dir():
    from paddle_rc.demo import default_model

    return default_model()


@pytest.fixture
def damaged(tmp_path, demo_dir):
    """Copies of the built-in model with a truncated and an empty model.safetensors."""
    out = {}
    for kind in ("truncated", "empty"):
        d = tmp_path / kind
        shutil.copytree(demo_dir, d)
        weights = d / "model.safetensors"
        size = weights.stat().st_size
        with open(weights, "r+b") as f:
            f.truncate(size // 2 if kind == "truncated" else 0)
        out[kind] = str(d)
    return out


FAST = ["--max-new-tokens", "2"]

INFER_CASES = [
    (["--option", "topk=abc"], "option topk: expected a whole number"),
    (["--option", "topk=0"], "option topk: expected at least 1"),
    (["--method", "cls-topk", "--option", "ratio=2"], "option ratio: expected a fraction"),
    (["--option", "nope=1"], "has no option(s) nope"),
    (["--option", "text_sign=2"], "option text_sign: expected 1 or -1"),
    (["--option", "p_source=elsewhere"], "p_source must be one of"),
    (["-o", "budget=abc"], "--budget: expected an integer, got 'abc'"),
    (["-o", "budget=2.5"], "--budget: expected an integer"),
    (["-o", "max_new_tokens=lots"], "--max-new-tokens: expected an integer"),
    (["-o", "json=maybe"], "--json is a switch"),
    (["-o", "colour=red"], "unknown option 'colour'"),
    (["--budget", "abc"], "argument --budget: invalid int value"),
    (["--no-such-flag"], "unrecognized arguments"),
    (["--budget", "0"], "budget must be a positive whole number"),
    (["--method", "nosuch"], "unknown compression method 'nosuch'"),
    (["--method", "none", "--budget", "32"], "keeps every visual token, so a budget (32)"),
    (["--question", "<image> what is <image>?"], "holds <image> 2 times"),
    (["--temperature", "-1"], "temperature must be 0"),
    (["--temperature", "nan"], "temperature must be 0"),
    (["--top-p", "2"], "top_p must be in (0, 1]"),
    (["--top-p", "0"], "top_p must be in (0, 1]"),
    (["--max-new-tokens", "-3"], "max_new_tokens must be a whole number of at least 1"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--seed", "-1", "--temperature", "1"], "a seed must be a whole number of 0 or more"),
]


@pytest.mark.parametrize("argv,match", INFER_CASES, ids=[" ".join(a) for a, _ in INFER_CASES])
def test_infer_bad_values(capsys, argv, match):
    # A flag beats -o, so the cases about the token count go without FAST.
    assert_one_error(capsys, "infer", argv if any("max" in a for a in argv) else FAST + argv, match)


def test_option_given_through_o_is_one_key_value(capsys):
    """-o option=topk=8 is --option topk=8 (it used to be read character by character)."""
    code, lines = run_tool(capsys, "infer", FAST + ["-o", "option=topk=8", "--json"])
    assert code == 0, lines
    assert_one_error(capsys, "infer", FAST + ["-o", "option=topk=abc"], "option topk: expected a whole number")


def test_bad_yaml_config_is_one_line(capsys, tmp_path):
    cfg = tmp_path / "bad.yml"
    cfg.write_text("method: rc\n  budget: [1\n")
    assert_one_error(capsys, "infer", FAST + ["-c", str(cfg)], "(line 2, column 9)")
    cfg.write_text("budget: many\n")
    assert_one_error(capsys, "infer", FAST + ["-c", str(cfg)], "--budget: expected an integer, got 'many'")


def test_decompression_bomb_is_refused(capsys, tmp_path):
    big = tmp_path / "big.png"
    Image.new("1", (14000, 14000)).save(big)  # 1-bit: small file, 196 Mpx when decoded
    assert_one_error(capsys, "infer", FAST + ["--image", str(big)], "image too large")


def test_damaged_weights(capsys, damaged, tmp_path):
    for kind, path in damaged.items():
        assert_one_error(capsys, "infer", FAST + ["--model", path], "model.safetensors")
        code, lines = run_tool(capsys, "export", ["--model", path, "--out", str(tmp_path / f"exp-{kind}")])
        assert code == 2 and lines[-1].startswith("error: ") and "damaged or incomplete" in lines[-1], lines
        assert not any(l.startswith("error") for l in lines[:-1]) and not any("Traceback" in l for l in lines)
        code, lines = run_tool(capsys, "quantize", ["--model", path, "--dst", str(tmp_path / f"q-{kind}")])
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines


def test_missing_default_model_is_one_error(capsys, tmp_path, monkeypatch):
    """Without --model the tools use the shipped model; if an install lost it, one line says so."""
    from paddle_rc import demo

    monkeypatch.setattr(demo, "SYNTHVQA_DIR", str(tmp_path / "synthvqa-demo"))
    assert_one_error(capsys, "infer", FAST, "the built-in demo model is missing")
    assert_one_error(capsys, "export", ["--out", str(tmp_path / "exp")], "pass --model DIR")


BENCH_CASES = [
    (["vision", "--methods", "foo"], "unknown compression method 'foo'"),
    (["vision", "--methods", ","], "--methods names no method"),
    (["vision", "--repeats", "0"], "--repeats must be at least 1"),
    (["vision", "--width", "100", "--heads", "16"], "must be a multiple of --heads"),
    (["vision", "--budget", "0"], "budget must be a positive whole number"),
    (["deploy", "--repeats", "0"], "--repeats must be at least 1"),
    (["deploy", "--method", "foo"], "unknown compression method 'foo'"),
    (["deploy", "--preset", "huge"], "unknown preset 'huge'"),
    (["quant", "--prompt-len", "0"], "--prompt-len must be at least 1"),
    (["quant", "--group-size", "7"], "--group-size takes -1"),
    (["compute", "--repeats", "0"], "--repeats must be at least 1"),
    (["seven-b", "--quant", "int8", "--deploy", "int4-g128"], "--deploy int4-g128: not among --quant int8"),
    (["nosuchmode"], "invalid choice: 'nosuchmode'"),
]


@pytest.mark.parametrize("argv,match", BENCH_CASES, ids=[" ".join(a) for a, _ in BENCH_CASES])
def test_benchmark_refuses_before_working(capsys, argv, match):
    assert_one_error(capsys, "benchmark", argv, match)


def test_export_bad_values(capsys, tmp_path):
    out = str(tmp_path / "exp")
    assert_one_error(capsys, "export", ["--out", out, "-o", "budget=abc"], "--budget: expected an integer")
    assert_one_error(capsys, "export", ["--out", out, "--option", "topk=x"], "option topk")
    assert_one_error(capsys, "export", ["--out", out, "--budget", "-5"], "budget must be a positive")
    assert_one_error(capsys, "export", [], "the following arguments are required: --out")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert_one_error(capsys, "export", ["--out", str(a_file)], "is a file; give a directory")


def test_convert_bad_flag(capsys, tmp_path):
    assert_one_error(capsys, "convert", ["--src", str(tmp_path), "--dst", str(tmp_path / "o"), "--dtype", "int3"],
                     "argument --dtype: invalid choice")


def test_subprocess_prints_one_line():
    """The same, end to end through the interpreter (nothing else printed at import)."""
    p = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "infer.py"), "--top-p", "2"],
                       capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == ["error: top_p must be in (0, 1], got 2.0"]


def test_export_prints_no_paddle_tracing_noise(tmp_path, capfd):
    from paddle_rc.demo import default_model
    from paddle_rc.export import export_model

    capfd.readouterr()
    export_model(default_model(), str(tmp_path / "exp"), method="rc")
    err = capfd.readouterr().err
    assert "PIR" not in err and "Tensor do not have 'place'" not in err, err


def test_long_question_is_refused_before_the_llm(capsys):
    """Past the LLM's context the answer is meaningless and the prefill slow: one line instead."""
    from paddle_rc.models.config import LlavaConfig
    from paddle_rc.demo import default_model

    context = LlavaConfig.load(default_model()).llm.max_position_embeddings
    question = " ".join(["word"] * (context + 10))
    assert_one_error(capsys, "infer", FAST + ["--question", question], f"the LLM's context is {context}")


def test_half_precision_on_cpu_is_refused(demo_dir):
    import paddle

    from paddle_rc.errors import UserError
    from paddle_rc.models import LlavaForConditionalGeneration

    if paddle.get_device().startswith("gpu"):
        pytest.skip("this machine has a GPU: float16 is supported there")
    with pytest.raises(UserError, match="float16 needs a GPU"):
        LlavaForConditionalGeneration.from_pretrained(demo_dir, dtype="float16")
    with pytest.raises(UserError, match="dtype must be"):
        LlavaForConditionalGeneration.from_pretrained(demo_dir, dtype="int8")
