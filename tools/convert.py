"""Convert a llava-hf or original LLaVA checkpoint (+ OpenAI CLIP) into a paddle_rc checkpoint.

    python tools/convert.py --src llava-1.5-7b-hf --clip clip-vit-large-patch14-336 --dst ckpt/llava7b
"""
import os
import sys

# This checkout's paddle_rc, as every tool does (not another installed copy).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddle_rc.cli import ToolParser, add_threads_arg, apply_threads, run  # noqa: E402


def main(argv=None) -> int:
    ap = ToolParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--src", required=True, help="llava-hf or original (liuhaotian) LLaVA checkpoint directory")
    ap.add_argument("--clip", help="OpenAI CLIP (CLIPModel) directory: text tower, projections, and the "
                                   "vision tower for original LLaVA checkpoints")
    ap.add_argument("--dst", required=True, help="output directory")
    ap.add_argument("--shard-size", default="2GB", help="maximum bytes per output file (default 2GB)")
    ap.add_argument("--dtype", default="keep", choices=["keep", "float16", "float32", "bfloat16"],
                    help="stored dtype; keep = the LLaVA checkpoint's dtype")
    add_threads_arg(ap)
    args = ap.parse_args(argv)
    apply_threads(args)

    from tqdm import tqdm

    from paddle_rc.convert import convert

    bar = None

    def progress(n, total):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="B", unit_scale=True, desc="converting", file=sys.stderr)
        bar.update(n)

    try:
        result = convert(args.src, args.clip, args.dst, shard_size=args.shard_size, dtype=args.dtype,
                         progress=progress)
    finally:
        if bar is not None:
            bar.close()
    print(result.summary())
    return 0


if __name__ == "__main__":
    run(main)
