"""Evaluation harness: LLaVA-1.5 benchmark readers, official-rule scorers, runner, reports."""
from .benchmarks import Benchmark, Item, READERS, canonical_name, load_benchmark
from .report import build_rows, write_report
from .runner import (answers_path, get_chunk, merge_chunks, run_benchmark, run_tag,
                     score_answers)
from . import scorers

__all__ = ["Benchmark", "Item", "READERS", "canonical_name", "load_benchmark", "build_rows",
           "write_report", "answers_path", "get_chunk", "merge_chunks", "run_benchmark",
           "run_tag", "score_answers", "scorers"]
