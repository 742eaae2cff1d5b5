"""Method registry: `@register("name", reads=..., defaults=...)` on a core function.

Each entry says what the method reads, so the vision tower, the model, the pipeline, the exporter
and the benchmarks ask the registry instead of keeping their own lists of method names. Adding a
method is one module in methods/ plus configs/methods/<name>.yml.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, Optional, Union

# What a method can read (besides F, the feature-layer patches every vision method gets):
QK = "qk"                    # Q, K: q/k projections of the layer after the feature layer (CLS first)
P_NEXT = "p-next"            # P: that layer's output patches -> visual_projection (RC as released)
P_FEATURE = "p-feature"      # P: visual_projection(post_layernorm(F)) (TRIM, CDPruner)
CLS_STATS = "cls-stats"      # VisionZip: CLS attention of the feature layer + head-mean keys
TEXT = "text"                # t: the question's CLIP text embedding (see TEXT_MODES)
LLM_ATTENTION = "llm-attention"  # attention inside the LLM (in-LLM methods such as FastV)
INPUTS = frozenset({QK, P_NEXT, P_FEATURE, CLS_STATS, TEXT, LLM_ATTENTION})

# How the question becomes t:
#   question          the question (placeholder and answer-format suffixes removed), truncated to the
#                     text tower's length, CLIP pooling, text_projection
#   question-segments the whole question cut into segments of the tower's length, each pooled and
#                     projected, unit-normalised, then averaged (CDPruner)
#   prompt-first-line the released RC code: the prompt's first line, 20 tokens, last position
TEXT_MODES = ("question", "question-segments", "prompt-first-line")

# Where the method runs: on the vision tower's outputs before the LLM, or inside the LLM's prefill.
STAGES = ("vision", "llm")


@dataclass
class MethodSpec:
    name: str
    fn: Callable
    defaults: Dict = field(default_factory=dict)
    reads: Union[FrozenSet[str], Callable] = frozenset()   # a set, or options -> set
    text_mode: Optional[str] = None      # one of TEXT_MODES when the method reads TEXT
    takes_budget: bool = True            # False: a budget is ignored (method `none`)
    budget_tokens: Optional[Callable] = None   # budget -> tokens emitted, when not the budget itself
    after_projector: bool = False        # F is handed over already projected into the LLM's space
    stage: str = "vision"

    def inputs(self, options=None) -> FrozenSet[str]:
        """What the method reads with these options (defaults filled in)."""
        if callable(self.reads):
            opts = dict(self.defaults)
            opts.update(options or {})
            return frozenset(self.reads(opts))
        return frozenset(self.reads)

    @property
    def uses_text(self) -> bool:
        return self.text_mode is not None

    def needs_next_layer(self, options=None) -> bool:
        """Whether the tower must run the layer after the feature layer."""
        return bool(self.inputs(options) & {QK, P_NEXT})


_REGISTRY: Dict[str, MethodSpec] = {}


def register(name, defaults=None, reads=(), text_mode=None, takes_budget=True, budget_tokens=None,
             after_projector=False, stage="vision"):
    if text_mode is not None and text_mode not in TEXT_MODES:
        raise ValueError(f"text_mode must be one of {TEXT_MODES}, got {text_mode!r}")
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if not callable(reads):
        reads = frozenset(reads)
        unknown = reads - INPUTS
        if unknown:
            raise ValueError(f"method {name!r} reads unknown inputs {sorted(unknown)}")
        if (TEXT in reads) != (text_mode is not None):
            raise ValueError(f"method {name!r}: reading {TEXT!r} and giving a text_mode go together")

    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"compression method {name!r} registered twice")
        _REGISTRY[name] = MethodSpec(name, fn, dict(defaults or {}), reads, text_mode, takes_budget,
                                     budget_tokens, after_projector, stage)
        return fn
    return deco


def get_method(name) -> MethodSpec:
    from paddle_rc.compression import methods  # noqa: F401  (populates the registry)
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown compression method {name!r}; choose one of "
                         f"{', '.join(available_methods())}") from None


def available_methods():
    from paddle_rc.compression import methods  # noqa: F401
    return sorted(_REGISTRY)
