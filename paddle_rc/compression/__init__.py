"""Visual-token compression: RC (Recoverable Compression) and the baselines it is compared
with, as pure Paddle tensor functions behind a method registry (docs/algorithm.md)."""
from paddle_rc.compression.api import (check_compression, compress, compress_tensors, load_method_preset,
                                       method_defaults)
from paddle_rc.compression.ops import (iqr_ratio, lof_outlier_count, lof_outlier_ratio,
                                       text_score, visual_score)
from paddle_rc.compression.registry import available_methods, get_method, register
from paddle_rc.compression.result import CORE_FIELDS, CompressionResult, SampleSelection

__all__ = [
    "compress", "compress_tensors", "CompressionResult", "SampleSelection", "CORE_FIELDS",
    "lof_outlier_ratio", "lof_outlier_count", "iqr_ratio", "visual_score", "text_score",
    "register", "get_method", "available_methods", "method_defaults", "load_method_preset",
    "check_compression",
]
