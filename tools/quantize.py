"""Write a weight-only int8 / int4 copy of a converted checkpoint, loadable by from_pretrained.

    python tools/quantize.py --model ckpt/llava7b --dst ckpt/llava7b-int8 --bits 8
    python tools/quantize.py --model ckpt/llava7b --dst ckpt/llava7b-int4 --bits 4 --group-size 128 [--clip-search]

The LLM's Linear layers are quantized; lm_head stays float unless --quantize-lm-head, the vision
side unless --quantize-vision (see paddle_rc.quant.config for why).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddle_rc.cli import ToolParser, add_config_args, parse_with_config, progress_bar, run  # noqa: E402
from paddle_rc.errors import UserError  # noqa: E402


def build_parser():
    p = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="converted (float) checkpoint directory")
    p.add_argument("--dst", required=True, help="output checkpoint directory (must not exist)")
    # No argparse `choices`: a bad value should be the tools' usual one-line error, not usage text.
    p.add_argument("--bits", type=int, default=8, help="8 or 4 (default 8)")
    p.add_argument("--group-size", type=int, default=-1,
                   help="64 or 128 for group-wise scales; -1 (default) = one scale per output channel")
    p.add_argument("--quantize-vision", action="store_true",
                   help="also quantize the CLIP towers, projections and the projector")
    p.add_argument("--quantize-lm-head", action="store_true",
                   help="also quantize lm_head (at 7B: 0.53 GB of float32 read for every new token)")
    p.add_argument("--clip-search", action="store_true",
                   help="per column/group, search the clipping ratio with the least rounding error "
                        "(helps int4; a few times slower to quantize)")
    p.add_argument("--shard-size", default="2GB", help="maximum bytes per output file (default 2GB)")
    p.add_argument("--overwrite", action="store_true", help="replace --dst if it is a checkpoint")
    p.add_argument("--json", metavar="PATH", help="also write the byte counts as JSON")
    add_config_args(p)
    return p


def main(argv=None) -> int:
    args = parse_with_config(build_parser(), argv)
    from paddle_rc.quant.checkpoint import quantize_checkpoint
    from paddle_rc.quant.config import DEFAULT_SKIP, QuantConfig

    try:
        bits, group = int(args.bits), int(args.group_size)
    except (TypeError, ValueError):
        raise UserError(f"--bits and --group-size must be integers, got {args.bits!r}, "
                        f"{args.group_size!r}") from None
    qc = QuantConfig(weight_bits=bits,
                     weight_quantize_type="channel_wise_abs_max" if group == -1 else "group_wise_abs_max",
                     group_size=group, quantize_vision=bool(args.quantize_vision),
                     clip_search=bool(args.clip_search),
                     skip=[p for p in DEFAULT_SKIP if not (args.quantize_lm_head and p == "lm_head")])
    progress, close = progress_bar("quantizing", unit="tensor")
    try:
        result = quantize_checkpoint(args.model, args.dst, qc, shard_size=args.shard_size,
                                     overwrite=bool(args.overwrite), progress=progress)
    finally:
        close()
    print(result.summary())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result.to_dict(), f, indent=2)
    return 0


if __name__ == "__main__":
    run(main)
