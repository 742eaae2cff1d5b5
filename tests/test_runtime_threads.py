"""Thread settings seen by processes that paddle_rc starts (tools run by benchmarks, tests, servers)."""
import os
import subprocess
import sys

from paddle_rc.runtime import physical_cores

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARENT = r"""
import os, subprocess, sys
import paddle_rc
child = "from paddle_rc import runtime; print(runtime.default_threads())"
print(os.environ.get("OMP_NUM_THREADS"))
print(subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True).stdout.strip())
"""


def _run(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "PADDLE_RC_NO_TUNING")}
    env.update(extra, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", PARENT], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()[-2:]


def test_children_do_not_inherit_paddles_one_thread():
    """Paddle's import writes OMP_NUM_THREADS=1 into the environment when it is unset; a child of a
    paddle_rc process took that for the user's choice and computed on one thread."""
    parent_env, child_threads = _run()
    assert parent_env == "None"
    assert int(child_threads) == physical_cores()


def test_the_users_thread_count_reaches_the_children():
    assert _run(OMP_NUM_THREADS="1") == ["1", "1"]
