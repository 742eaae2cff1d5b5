"""Checkpoint conversion: llava-hf / original LLaVA + OpenAI CLIP -> paddle_rc format (docs/checkpoint.md)."""
from paddle_rc.convert.converter import ConvertResult, convert, detect_source
from paddle_rc.convert.readers import CheckpointReader, TensorInfo, open_checkpoint
from paddle_rc.convert.writer import PlannedTensor, parse_size, write_sharded

__all__ = ["ConvertResult", "convert", "detect_source", "CheckpointReader", "TensorInfo", "open_checkpoint",
           "PlannedTensor", "parse_size", "write_sharded"]
