"""Measured costs, as ratios within one run (absolute seconds depend on the machine).

    python tools/benchmark.py vision [--methods rc,none,...] [--repeats 5]   # tower + compression overhead
    python tools/benchmark.py compute [--layers 4] [--visual-tokens 576,58] [--fastv-kept 58] [--bits 32,8,4]
    python tools/benchmark.py quant [--prompts 64] [--slice-layers 2] [--train-steps 80]  # bytes, RSS, logits error
    python tools/benchmark.py deploy [--preset tiny,wide] [--method rc]       # dynamic vs exported graphs
    python tools/benchmark.py seven-b [--quant int8,int4-g128] [--checkpoints DIR] [--deploy int8]  # real-shape 7B
    python tools/benchmark.py versus [--repeats 5] [--llm-layers 4]           # paddle_rc vs transformers
    python tools/benchmark.py ops [--repeats 20]                              # fused C++ ops vs Paddle's ops
    python tools/benchmark.py evalbatch [--batch-sizes 1,8] [--items 32]     # eval items/s vs --batch-size
    python tools/benchmark.py serve [--concurrency 1,4,16] [--requests 32]   # tools/serve.py under load
    python tools/benchmark.py coverage --data-root DIR [--runs rc,rc:no-text,cls-topk@32]  # synthvqa: tokens on the asked objects?
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddle_rc.cli import ToolParser, add_threads_arg, apply_threads, progress_bar, run  # noqa: E402

def build_parser():
    p = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_threads_arg(p)
    sub = p.add_subparsers(dest="mode", required=True)
    v = sub.add_parser("vision", help="vision tower time with each compression method vs without")
    v.add_argument("--methods", help="comma-separated (default: every registered method)")
    v.add_argument("--repeats", type=int, default=5)
    v.add_argument("--batch", type=int, default=1)
    v.add_argument("--budget", type=int)
    v.add_argument("--width", type=int, default=1024, help="ViT width (ViT-L: 1024)")
    v.add_argument("--layers", type=int, default=24, help="ViT layers (ViT-L: 24)")
    v.add_argument("--heads", type=int, default=16)
    v.add_argument("--image-size", type=int, default=336)
    v.add_argument("--llm-width", type=int, default=4096, help="projector output width (7B: 4096)")
    v.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    _add_compute_parser(sub)
    _add_quant_parser(sub)
    _add_deploy_parser(sub)
    _add_seven_b_parser(sub)
    _add_versus_parser(sub)
    _add_evalbatch_parser(sub)
    _add_serve_parser(sub)
    o = sub.add_parser("ops", help="paddle_rc's fused CPU operators (softmax, rotary, SwiGLU, quick_gelu) against "
                                   "the Paddle ops they replace, at 7B / ViT-L shapes")
    o.add_argument("--repeats", type=int, default=20)
    o.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    cv = sub.add_parser("coverage", help="synthvqa: share of questions whose asked objects keep a token")
    cv.add_argument("--data-root", required=True, help="folder holding synthvqa/ (tools/make_synth.py --out)")
    cv.add_argument("--model", help="checkpoint directory (default: the built-in model)")
    cv.add_argument("--runs", help="comma list of METHOD[:no-text][@BUDGET] (default: every method that "
                                   "compresses before the LLM, adaptive, plus rc:no-text)")
    cv.add_argument("--limit", type=int, help="only the first N questions that have a target")
    cv.add_argument("--batch", type=int, default=16)
    cv.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    return p


def _add_versus_parser(sub):
    s = sub.add_parser("versus", help="paddle_rc against transformers at LLaVA-1.5-7B's shapes: tower, tower + rc, "
                                      "prefill, decode per token, exported graphs")
    s.add_argument("--repeats", type=int, default=5)
    s.add_argument("--llm-layers", type=int, default=4,
                   help="LLaMA layers at 7B widths (default 4: ~4.3 GB float32 per side, both sides in memory)")
    s.add_argument("--export-layers", type=int, default=2,
                   help="layers of the model whose exported graphs are timed (each graph holds its own weights)")
    s.add_argument("--seq", type=int, default=636, help="prefill tokens (default 636: 576 visual + 60 text)")
    s.add_argument("--decode-steps", type=int, default=16)
    s.add_argument("--stages", default="vision,llm,export", help="comma-separated: vision, llm, export")
    s.add_argument("--transformers-python", metavar="PATH",
                   help="python of another venv to run transformers in (default: this one)")
    s.add_argument("--json", metavar="PATH", help="also write the result as JSON")


def _run_versus(args):
    from paddle_rc.benchmark.versus import format_versus_table, run_versus
    from paddle_rc.errors import UserError

    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    bad = [s for s in stages if s not in ("vision", "llm", "export")]
    if bad or not stages:
        raise UserError(f"--stages takes vision, llm, export; got {args.stages!r}")
    if min(args.repeats, args.llm_layers, args.export_layers, args.seq, args.decode_steps) < 1:
        raise UserError("--repeats, --llm-layers, --export-layers, --seq and --decode-steps must be at least 1")
    result = run_versus(repeats=args.repeats, llm_layers=args.llm_layers, export_layers=args.export_layers,
                        seq=args.seq, decode_steps=args.decode_steps, stages=stages,
                        transformers_python=args.transformers_python, threads=args.threads,
                        progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(format_versus_table(result))
    _write_json(args.json, result)


def _int_list(text):
    try:
        return tuple(int(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _add_compute_parser(sub):
    c = sub.add_parser("compute", help="paper-style table: none vs rc x fp32/int8/int4, analytic FLOPs and "
                                       "memory (7B) + measured prefill time at 7B widths")
    c.add_argument("--layers", type=int, default=4,
                   help="decoder layers of the measured 7B-width model (default 4: ~3.2 GB float32 + its "
                        "int8/int4 copies, a default run takes about 8 minutes on 2 cores)")
    c.add_argument("--visual-tokens", type=_int_list, default=(576, 58),
                   help="NONE,RC visual token counts (default 576,58: the paper's average for rc)")
    c.add_argument("--text-tokens", type=int, default=60, help="text tokens of the prompt (default 60)")
    c.add_argument("--fastv-kept", type=int, default=58,
                   help="FastV row: visual tokens kept after its layer (default 58, rc's count; 0: no row)")
    c.add_argument("--fastv-layer", type=int, default=2, help="FastV's K: layers that see every visual token")
    c.add_argument("--bits", type=_int_list, default=(32, 8, 4), help="weight precisions (32,16,8,4)")
    c.add_argument("--act-bits", type=int, help="KV cache/activation bits (default: widest float in --bits)")
    c.add_argument("--group-size", type=int, default=-1, help="-1 per-channel scales, or 64/128")
    c.add_argument("--repeats", type=int, default=3)
    c.add_argument("--sweep", type=_int_list, default=(576, 432, 288, 192, 128, 64, 32),
                   help="visual token counts for the plot")
    c.add_argument("--sweep-bits", type=_int_list, default=(32,), help="precisions timed in the sweep")
    c.add_argument("--model", choices=["7b", "13b"], default="7b", help="analytic model shapes")
    c.add_argument("--no-measure", action="store_true", help="analytic columns only")
    c.add_argument("--plot", metavar="PNG", default="compute_benchmark.png")
    c.add_argument("--json", metavar="PATH", help="also write the result as JSON")


def _add_quant_parser(sub):
    q = sub.add_parser("quant", help="fp32/int8/int4: checkpoint bytes, resident memory, logits error")
    q.add_argument("--prompts", type=int, default=64, help="prompts for top-1 agreement (>= 50)")
    q.add_argument("--prompt-len", type=int, default=24)
    q.add_argument("--slice-layers", type=int, default=2, help="layers of the 4096-wide LLM slice")
    q.add_argument("--group-size", type=int, default=128, help="int4 scales: 128 (default) or 64 per group, -1 per channel")
    q.add_argument("--workdir", help="where the checkpoints are written (default: a temporary folder)")
    q.add_argument("--skip-slice", action="store_true", help="leave out the 4096-wide slice")
    q.add_argument("--clip-search", action="store_true", help="quantize with the clip search")
    q.add_argument("--train-steps", type=int, default=80,
                   help="training steps of the trained tiny model (0: leave it out)")
    q.add_argument("--accuracy", type=int, default=300, metavar="N",
                   help="score the demo model's fp32/int8/int4 checkpoints on N synthvqa questions (0: skip)")
    q.add_argument("--accuracy-seed", type=int, default=90_002, help="synthvqa seed of those questions")
    q.add_argument("--accuracy-methods", default="none,rc", help="methods scored, comma-separated")
    q.add_argument("--json", metavar="PATH", help="also write the result as JSON")


def _add_deploy_parser(sub):
    d = sub.add_parser("deploy", help="dynamic model vs its exported Paddle Inference graphs "
                                      "(vision, prefill, per-token decode)")
    d.add_argument("--preset", default="tiny,wide", help="model sizes, comma-separated: tiny, wide")
    d.add_argument("--method", default="rc")
    d.add_argument("--budget", type=int)
    d.add_argument("--prompt-len", type=int, default=48, help="text tokens around the image in the prefill")
    d.add_argument("--decode-steps", type=int, default=16)
    d.add_argument("--repeats", type=int, default=5)
    d.add_argument("--onednn", action="store_true", help="enable oneDNN in the predictors")
    d.add_argument("--json", metavar="PATH", help="also write the results as JSON")


def _add_seven_b_parser(sub):
    s = sub.add_parser("seven-b", help="LLaVA-1.5-7B's real shapes (random weights): write, quantize, time "
                                       "tools/infer.py for none/rc at int8/int4, peak RSS; needs ~11 GB RAM, "
                                       "~27 GB disk while the checkpoints are written (~12 GB after)")
    s.add_argument("--quant", default="int8,int4-g128", help="quantization presets, comma-separated")
    s.add_argument("--methods", default="none,rc")
    s.add_argument("--max-new-tokens", type=int, default=8,
                   help="tokens generated per case; decode per token is the mean over all but the first")
    s.add_argument("--workdir", help="where the checkpoints are written (default: the temp folder); removed after")
    s.add_argument("--keep", action="store_true", help="keep the checkpoints")
    s.add_argument("--checkpoints", metavar="DIR",
                   help="keep the quantized checkpoints in DIR and reuse them on later runs (written there "
                        "when missing, ~12 GB for both presets; never removed); the runs then take minutes")
    s.add_argument("--deploy", nargs="?", const="all", metavar="PRESETS",
                   help="also export the quantized checkpoints (rc) and time tools/infer.py --deploy: all of "
                        "them, or the comma-separated presets given (e.g. --deploy int8)")
    s.add_argument("--churn", type=int, metavar="LAYERS",
                   help="instead: decode cost after a none vs an rc prefill, page faults and system time, "
                        "portable path vs the operator, on LAYERS int8 layers at 7B width")
    s.add_argument("--json", metavar="PATH", help="also write the result as JSON")


def _run_seven_b(args):
    from paddle_rc.benchmark.seven_b import (format_churn_table, format_seven_b_table, measure_decode_churn,
                                             run_seven_b)
    from paddle_rc.errors import UserError
    from paddle_rc.quant import QuantConfig

    if args.churn is not None:
        if args.churn < 1:
            raise UserError("--churn needs at least 1 layer")
        rows = measure_decode_churn(args.churn)
        print(format_churn_table(rows))
        _write_json(args.json, rows)
        return
    presets = tuple(p.strip() for p in args.quant.split(",") if p.strip())
    for p in presets:
        QuantConfig.preset(p)  # unknown presets: one error line before 14 GB are written
    if args.max_new_tokens < 2:
        raise UserError("--max-new-tokens must be at least 2 (one prefill token, then decode steps)")
    deploy_presets = None
    if args.deploy not in (None, "all"):
        deploy_presets = tuple(p.strip() for p in args.deploy.split(",") if p.strip())
        unknown = [p for p in deploy_presets if p not in presets]
        if unknown:
            raise UserError(f"--deploy {','.join(unknown)}: not among --quant {','.join(presets)}")
    result = run_seven_b(args.workdir, presets, tuple(m.strip() for m in args.methods.split(",") if m.strip()),
                         args.max_new_tokens, args.threads, args.keep,
                         progress=lambda m: print(m, file=sys.stderr, flush=True), deploy=args.deploy is not None,
                         checkpoints=args.checkpoints, deploy_presets=deploy_presets)
    print(format_seven_b_table(result))
    _write_json(args.json, result)


def _check_vision_args(args):
    """Refuse bad settings before minutes of work, not after."""
    from paddle_rc.compression import available_methods, check_compression
    from paddle_rc.errors import UserError

    methods = ([m.strip() for m in args.methods.split(",") if m.strip()] if args.methods is not None
               else available_methods())
    if not methods:
        raise UserError(f"--methods names no method; choose from {', '.join(available_methods())}")
    for m in methods:  # `none` is the reference row: it runs without the budget
        check_compression(m, None if m == "none" else args.budget)
    _at_least_one(args, "repeats", "batch", "width", "layers", "heads")
    if args.width % args.heads:
        raise UserError(f"--width {args.width} must be a multiple of --heads {args.heads}")
    if args.image_size < 14:
        raise UserError(f"--image-size must be at least one 14 px patch, got {args.image_size}")
    return methods


def _at_least_one(args, *names):
    from paddle_rc.errors import UserError

    for name in names:
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")


def _add_evalbatch_parser(sub):
    e = sub.add_parser("evalbatch", help="tools/eval.py's runner: items/s at batch 1 and batch N, "
                                         "dynamic model and its export (synthetic benchmark)")
    e.add_argument("--model", help="converted checkpoint (default: the one --preset names)")
    e.add_argument("--preset", default="demo",
                   help="without --model: demo (the built-in model) or wide (random weights, wider)")
    e.add_argument("--batch-sizes", type=_int_list, default=(1, 8))
    e.add_argument("--items", type=int, default=32)
    e.add_argument("--repeats", type=int, default=3)
    e.add_argument("--max-new-tokens", type=int, default=8)
    e.add_argument("--method", default="rc")
    e.add_argument("--budget", type=int)
    e.add_argument("--backends", default="dynamic,deploy")
    e.add_argument("--json", metavar="PATH", help="also write the rows as JSON")


def _add_serve_parser(sub):
    s = sub.add_parser("serve", help="tools/serve.py: throughput and p50/p95 latency at 1/4/16 clients, "
                                     "batching on/off, dynamic model and its export")
    s.add_argument("--model", help="checkpoint directory (default: the built-in demo model, trained on the "
                                   "synthetic task)")
    s.add_argument("--deploy", help="its export (default: exported to a temporary folder with --method/--budget)")
    s.add_argument("--method", default="rc")
    s.add_argument("--budget", type=int)
    s.add_argument("--concurrency", type=_int_list, default=(1, 4, 16), help="concurrent clients")
    s.add_argument("--requests", type=int, default=32, help="requests per measurement")
    s.add_argument("--max-tokens", type=int, default=32, help="new tokens per request (EOS ignored)")
    s.add_argument("--max-batch-size", type=int, default=16, help="the servers' batch size when batching is on")
    s.add_argument("--repeats", type=int, default=1)
    s.add_argument("--backends", default="dynamic,deploy")
    s.add_argument("--json", metavar="PATH", help="also write the rows as JSON")


def _run_serve(args):
    from paddle_rc.benchmark.serve import format_rows, run_serve_benchmark
    from paddle_rc.errors import UserError

    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    if not backends or set(backends) - {"dynamic", "deploy"}:
        raise UserError("--backends takes dynamic and/or deploy")
    if min(args.concurrency or (0,)) < 1 or args.requests < 1 or args.repeats < 1 or args.max_tokens < 1:
        raise UserError("--concurrency, --requests, --repeats and --max-tokens must be at least 1")
    for flag, path in (("--model", args.model), ("--deploy", args.deploy)):
        if path and not os.path.isdir(path):
            raise UserError(f"{flag}: directory not found: {path}")
    rows = run_serve_benchmark(args.model, args.deploy, args.method, args.budget, tuple(args.concurrency),
                               args.requests, args.max_tokens, args.max_batch_size, args.repeats, args.threads,
                               backends, say=lambda m: print(m, file=sys.stderr, flush=True))
    print(format_rows(rows))
    _write_json(args.json, rows)


def _run_evalbatch(args):
    from paddle_rc.benchmark.eval_batch import format_rows, run_eval_batch_benchmark
    from paddle_rc.errors import UserError

    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    if not backends or set(backends) - {"dynamic", "deploy"}:
        raise UserError("--backends takes dynamic and/or deploy")
    from paddle_rc.benchmark.eval_batch import PRESETS
    if args.preset not in PRESETS:
        raise UserError(f"unknown preset {args.preset!r}; choose from {', '.join(PRESETS)}")
    if args.items < 1 or args.repeats < 1 or min(args.batch_sizes or (0,)) < 1:
        raise UserError("--items, --repeats and every batch size must be at least 1")
    rows = run_eval_batch_benchmark(args.model, tuple(args.batch_sizes), args.items, args.repeats,
                                    args.max_new_tokens, args.method, args.budget, backends,
                                    say=lambda m: print(m, file=sys.stderr, flush=True),
                                    preset=args.preset)
    print(format_rows(rows))
    _write_json(args.json, rows)


def _run_deploy(args):
    from paddle_rc.benchmark.deploy import PRESETS, format_deploy_table, run_deploy_benchmark
    from paddle_rc.errors import UserError

    from paddle_rc.compression import check_compression

    presets = [p.strip() for p in args.preset.split(",") if p.strip()]
    for preset in presets or [""]:
        if preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    check_compression(args.method, args.budget)
    _at_least_one(args, "repeats", "decode_steps", "prompt_len")
    results = []
    for preset in presets:
        res = run_deploy_benchmark(preset, args.method, args.budget, prompt_len=args.prompt_len,
                                   decode_steps=args.decode_steps, repeats=args.repeats,
                                   threads=args.threads, onednn=args.onednn)
        print(format_deploy_table(res) + "\n", flush=True)
        results.append(res)
    _write_json(args.json, results)


def _run_compute(args):
    from paddle_rc.benchmark.compute import (ComputeSettings, format_compute_table, plot_compute,
                                             run_compute_benchmark)
    from paddle_rc.benchmark.flops import LLAVA_7B, LLAVA_13B
    from paddle_rc.errors import UserError

    if len(args.visual_tokens) != 2 or min(args.visual_tokens) <= 0:
        raise UserError(f"--visual-tokens wants NONE,RC (two positive counts), got {args.visual_tokens}")
    bad = [b for b in tuple(args.bits) + tuple(args.sweep_bits) if b not in (32, 16, 8, 4)]
    if bad:
        raise UserError(f"--bits/--sweep-bits take 32, 16, 8 or 4, got {bad[0]}")
    _at_least_one(args, "layers", "repeats", "text_tokens")
    if not args.sweep or min(args.sweep) < 1:
        raise UserError(f"--sweep wants positive visual token counts, got {args.sweep}")
    if args.fastv_kept < 0 or args.fastv_layer < 1:
        raise UserError("--fastv-kept must be 0 or more and --fastv-layer at least 1")
    s = ComputeSettings(llm=LLAVA_13B if args.model == "13b" else LLAVA_7B, layers=args.layers,
                        fastv_kept=args.fastv_kept, fastv_layer=args.fastv_layer,
                        visual_tokens=tuple(args.visual_tokens), text_tokens=args.text_tokens,
                        bits=tuple(args.bits), act_bits=args.act_bits, group_size=args.group_size,
                        repeats=args.repeats, sweep=tuple(args.sweep), sweep_bits=tuple(args.sweep_bits),
                        measure=not args.no_measure)
    result = run_compute_benchmark(s, progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(format_compute_table(result))
    if args.plot:
        plot_compute(result, args.plot)
        print(f"plot: {args.plot}")
    _write_json(args.json, result)


def _run_quant(args):
    from paddle_rc.benchmark.quant_eval import format_quant_report, run_quant_eval
    from paddle_rc.errors import UserError

    _at_least_one(args, "prompts", "prompt_len")
    if args.slice_layers < 1 and not args.skip_slice:
        raise UserError(f"--slice-layers must be at least 1 (or pass --skip-slice), got {args.slice_layers}")
    if args.group_size not in (-1, 64, 128):
        raise UserError(f"--group-size takes -1 (per channel), 64 or 128, got {args.group_size}")
    if args.train_steps < 0:
        raise UserError("--train-steps must be 0 or more")
    if args.accuracy < 0:
        raise UserError("--accuracy must be 0 or more")
    from paddle_rc.compression import available_methods
    methods = tuple(m.strip() for m in args.accuracy_methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in available_methods()]
    if unknown or not methods:
        raise UserError(f"--accuracy-methods: unknown {', '.join(unknown) or '(none given)'}; "
                        f"choose from {', '.join(available_methods())}")
    result = run_quant_eval(prompts=args.prompts, prompt_len=args.prompt_len, slice_layers=args.slice_layers,
                            group_size=args.group_size, workdir=args.workdir, slice_eval=not args.skip_slice,
                            train_steps=args.train_steps, clip_search=args.clip_search,
                            progress=lambda m: print(m, file=sys.stderr, flush=True),
                            accuracy_items=args.accuracy, accuracy_seed=args.accuracy_seed,
                            accuracy_methods=methods)
    print(format_quant_report(result))
    _write_json(args.json, result)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    apply_threads(args)
    if args.mode == "vision":
        from paddle_rc.benchmark.vision import format_vision_table, run_vision_benchmark

        methods = _check_vision_args(args)
        progress, close = progress_bar("vision benchmark", unit="pass")
        try:
            rows = run_vision_benchmark(methods, llm_width=args.llm_width,
                                        width=args.width, layers=args.layers, heads=args.heads,
                                        image_size=args.image_size, batch=args.batch, repeats=args.repeats,
                                        budget=args.budget, progress=progress)
        finally:
            close()
        print(format_vision_table(rows))
        _write_json(args.json, rows)
    elif args.mode == "compute":
        _run_compute(args)
    elif args.mode == "quant":
        _run_quant(args)
    elif args.mode == "deploy":
        _run_deploy(args)
    elif args.mode == "seven-b":
        _run_seven_b(args)
    elif args.mode == "ops":
        from paddle_rc.benchmark.ops import format_ops_table, run_ops
        from paddle_rc.errors import UserError

        if args.repeats < 1:
            raise UserError("--repeats must be at least 1")
        result = run_ops(args.repeats)
        print(format_ops_table(result))
        _write_json(args.json, result)
    elif args.mode == "versus":
        _run_versus(args)
    elif args.mode == "evalbatch":
        _run_evalbatch(args)
    elif args.mode == "serve":
        _run_serve(args)
    elif args.mode == "coverage":
        from paddle_rc.benchmark.coverage import format_coverage_table, run_coverage
        from paddle_rc.predictor import build_predictor

        rows = run_coverage(build_predictor(model_dir=args.model), args.data_root,
                            _coverage_runs(args.runs), limit=args.limit,
                            batch=args.batch)
        print(format_coverage_table(rows))
        _write_json(args.json, rows)
    return 0


def _coverage_runs(text):
    if text:
        return [r.strip() for r in text.split(",") if r.strip()]
    from paddle_rc.compression import available_methods, get_method

    runs = [m for m in available_methods() if get_method(m).stage == "vision"]
    return runs + ["rc:no-text"]


def _write_json(path, rows):
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)
        os.replace(tmp, path)


if __name__ == "__main__":
    run(main)
