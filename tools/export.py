"""Export a checkpoint to Paddle Inference graphs (Paddle 3.x PIR: .json + .pdiparams) for deployment.

    python tools/export.py --model ckpt/llava-1.5-7b --out deploy/llava-rc --method rc
    python tools/export.py --out deploy/demo-rc --method rc            # the built-in demo model (synthetic task)
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

from paddle_rc.cli import (ToolParser, add_config_args, parse_key_values, parse_with_config,  # noqa: E402
                           progress_bar, run)


def build_parser():
    p = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="checkpoint directory (tools/convert.py); default: the built-in demo model "
                   "(trained on the synthetic task)")
    p.add_argument("--out", required=True, help="output directory (must be new or empty, or use --overwrite)")
    p.add_argument("--method", default="rc", help="compression method baked into the vision graph")
    p.add_argument("--budget", type=int, help="exact visual tokens per image (default: the method's adaptive rule)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option, e.g. --option topk=16 (repeatable; see configs/methods/)")
    p.add_argument("--quant", metavar="PRESET",
                   help="quantize the LLM's weights first: int8, int4, int8-g128, int4-g64, int4-g128, each "
                        "optionally with -clip (same as tools/quantize.py, then export)")
    p.add_argument("--portable", action="store_true",
                   help="Paddle's own ops only: no paddle_rc C++ operators (fused softmax/rotary/SwiGLU/quick_gelu, "
                        "the int8/int4 matmul) in the graphs, for a GPU or a machine without a C++ compiler")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export in --out")
    p.add_argument("--check", action="store_true",
                   help="after exporting, load the graphs with paddle.inference and answer the built-in "
                        "scene's question")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    add_config_args(p)
    return p


EXPORT_STEPS = 3  # export_model's progress messages: loading, vision graph, LLM graphs


def _step(bar, message):
    """export_model announces each step as it starts: the bar counts the steps finished before it."""
    if bar.disable:
        return
    if bar.n or bar.desc != "exporting":
        bar.update(1)
    bar.set_description(message)


def main(argv=None) -> int:
    args = parse_with_config(build_parser(), argv)
    from tqdm import tqdm

    from paddle_rc.errors import UserError
    from paddle_rc.export import export_model

    from paddle_rc.compression import check_compression

    options = parse_key_values(args.option)
    check_compression(args.method, args.budget, options)  # before any work or notes
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out} is a file; give a directory")
    model_dir = args.model
    if model_dir is None:
        from paddle_rc.demo import default_model

        model_dir = default_model()
        print("note: exporting the built-in demo model (a small LLaVA trained on the synthetic task only); "
              "pass --model DIR for a real one", file=sys.stderr)
    elif not os.path.isdir(model_dir):
        raise UserError(f"model directory not found: {model_dir}")
    t0 = time.perf_counter()
    quiet = args.json
    with tempfile.TemporaryDirectory(prefix="paddle_rc-quant-") as scratch:
        if args.quant:
            from paddle_rc.quant import QuantConfig
            from paddle_rc.quant.checkpoint import quantize_checkpoint

            quantized = os.path.join(scratch, "checkpoint")
            config = QuantConfig.preset(args.quant)
            progress, close = progress_bar("quantizing", unit="tensor")
            try:
                quantize_checkpoint(model_dir, quantized, config, progress=progress)
            finally:
                close()
            model_dir = quantized
        steps = tqdm(total=EXPORT_STEPS, desc="exporting", unit="step", file=sys.stderr, disable=quiet)
        try:
            manifest = export_model(model_dir, args.out, method=args.method, budget=args.budget,
                                    options=options, overwrite=args.overwrite, portable=args.portable,
                                    progress=lambda msg: _step(steps, msg))
            steps.update(steps.total - steps.n)
        finally:
            steps.close()
    seconds = time.perf_counter() - t0
    if args.check:
        from paddle_rc.demo import demo_image, demo_question
        from paddle_rc.predictor import build_predictor

        out = build_predictor(deploy_dir=args.out).answer(demo_image(), demo_question(), max_new_tokens=4)
        manifest["check"] = {"visual_tokens": out["visual_tokens"], "question": demo_question(),
                             "answer": out["text"]}
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
