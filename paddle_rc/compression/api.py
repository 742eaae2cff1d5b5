"""compress() (design contract 2) and its traceable core compress_tensors()."""
from __future__ import annotations

import math
import numbers
import os

import paddle

from paddle_rc.compression.methods.common import MethodInputs
from paddle_rc.compression.ops import as_f32
from paddle_rc.compression.registry import get_method
from paddle_rc.compression.result import CompressionResult

_CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           "configs", "methods")


def method_defaults(method):
    """The default options of a method (what configs/methods/<method>.yml holds)."""
    return dict(get_method(method).defaults)


# Lower bounds of options whose default alone does not say it (an int option is otherwise >= 1).
_AT_LEAST_ZERO = {"seed", "dominant", "contextual", "text_weight"}
_SIGNS = {"text_sign"}


def check_compression(method, budget=None, options=None) -> None:
    """Refuse, in one line, a method, budget or option the methods cannot honour: unknown names,
    a budget that is not a positive whole number, options of the wrong type or out of range
    (an option's type is its default's in configs/methods/<method>.yml)."""
    from paddle_rc.compression.registry import available_methods
    from paddle_rc.errors import UserError

    if method not in available_methods():
        raise UserError(f"unknown compression method {method!r}; choose from: {', '.join(available_methods())}")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, numbers.Integral)
                               or budget < 1):
        raise UserError(f"budget must be a positive whole number of visual tokens, got {budget!r}")
    if budget is not None and not get_method(method).takes_budget:
        raise UserError(f"method {method!r} keeps every visual token, so a budget ({budget}) would be "
                        "ignored; drop the budget or choose a compression method")
    defaults = method_defaults(method)
    options = dict(options or {})
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise UserError(f"method {method!r} has no option(s) {', '.join(unknown)}; "
                        f"it takes: {', '.join(sorted(defaults)) or 'none'}")
    for key, value in options.items():
        problem = _option_problem(key, value, defaults[key])
        if problem:
            raise UserError(f"method {method!r} option {key}: {problem}, got {value!r}")
    try:  # options that choose inputs (e.g. rc's p_source) are checked where the method declares them
        get_method(method).inputs(dict(defaults, **options))
    except ValueError as e:
        raise UserError(str(e)) from None


def _option_problem(key, value, default):
    if default is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "expected true or false"
    if isinstance(default, numbers.Integral):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            return "expected a whole number"
        if key in _SIGNS:
            return None if value in (-1, 1) else "expected 1 or -1"
        low = 0 if key in _AT_LEAST_ZERO else 1
        return None if value >= low else f"expected at least {low}"
    if isinstance(default, numbers.Real):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            return "expected a number"
        if key == "ratio":
            return None if 0 < value <= 1 else "expected a fraction in (0, 1]"
        return None if value >= 0 or key not in _AT_LEAST_ZERO else "expected 0 or more"
    if isinstance(default, str):
        return None if isinstance(value, str) else "expected text"
    return None


