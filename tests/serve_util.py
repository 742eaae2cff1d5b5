"""Start tools/serve.py on a free loopback port, and ask tools/infer.py the same questions."""
import base64
import contextlib
import io
import json
import os
import sys

from paddle_rc.serving.process import ServerProcess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")


class Server(ServerProcess):
    """tools/serve.py ARGS on 127.0.0.1 (a free port the server picks), one math thread unless told."""

    def __init__(self, *args):
        super().__init__(*args, env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))


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
