"""tools/serve.py as a child process on a loopback port it picks itself (benchmarks and tests)."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVE = os.path.join(ROOT, "tools", "serve.py")


class ServerProcess:
    """Start `tools/serve.py ARGS --host 127.0.0.1 --port 0`; `url` is where it listens once started."""

    def __init__(self, *args: str, env: dict = None, timeout: float = 180):
        env = dict(os.environ if env is None else env)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        cmd = [sys.executable, SERVE, *args, "--host", "127.0.0.1", "--port", "0"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self.log: list = []
        self.url = None
        deadline = time.time() + timeout
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line)
            if " on http://127.0.0.1:" in line:
                self.url = line.rsplit(" on ", 1)[1].strip().rstrip("/")
                break
        if self.url is None:
            self.stop()
            raise RuntimeError("tools/serve.py did not start:\n" + "".join(self.log[-20:]))
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