def load_method_preset(method, path=None):
    """Read configs/methods/<method>.yml -> {"method", "budget", "options"}."""
    import yaml

    path = path or os.path.join(_CONFIG_DIR, f"{method}.yml")
    with open(path, "r", encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    get_method(data.get("method", method))
    data.setdefault("budget", None)
    data["options"] = dict(data.get("options") or {})
    return data


def _check_budget(budget, n):
    if budget is None:
        return None
    if isinstance(budget, bool) or int(budget) != budget or int(budget) < 1:
        raise ValueError(f"budget must be a positive integer token count, got {budget!r}")
    return min(int(budget), n)


# Under to_static the core is traced as is, not AST-converted: it has no tensor-dependent
# Python control flow by design, and conversion would re-run the registry decorators.
@paddle.jit.not_to_static
def compress_tensors(method, F, Q, K, P=None, t=None, has_text=None, budget=None, options=None,
                     trim=True):
    """Traceable core of `compress`: returns the tuple
    (tokens, lengths, kinds, sources, stage, members, extra_members) (see CompressionResult).

    No host round trip and no Python value derived from tensor data, so it can run under
    paddle.jit.to_static with a dynamic batch. `method`, `budget`, `options` and the presence
    of P/t are static; N, C (and D) come from static shapes. Q/K may be None for methods that
    do not read them (none, random, divprune, visionzip). has_text: [B] bool (default: all
    True when t is given). With trim=False tokens keep the full width N+1 (static shape).
    """
    spec = get_method(method)
    if spec.stage != "vision":
        raise ValueError(f"method {method!r} prunes inside the LLM, not the vision tower's output; "
                         "run it through the model (set_compression)")
    opts = dict(spec.defaults)
    opts.update(options or {})
    n = F.shape[1]
    if Q is not None and K is not None and (Q.shape[1] != n + 1 or K.shape[1] != n + 1):
        raise ValueError(f"Q and K must be [B, 1+N, C] with N={n} (CLS first), got "
                         f"{list(Q.shape)} and {list(K.shape)}")
    budget = _check_budget(budget, n) if spec.takes_budget else None
    out_dtype = F.dtype
    if P is not None and t is not None:
        P, t = as_f32(P), as_f32(t)
        if has_text is None:
            has_text = paddle.ones_like(t[:, 0], dtype="bool")
    else:
        P = t = None
    if has_text is None:
        has_text = paddle.zeros_like(F[:, 0, 0], dtype="bool")
    Q = None if Q is None else as_f32(Q)
    K = None if K is None else as_f32(K)
    x = MethodInputs(as_f32(F), Q, K, P, t, has_text.astype("bool"), budget,
                     opts, out_dtype, trim=trim)
    return spec.fn(x)


def _has_text_tensor(has_text, batch):
    if has_text is None or isinstance(has_text, paddle.Tensor):
        return has_text
    if isinstance(has_text, bool):
        has_text = [has_text] * batch
    return paddle.to_tensor(list(has_text), dtype="bool")


def compress(method, F, Q, K, P=None, t=None, budget=None, **options):
    """Compress LLaVA's visual tokens (design contract 2).

    F [B,N,C] features of hidden_states[-2] (no CLS); Q, K [B,1+N,C] last-layer q/k
    projections (CLS first); P [B,N,D] projected last-layer patch tokens; t [B,D] question
    embedding (rc methods only; t=None means no text: text recovery is skipped and the merge
    uses a text score of 0). budget: exact tokens per image (clamped to N).
    options: the method's options (see configs/methods/<method>.yml), plus
      has_text: bool, list of bools or [B] bool tensor — False for samples whose question is
                empty (their text stage is skipped as with t=None);
      cls_attn, metric: the extra VisionZip inputs (see methods/visionzip.py).
    Returns a CompressionResult.
    """
    spec = get_method(method)
    if (P is None) != (t is None) and spec.uses_text:
        raise ValueError("pass both P and t, or neither (no text: text recovery is skipped)")
    has_text = _has_text_tensor(options.pop("has_text", None), int(F.shape[0]))
    n = F.shape[1]
    notes = []
    budget_used = None
    if budget is not None:
        if not spec.takes_budget:
            _check_budget(budget, n)
            notes.append(f"budget {budget} ignored: method '{method}' keeps all {n} tokens")
        else:
            budget_used = _check_budget(budget, n)
            if budget_used < int(budget):
                notes.append(f"budget {budget} > N={n}: clamped to {n}")
            if spec.budget_tokens is not None and spec.budget_tokens(budget_used) != budget_used:
                notes.append(f"budget {budget_used}: method '{method}' emits "
                             f"{spec.budget_tokens(budget_used)} tokens")
    text_note = None
    if spec.uses_text:
        if t is None:
            notes.append("text recovery skipped: no text embedding (t is None)")
        else:
            text_note = "text recovery skipped: empty question"
    core = compress_tensors(method, F, Q, K, P, t, has_text, budget_used, options)
    if t is not None and has_text is None:
        has_text = paddle.ones([int(F.shape[0])], dtype="bool")
    return CompressionResult(core, method, budget=budget_used, notes=notes, has_text=has_text,
                             text_note=text_note)
