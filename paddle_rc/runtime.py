"""CPU math settings applied before Paddle computes anything, so every entry point runs at full speed.

Two of Paddle 3.3's CPU defaults cost a factor of 2-5 on a matmul-bound model:
- dynamic mode computes with one math thread unless OMP_NUM_THREADS is set;
- the bundled MKL takes a generic slow path on AMD CPUs unless MKL_DEBUG_CPU_TYPE=5 is set (it is read
  when MKL first runs, so setting it after `import paddle` but before the first op still works).
A third costs 5-50% depending on the op mix: Paddle's CPU tensors come straight from glibc malloc, which
hands every block above its mmap threshold back to the kernel on free, so each op writing a large
output (attention scores, MLP activations) pays for fresh zeroed pages. Keeping freed memory in the
process (no mmap'd blocks, no trimming) removes those page faults: one ViT-L layer went from ~10,000
to ~1,000 minor faults per call, a 7B-width LLaMA layer at 636 tokens from ~74,000 to ~1,100.
A value the user set is never overridden. On Intel CPUs the MKL variable would only pin MKL to its
AVX2 path, so it is left alone there. PADDLE_RC_NO_TUNING=1 turns all of this off (then Paddle's
own defaults apply).
"""
from __future__ import annotations

import os
import sys
from typing import Optional

_configured_threads: Optional[int] = None
# OMP_NUM_THREADS as the user left it: Paddle's import overwrites an unset value with "1".
_paddle_imported_first = "paddle" in sys.modules
_user_env_threads = None if _paddle_imported_first else os.environ.get("OMP_NUM_THREADS")


def physical_cores() -> int:
    """Physical cores this process may run on (SMT siblings counted once)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        base = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
        try:
            with open(base + "physical_package_id") as f:
                pkg = f.read().strip()
            with open(base + "core_id") as f:
                core = f.read().strip()
        except OSError:
            return len(cpus) or 1
        cores.add((pkg, core))
    return max(1, len(cores))


def cpu_flags() -> frozenset:
    """The instruction-set flags /proc/cpuinfo lists (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or ""


def is_amd() -> bool:
    return "AMD" in cpu_vendor().upper()


def default_threads() -> int:
    """The thread count in force: --threads, else the user's OMP_NUM_THREADS, else all physical cores."""
    if _configured_threads:
        return _configured_threads
    if os.environ.get("PADDLE_RC_NO_TUNING") == "1":
        return int(os.environ.get("OMP_NUM_THREADS", "1") or 1)
    if _user_env_threads and _user_env_threads.isdigit() and int(_user_env_threads) > 0:
        return int(_user_env_threads)
    return physical_cores()


def configure(threads: Optional[int] = None) -> dict:
    """Apply the settings; `threads` (a tool's --threads) wins over OMP_NUM_THREADS and the default.
    Imports Paddle (the thread count is set through it). Returns what is in force, for reports."""
    global _configured_threads
    if threads is not None:
        if int(threads) < 1:
            from paddle_rc.errors import UserError

            raise UserError(f"--threads must be at least 1, got {threads}")
        _configured_threads = int(threads)
    elif os.environ.get("PADDLE_RC_NO_TUNING") == "1":
        return settings()
    if os.environ.get("PADDLE_RC_NO_TUNING") != "1" and "MKL_DEBUG_CPU_TYPE" not in os.environ and is_amd():
        os.environ["MKL_DEBUG_CPU_TYPE"] = "5"
    if os.environ.get("PADDLE_RC_NO_TUNING") != "1":
        keep_freed_memory()
    # Not through OMP_NUM_THREADS: Paddle's import prints a warning for any value above 1, and reads
    # the variable only once. Its own setter covers OpenMP and MKL alike.
    import paddle  # noqa: F401
    from paddle.base import core

    if not _paddle_imported_first and _user_env_threads is None and os.environ.get("OMP_NUM_THREADS") == "1":
        # Paddle's import wrote "1" into the environment, which every process started from here
        # inherits as if the user had set it: a tool run by a benchmark, a test or a server then
        # computed on one thread (seven-b's tools/infer.py runs: 7B prefill 143 s instead of ~60 s).
        del os.environ["OMP_NUM_THREADS"]
    core.set_num_threads(default_threads())
    return settings()


def restore_threads() -> None:
    """Put the dynamic mode's math thread count back after a Paddle Inference run. A predictor's
    run ends by setting the calling thread's OpenMP/MKL threads to 1 (Paddle does this on purpose,
    for services that run predictors on many threads), so every dynamic op after it ran on one
    thread: the ViT-L tower took 4.2 s instead of 2.3 s after one exported-graph run in the same
    process (measured; set_num_threads afterwards brought it back)."""
    from paddle.base import core

    core.set_num_threads(default_threads())


_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_TOP_PAD_")
_malloc_tuned = False


def keep_freed_memory() -> bool:
    """glibc only: serve every block from the heap and never trim it, so freed tensor memory is
    reused instead of being unmapped and faulted in again. The cost: the process keeps its peak
    heap (about one forward pass of activations above the weights) until it exits. Skipped when the
    user tunes malloc (MALLOC_* or GLIBC_TUNABLES) or on another C library."""
    global _malloc_tuned
    if _malloc_tuned:
        return True
    if not sys.platform.startswith("linux") or "GLIBC_TUNABLES" in os.environ \
            or any(k in os.environ for k in _MALLOC_ENV):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    # The trim threshold is a C int: the largest value disables trimming in practice.
    _malloc_tuned = bool(mallopt(m_trim_threshold, 2**31 - 1)) and bool(mallopt(m_mmap_max, 0))
    return _malloc_tuned


def release_freed_memory() -> None:
    """Hand the heap's free memory back to the kernel now (glibc malloc_trim). For a process that
    drops one large model before building another: with keep_freed_memory in force, the first
    model's pages would otherwise stay resident beside the second's."""
    if not _malloc_tuned:
        return
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)


def settings() -> dict:
    return {"threads": default_threads(), "MKL_DEBUG_CPU_TYPE": os.environ.get("MKL_DEBUG_CPU_TYPE"),
            "cpu_vendor": cpu_vendor(), "malloc_keeps_freed_memory": _malloc_tuned}
