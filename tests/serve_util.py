"""Start tools/serve.py on a free loopback port, and ask tools/infer.py the same questions."""
import base64
import contextlib
import io
import json
import os
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")


class Server:
    """tools/serve.py in a subprocess on 127.0.0.1 (port 0: the server binds a free port and prints it)."""

    def __init__(self, *args, timeout=180):
        env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        cmd = [sys.executable, os.path.join(TOOLS, "serve.py"), "--host", "127.0.0.1", "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                                     cwd=ROOT)
        self.log = []
        deadline = time.time() + timeout
        self.url = None
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
            raise RuntimeError("server did not start:\n" + "".join(self.log))
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def data_url(image, fmt="PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def user_message(url, text):
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": text}]}]


def infer_json(argv) -> dict:
    """tools/infer.py --json, run in this process (its import cost paid once)."""
    if TOOLS not in sys.path:
        sys.path.insert(0, TOOLS)
    import infer

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert infer.main(list(argv) + ["--json"]) == 0
    return json.loads(out.getvalue())
