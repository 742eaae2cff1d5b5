"""Left padding: the one batch layout the model, the pipeline and the exported graphs use."""
from __future__ import annotations

import numpy as np


def left_pad(rows, pad: int) -> tuple:
    """int64 ``(values, mask)`` [len(rows), longest]: each row right-aligned, ``pad`` before it.

    Left padding puts every sample's last token in the last column, which is where batched
    decoding reads the next-token logits."""
    length = max(len(r) for r in rows)
    values = np.full((len(rows), length), pad, dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    for i, r in enumerate(rows):
        if len(r):
            values[i, length - len(r):] = r
            mask[i, length - len(r):] = 1
    return values, mask
