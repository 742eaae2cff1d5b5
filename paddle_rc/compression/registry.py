"""Method registry: `@register("name", defaults={...})` on a core function."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict


@dataclass
class MethodSpec:
    name: str
    fn: Callable
    defaults: Dict = field(default_factory=dict)
    uses_text: bool = False      # reads P/t (so text-skip notes apply)
    takes_budget: bool = True    # False: a budget is ignored (method `none`)


_REGISTRY: Dict[str, MethodSpec] = {}


def register(name, defaults=None, uses_text=False, takes_budget=True):
    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"compression method {name!r} registered twice")
        _REGISTRY[name] = MethodSpec(name, fn, dict(defaults or {}), uses_text, takes_budget)
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
