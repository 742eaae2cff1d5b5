"""paddle_rc's C++ operators (csrc/): build once per machine, load, or say why not.

One library holds them all: the weight-only int8/int4 matmul (paddle_rc.quant) and the fused
float32 inference ops (rc_softmax, rc_rope, rc_swiglu, rc_quick_gelu; paddle_rc.models.fused). The
sources are compiled with the system C++ compiler through ``paddle.utils.cpp_extension`` the first
time an operator is wanted, into ``<PADDLE_RC_HOME>/ops/<hash>/`` (hash of the sources, the Paddle
and Python versions and the compiler), so later processes only load the library. When it cannot be
built (no compiler, unsupported platform) or ``PADDLE_RC_NO_KERNEL=1`` is set, ``library()`` is
False and every caller runs its pure-Paddle path; the reason is printed once on stderr and kept in
``status()``.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from typing import Callable, Optional

from paddle.jit import not_to_static

MODULE_NAME = "paddle_rc_ops"
CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
# Every operator the library registers (exported programs name them; the deployed runner checks them).
OPS = ("rc_weight_only_matmul", "rc_softmax", "rc_rope", "rc_swiglu", "rc_quick_gelu")
SOURCES = ("weight_only_matmul.cc", "wo_avx2.cc", "wo_avx512.cc", "fused_ops.cc", "fused_avx2.cc", "fused_avx512.cc")
HEADERS = ("wo_kernels.h", "wo_simd_impl.h", "fused_kernels.h")

_state: dict = {"loaded": False, "tried": False, "reason": None, "path": None, "disabled": 0}


def _paddle_libs() -> str:
    import paddle

    return os.path.join(os.path.dirname(paddle.__file__), "libs")


def _flags() -> tuple:
    """(compile flags, link flags). Links the OpenMP runtime and MKL that Paddle ships, so the
    operator shares Paddle's threads instead of starting a second pool."""
    libs = _paddle_libs()
    cflags = ["-O3", "-fopenmp", "-Wno-unused-function"]
    ldflags = [f"-L{libs}", f"-Wl,-rpath,{libs}"]
    if os.path.isfile(os.path.join(libs, "libiomp5.so")):
        ldflags.append("-liomp5")
    else:
        ldflags.append("-fopenmp")
    if os.path.isfile(os.path.join(libs, "libmklml_intel.so")):
        cflags.append("-DRC_WITH_MKL")
        ldflags.append("-l:libmklml_intel.so")
    return cflags, ldflags


def _compiler_version() -> str:
    cxx = os.environ.get("CXX", "c++")
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout.split("\n")[0]
    except (OSError, subprocess.SubprocessError):
        return ""


def build_key() -> str:
    import paddle

    h = hashlib.sha256()
    for name in SOURCES + HEADERS:
        with open(os.path.join(CSRC, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read())
    cflags, ldflags = _flags()
    for part in (paddle.__version__, platform.python_version(), platform.machine(), _compiler_version(),
                 " ".join(cflags), " ".join(ldflags)):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def cache_dir() -> str:
    from paddle_rc.demo import cache_root

    return os.path.join(cache_root(), "ops", build_key())


def _library(directory: str) -> str:
    return os.path.join(directory, MODULE_NAME, MODULE_NAME + ".so")


@contextlib.contextmanager
def _stdout_to_stderr():
    """cpp_extension and the compiler it runs print on stdout, which belongs to the tools' --json
    output: send it, at the file-descriptor level (child processes included), to stderr."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _compile(target: str) -> None:
    """Build into a fresh sibling directory and rename it into place, so a half-built library is
    never loaded, and a concurrent build by another process is simply reused."""
    from paddle.utils.cpp_extension import load

    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(target) + ".tmp-", dir=parent)
    try:
        cflags, ldflags = _flags()
        with _stdout_to_stderr():
            load(name=MODULE_NAME, sources=[os.path.join(CSRC, s) for s in SOURCES],
                 extra_cxx_cflags=cflags, extra_ldflags=ldflags,
                 extra_include_paths=[CSRC], build_directory=tmp, verbose=False)
        if not os.path.isfile(_library(tmp)):
            raise RuntimeError(f"the build wrote no {MODULE_NAME}.so")
        try:
            os.rename(tmp, target)
        except OSError:
            if not os.path.isfile(_library(target)):
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def _register(library: str) -> None:
    """Register the operator with Paddle (dynamic mode, to_static tracing and Paddle Inference all
    look operators up by name in one registry); a second registration in a process is a no-op."""
    from paddle.utils.cpp_extension import load_op_meta_info_and_register_op

    with _stdout_to_stderr():
        load_op_meta_info_and_register_op(library)


@not_to_static  # plain Python (build, cache lookup) even inside a traced forward
def library() -> bool:
    """Whether paddle_rc's operators are registered in this process (building them if need be)."""
    if _state["disabled"]:
        return False
    if _state["tried"]:
        return _state["loaded"]
    _state["tried"] = True
    try:
        if os.environ.get("PADDLE_RC_NO_KERNEL") == "1":
            raise RuntimeError("PADDLE_RC_NO_KERNEL=1")
        if platform.machine().lower() not in ("x86_64", "amd64") or not sys.platform.startswith("linux"):
            raise RuntimeError(f"the kernels are written for x86-64 Linux, not {platform.machine()} {sys.platform}")
        target = cache_dir()
        if not os.path.isfile(_library(target)):
            sys.stderr.write(f"paddle_rc: building its C++ operators into {target} "
                             "(once per machine, about a minute)\n")
            _compile(target)  # cpp_extension's load registers the operators as well
        else:
            _register(_library(target))
        _state["loaded"] = True
        _state["path"] = _library(target)
    except Exception as exc:  # any failure means: run the portable paths, and say so once
        lines = str(exc).strip().splitlines()
        _state["reason"] = lines[-1] if lines else type(exc).__name__
        sys.stderr.write("paddle_rc: its C++ operators are unavailable "
                         f"({_state['reason']}); int8/int4 layers use the slower pure-Paddle path "
                         "(the float weight is rebuilt on every call) and the fused inference ops "
                         "Paddle's own. Building them needs a C++ compiler (g++ 8 or newer) on "
                         "x86-64 Linux.\n")
    return _state["loaded"]


@not_to_static  # called as is while tracing: _run_custom_op adds the operator to the program
def run(name: str, *args):
    """Run operator `name` on tensors and attributes (call library() first)."""
    from paddle import _C_ops

    return _C_ops._run_custom_op(name, *args)[0]


@contextlib.contextmanager
def disabled():
    """Within this block every caller runs its pure-Paddle path: for comparisons and for graphs
    that must not need the operators."""
    _state["disabled"] += 1
    try:
        yield
    finally:
        _state["disabled"] -= 1


def status() -> dict:
    """Whether the operators are in use, their library path or why not (for reports and manifests)."""
    library()
    return {"kernel": "cpp" if _state["loaded"] else "paddle",
            "library": _state["path"], "reason": _state["reason"]}
