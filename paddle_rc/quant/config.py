"""QuantConfig: which Linear layers get weight-only quantization, and how.

Field names follow PaddleSlim's post-training quantization options (``weight_bits``,
``weight_quantize_type``) so that people who know PaddleSlim recognise them. The dict form is what
``LlavaConfig.quantization`` holds in config.json.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from paddle_rc.errors import UserError

FORMAT = "paddle_rc.weight_only.v1"
QUANT_TYPES = ("channel_wise_abs_max", "group_wise_abs_max")
GROUP_SIZES = (64, 128)

# The vision side is small next to the LLM and its features feed the token scores that RC relies
# on, so it stays in float unless asked; lm_head is skipped by default because logits are the most
# quantization-sensitive output and it is a single layer (the '-head' presets quantize it: memory).
VISION_SKIP = ("projector.*", "vision_tower.*", "text_tower.*", "visual_projection",
               "text_projection")
DEFAULT_SKIP = ("lm_head",) + VISION_SKIP


@dataclass
class QuantConfig:
    weight_bits: int = 8
    weight_quantize_type: str = "channel_wise_abs_max"
    group_size: int = -1
    skip: list = field(default_factory=lambda: list(DEFAULT_SKIP))
    quantize_vision: bool = False
    # Search each column's (group's) clipping ratio for the least rounding error instead of using
    # its absmax (paddle_rc.quant.functional.quantize_weight). Pays off for int4; same storage.
    clip_search: bool = False

    def __post_init__(self):
        self.skip = list(self.skip)
        self.validate()

    def validate(self) -> None:
        if self.weight_bits not in (8, 4):
            raise UserError(f"quantization weight_bits must be 8 or 4, got {self.weight_bits!r}")
        if self.weight_quantize_type not in QUANT_TYPES:
            raise UserError(f"quantization weight_quantize_type must be one of {', '.join(QUANT_TYPES)}, "
                            f"got {self.weight_quantize_type!r}")
        if self.weight_quantize_type == "channel_wise_abs_max" and self.group_size != -1:
            raise UserError(f"group_size={self.group_size} needs weight_quantize_type="
                            "group_wise_abs_max (channel_wise_abs_max uses group_size=-1)")
        if self.weight_quantize_type == "group_wise_abs_max" and self.group_size not in GROUP_SIZES:
            raise UserError(f"group_wise_abs_max needs group_size 64 or 128, got {self.group_size!r}")
        if not all(isinstance(p, str) for p in self.skip):
            raise UserError("quantization skip must be a list of layer-name patterns (strings)")

    @classmethod
    def preset(cls, name: str) -> "QuantConfig":
        """'int8' | 'int4' | 'int4-g64' | 'int4-g128' | 'int8-g128' ..., each optionally with a
        '-clip' suffix for the clip search and a '-head' suffix to quantize lm_head too (the --quant
        option). At 7B lm_head is 0.53 GB in float32 and is read whole for every new token."""
        text = name.strip().lower()
        flags = set()
        while text.endswith(("-clip", "-head")):
            flags.add(text[-4:])
            text = text[:-5]
        base, _, group = text.partition("-g")
        bits = {"int8": 8, "int4": 4, "wint8": 8, "wint4": 4}.get(base)
        if bits is None or (group and not group.isdigit()):
            raise UserError(f"unknown quantization preset {name!r}; use int8, int4, int8-g128, "
                            "int4-g64 or int4-g128, optionally with -clip and/or -head")
        skip = [p for p in DEFAULT_SKIP if not ("head" in flags and p == "lm_head")]
        if group:
            return cls(weight_bits=bits, weight_quantize_type="group_wise_abs_max",
                       group_size=int(group), clip_search="clip" in flags, skip=skip)
        return cls(weight_bits=bits, clip_search="clip" in flags, skip=skip)

    def effective_skip(self) -> list:
        if not self.quantize_vision:
            return list(self.skip)
        return [p for p in self.skip if p not in VISION_SKIP]

    def should_quantize(self, name: str) -> bool:
        """True unless the layer name matches a skip pattern (fnmatch, full name)."""
        return not any(fnmatch.fnmatchcase(name, p) for p in self.effective_skip())

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "weight_bits": self.weight_bits,
            "weight_quantize_type": self.weight_quantize_type,
            "group_size": self.group_size,
            "skip": list(self.skip),
            "quantize_vision": self.quantize_vision,
            "clip_search": self.clip_search,
            # Recorded so a reader of config.json knows the storage without reading the code.
            "qweight_layout": "int8 [in, out]" if self.weight_bits == 8 else
                              "int8 [ceil(in/2), out], row 2r in the low nibble, 2r+1 in the high",
            "range": "[-127, 127]" if self.weight_bits == 8 else "[-7, 7]",
        }

    @classmethod
    def from_dict(cls, d: dict) -> "QuantConfig":
        if not isinstance(d, dict):
            raise UserError("config.json 'quantization' must be an object")
        fmt = d.get("format", FORMAT)
        if fmt != FORMAT:
            raise UserError(f"unsupported quantization format {fmt!r} in config.json "
                            f"(this version reads {FORMAT}); re-quantize the checkpoint")
        kw = {k: d[k] for k in ("weight_bits", "weight_quantize_type", "group_size", "skip",
                                "quantize_vision", "clip_search") if k in d}
        return cls(**kw)
