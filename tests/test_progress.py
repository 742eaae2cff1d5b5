"""Long-running tools show progress on stderr (tqdm), finishing at 100%."""
import pytest

from test_cli_errors import run_tool


def _bar(err, desc):
    lines = " ".join(err)
    return desc in lines and "100%" in lines


def test_vision_benchmark_shows_progress(capsys):
    code, err = run_tool(capsys, "benchmark", ["vision", "--methods", "none,cls-topk", "--layers", "1",
                                               "--width", "32", "--heads", "4", "--image-size", "56",
                                               "--repeats", "1", "--llm-width", "32"])
    assert code == 0 and _bar(err, "vision benchmark"), err


def test_quantize_and_export_show_progress(capsys, tmp_path):
    from paddle_rc.demo import default_model

    code, err = run_tool(capsys, "quantize", ["--model", default_model(), "--dst", str(tmp_path / "q")])
    assert code == 0 and _bar(err, "quantizing"), err
    code, err = run_tool(capsys, "export", ["--out", str(tmp_path / "exp"), "--quant", "int8"])
    assert code == 0 and _bar(err, "quantizing") and "3/3" in " ".join(err), err
