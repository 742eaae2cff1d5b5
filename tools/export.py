"""Export a checkpoint to Paddle Inference graphs (Paddle 3.x PIR: .json + .pdiparams) for deployment.

    python tools/export.py --model ckpt/llava-1.5-7b --out deploy/llava-rc --method rc
    python tools/export.py --out deploy/demo-rc --method rc            # the built-in demo model
    python tools/export.py --model ckpt/llava-1.5-7b --out deploy/llava-rc-int8 --quant int8
    python tools/infer.py --deploy deploy/llava-rc --image cat.jpg --question "..."

The compression method, budget and options are fixed in the exported vision graph; export once per
setting you want to serve. The output directory holds vision / prefill / decode graphs, the token
embedding table, config.json, both tokenizers and manifest.json (what was exported and how).
"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddle_rc.cli import add_config_args, parse_key_values, parse_with_config, run  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="checkpoint directory (tools/convert.py); default: built-in demo model")
    p.add_argument("--out", required=True, help="output directory (must be new or empty, or use --overwrite)")
    p.add_argument("--method", default="rc", help="compression method baked into the vision graph")
    p.add_argument("--budget", type=int, help="exact visual tokens per image (default: the method's adaptive rule)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option, e.g. --option topk=16 (repeatable; see configs/methods/)")
    p.add_argument("--quant", metavar="PRESET",
                   help="quantize the LLM's weights first: int8, int4, int8-g128, int4-g64, int4-g128, each "
                        "optionally with -clip (same as tools/quantize.py, then export)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export in --out")
    p.add_argument("--check", action="store_true",
                   help="after exporting, load the graphs with paddle.inference and answer one demo question")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    add_config_args(p)
    return p


def main(argv=None) -> int:
    args = parse_with_config(build_parser(), argv)
    from paddle_rc.errors import UserError
    from paddle_rc.export import export_model

    model_dir = args.model
    if model_dir is None:
        from paddle_rc.demo import demo_checkpoint

        model_dir = demo_checkpoint()
        print("note: exporting the built-in demo model (random weights); pass --model DIR for a real one",
              file=sys.stderr)
    elif not os.path.isdir(model_dir):
        raise UserError(f"model directory not found: {model_dir}")
    t0 = time.perf_counter()
    quiet = args.json
    with tempfile.TemporaryDirectory(prefix="paddle_rc-quant-") as scratch:
        if args.quant:
            from paddle_rc.quant import QuantConfig
            from paddle_rc.quant.checkpoint import quantize_checkpoint

            quantized = os.path.join(scratch, "checkpoint")
            quantize_checkpoint(model_dir, quantized, QuantConfig.preset(args.quant))
            model_dir = quantized
        manifest = export_model(model_dir, args.out, method=args.method, budget=args.budget,
                                options=parse_key_values(args.option), overwrite=args.overwrite,
                                progress=None if quiet else (lambda msg: print(msg, file=sys.stderr)))
    seconds = time.perf_counter() - t0
    if args.check:
        from paddle_rc.demo import demo_image
        from paddle_rc.predictor import build_predictor

        out = build_predictor(deploy_dir=args.out).answer(demo_image(), "What is in this image?", max_new_tokens=4)
        manifest["check"] = {"visual_tokens": out["visual_tokens"], "answer": out["text"]}
    if args.json:
        print(json.dumps(manifest, ensure_ascii=False))
        return 0
    comp = manifest["compression"]
    size = sum(manifest["files"].values()) / 2 ** 20
    print(f"exported {os.path.abspath(args.out)} in {seconds:.1f}s ({size:.1f} MiB): method {comp['method']}"
          + ("" if comp["budget"] is None else f", budget {comp['budget']}"))
    for name, g in manifest["graphs"].items():
        ins = ", ".join(f"{i['name']}{i['shape']}" for i in g["inputs"])
        print(f"  {name:8s} ({ins}) -> {', '.join(g['outputs'])}")
    if "check" in manifest:
        print(f"check: {manifest['check']['visual_tokens']} visual tokens, answer {manifest['check']['answer']!r}")
    print(f"run it: python tools/infer.py --deploy {args.out} --image IMAGE --question '...'")
    return 0


if __name__ == "__main__":
    run(main)
