"""The vision-overhead benchmark runs every method at a tiny shape (no timing assertions)."""
from paddle_rc.benchmark.vision import format_vision_table, run_vision_benchmark

METHODS = ["none", "random", "cls-topk", "prumerge", "prumerge+", "visionzip", "divprune", "rc", "rc-reference"]


def test_vision_benchmark_rows():
    rows = run_vision_benchmark(METHODS, width=32, layers=3, heads=4, image_size=56, projection_dim=16, llm_width=24,
                                repeats=1)
    names = [r["method"] for r in rows]
    assert names[:2] == ["none (layers to -2)", "full tower (all layers)"]
    assert names[2:] == METHODS[1:]
    for r in rows:
        assert r["seconds"] > 0 and r["median"] >= r["seconds"]
    assert all(r["compress_seconds"] > 0 for r in rows[2:])
    assert rows[0]["tokens"] == 16.0
    assert rows[METHODS.index("cls-topk") + 1]["tokens"] == 2.0  # round(16 * 64 / 576)
    table = format_vision_table(rows)
    assert table.count("\n") == len(rows) + 1
