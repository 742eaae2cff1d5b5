"""LLaVA's vision-to-language projector."""
import re

import paddle.nn as nn
import paddle.nn.functional as F


class MLPProjector(nn.Layer):
    """`mlp2x_gelu`: Linear -> GELU (exact erf, as torch nn.GELU) -> Linear."""

    def __init__(self, vision_width: int, llm_width: int, projector_type: str = "mlp2x_gelu"):
        super().__init__()
        if not re.fullmatch(r"mlp2x_gelu", projector_type):
            raise ValueError(f"unsupported projector type {projector_type!r} (only mlp2x_gelu)")
        self.linear_1 = nn.Linear(vision_width, llm_width)
        self.linear_2 = nn.Linear(llm_width, llm_width)

    def forward(self, x):
        return self.linear_2(F.gelu(self.linear_1(x)))
