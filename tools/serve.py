"""Serve LLaVA with visual-token compression over HTTP: OpenAI's chat-completions API and a web page.

    python tools/serve.py                                    # demo model, http://127.0.0.1:8000/
    python tools/serve.py --model ckpt/llava-1.5-7b --method rc --max-batch-size 8
    python tools/serve.py --deploy deploy/llava-rc --port 0  # port 0: a free port, printed at start

On a checkpoint (--model) each request may choose its compression ("compression": {"method": "rc",
"budget": 64}); a deployment (--deploy) serves the compression it was exported with.
"""
import argparse
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddle_rc.cli import add_threads_arg, apply_threads, parse_key_values, run  # noqa: E402
from paddle_rc.positions import POSITIONS  # noqa: E402


def _size(text: str) -> int:
    units = {"KB": 2 ** 10, "MB": 2 ** 20, "GB": 2 ** 30}
    t = text.strip().upper()
    for unit, mult in units.items():
        if t.endswith(unit):
            return int(float(t[:-len(unit)]) * mult)
    return int(t)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="checkpoint directory (tools/convert.py); default: the built-in demo model "
                     "(trained on the synthetic task)")
    src.add_argument("--deploy", help="exported deployment directory (tools/export.py)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed)")
    p.add_argument("--method", help="default compression for requests that name none (default rc; "
                                    "with --deploy: the exported one)")
    p.add_argument("--budget", type=int, help="default visual-token budget")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="default method option")
    p.add_argument("--positions", choices=POSITIONS, default="compact",
                   help="position ids of the text after a compressed image, for every request (docs/positions.md)")
    p.add_argument("--conv-mode", help="vicuna_v1 | llava_v1 | llava_hf (default: the checkpoint's)")
    p.add_argument("--max-batch-size", type=int, default=8, help="sequences decoded together (1: no batching)")
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests before answering 503")
    p.add_argument("--batch-window-ms", type=float, default=5.0,
                   help="when idle, wait this long for more requests to start together")
    p.add_argument("--max-tokens", type=int, default=256, help="tokens to generate when a request sets none")
    p.add_argument("--max-image-bytes", default="20MB", help="largest image accepted (e.g. 20MB)")
    p.add_argument("--max-image-pixels", type=int, default=50_000_000)
    p.add_argument("--allow-local-files", metavar="DIR",
                   help="let image_url name files under DIR (default: only data: URLs)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    add_threads_arg(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    apply_threads(args)
    from paddle_rc.errors import UserError

    for name in ("max_batch_size", "max_queue", "max_tokens", "max_image_pixels"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if args.batch_window_ms < 0:
        raise UserError("--batch-window-ms must be 0 or more")
    try:
        max_image_bytes = _size(args.max_image_bytes)
    except ValueError:
        raise UserError(f"--max-image-bytes: expected a size like 20MB, got {args.max_image_bytes!r}") from None
    for flag, path in (("--model", args.model), ("--deploy", args.deploy)):
        if path and not os.path.isdir(path):
            raise UserError(f"{flag}: directory not found: {path}")
    if args.allow_local_files and not os.path.isdir(args.allow_local_files):
        raise UserError(f"--allow-local-files: directory not found: {args.allow_local_files}")
    try:
        import uvicorn

        from paddle_rc.serving.app import create_app
    except ImportError as e:
        raise UserError(f"serving needs fastapi and uvicorn ({e}); pip install -r requirements.txt") from None
    from paddle_rc.predictor import build_predictor
    from paddle_rc.serving.protocol import Limits

    sock = _listen(args.host, args.port)  # before loading the model: a taken port fails fast
    method = args.method if args.method or args.deploy else "rc"
    try:
        predictor = build_predictor(args.model, args.deploy, method=method, budget=args.budget,
                                    conv_mode=args.conv_mode, threads=args.threads, positions=args.positions,
                                    **parse_key_values(args.option))
    except BaseException:
        sock.close()
        raise
    app = create_app(predictor, max_batch_size=args.max_batch_size, max_queue=args.max_queue,
                     batch_window=args.batch_window_ms / 1000, default_max_tokens=args.max_tokens,
                     limits=Limits(max_image_bytes, args.max_image_pixels, args.allow_local_files),
                     threads=args.threads)
    host, port = sock.getsockname()[:2]
    spec = predictor.compression
    print(f"serving {predictor.model_id} ({predictor.kind}, compression {spec.method}"
          + ("" if spec.budget is None else f" budget {spec.budget}")
          + (", a demo model trained on the synthetic task: it answers questions about such scenes only"
             if predictor.is_demo else "")
          + f") on http://{host}:{port}/", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def _listen(host: str, port: int) -> socket.socket:
    from paddle_rc.errors import UserError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.listen(256)
    sock.set_inheritable(True)
    return sock


if __name__ == "__main__":
    run(main)
