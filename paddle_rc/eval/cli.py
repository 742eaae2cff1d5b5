"""``tools/eval.py``: run, merge, score and report benchmarks.

Settings come, lowest to highest priority, from the built-in defaults, ``-c file.yml`` (flat
keys, or under an ``eval:`` section), ``-o key=value`` overrides (PaddleDetection style, values
parsed as YAML) and finally the plain flags given on the command line.
"""
import argparse
import os
import sys

from paddle_rc.cli import ToolParser, add_config_args, apply_threads, read_overrides
from paddle_rc.errors import UserError
from paddle_rc.positions import POSITIONS, check_positions

from . import benchmarks as B
from .report import partial_reason, rebuild_report
from .runner import (DEMO_NOTE, answers_path, merge_chunks, run_benchmark, run_tag,
                     score_answers)

DEFAULTS = {
    "model": None, "deploy": None, "benchmark": None, "data_root": None, "method": "rc",
    "budget": None, "limit": None, "conv_mode": None, "max_new_tokens": 128,
    "out": "outputs/eval", "num_chunks": 1, "chunk_idx": 0, "merge": False, "score_only": False,
    "answers": None, "progress": True, "batch_size": 1, "overwrite": False,
    "allow_partial": False, "all_rounds": False, "positions": "compact",
}


def build_parser():
    p = ToolParser(
        prog="tools/eval.py",
        description="Evaluate LLaVA-1.5 (+ visual-token compression) on the LLaVA-1.5 "
                    "benchmarks with the official scoring rules.")
    add_config_args(p)
    p.add_argument("--model", help="converted checkpoint dir (default: the built-in demo model, trained on "
                   "the synthetic task: meaningful on synthvqa only)")
    p.add_argument("--deploy", help="exported Paddle Inference dir instead of --model")
    p.add_argument("--benchmark", help="comma list: " + ",".join(B.READERS))
    p.add_argument("--data-root", dest="data_root",
                   help="LLaVA's playground/data/eval layout (docs/eval-data.md)")
    p.add_argument("--method", help="comma list of compression methods (default rc)")
    p.add_argument("--budget", help="visual-token budget, or a comma list of budgets")
    p.add_argument("--positions", choices=POSITIONS,
                   help="position ids after a compressed image: compact (default, as LLaVA), full (the text as if "
                        "every visual token were there) or source (also each kept token at its patch's position; "
                        "docs/positions.md)")
    p.add_argument("--limit", type=int, help="only the first N items of each benchmark")
    p.add_argument("--conv-mode", dest="conv_mode", help="conversation template (vicuna_v1)")
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=int)
    p.add_argument("--out", help="output dir (default outputs/eval)")
    p.add_argument("--num-chunks", dest="num_chunks", type=int)
    p.add_argument("--chunk-idx", dest="chunk_idx", type=int)
    p.add_argument("--merge", action="store_const", const=True,
                   help="merge the --num-chunks chunk files of each run, then score")
    p.add_argument("--score-only", dest="score_only", action="store_const", const=True,
                   help="score existing answer files under --out (no model)")
    p.add_argument("--answers", help="with --score-only: score this answer file (e.g. one "
                                     "written by LLaVA's own scripts) for a single benchmark")
    p.add_argument("--batch-size", dest="batch_size", type=int,
                   help="questions per model call (default 1; greedy answers do not change)")
    p.add_argument("--overwrite", action="store_const", const=True,
                   help="start the selected runs over: remove their answers, errors, manifest "
                        "and summary first")
    p.add_argument("--allow-partial", dest="allow_partial", action="store_const", const=True,
                   help="with --merge: merge even when a chunk has unanswered items")
    p.add_argument("--all-rounds", dest="all_rounds", action="store_const", const=True,
                   help="MMBench: ask every row once per option rotation (LLaVA --all-rounds)")
    p.add_argument("--no-progress", dest="progress", action="store_const", const=False)
    return p


def resolve_config(args):
    cfg = dict(DEFAULTS)
    where = args.config or "-o"
    for k, v in read_overrides(args.config, args.opt, section="eval").items():
        if k not in DEFAULTS:
            raise UserError(f"unknown setting {k!r} in {where}; known: {', '.join(DEFAULTS)}")
        cfg[k] = v
    for k in DEFAULTS:
        v = getattr(args, k, None)
        if v is not None:
            cfg[k] = v
    return cfg


def _as_list(v):
    if v is None:
        return []
    if isinstance(v, (list, tuple)):
        out = []
        for x in v:
            out += _as_list(x)
        return out
    return [x.strip() for x in str(v).split(",") if x.strip()]


def _budgets(v):
    out = []
    for x in _as_list(v):
        if x.lower() in ("none", "null"):
            out.append(None)
            continue
        try:
            out.append(int(x))
        except ValueError:
            try:
                out.append(float(x))
            except ValueError:
                raise UserError(f"--budget must be numbers, got {x!r}") from None
    return out or [None]


def _chunks(cfg):
    """--num-chunks/--chunk-idx; when not given, one chunk per process of paddle.distributed.launch
    (which sets PADDLE_TRAINERS_NUM and PADDLE_TRAINER_ID), so `python -m paddle.distributed.launch
    --gpus 0,1,2,3 tools/eval.py ...` shares a benchmark across GPUs; then run once with --merge."""
    world = int(os.environ.get("PADDLE_TRAINERS_NUM", "1") or 1)
    explicit = cfg["num_chunks"] not in (None, 1) or cfg["chunk_idx"] not in (None, 0)
    if world > 1 and not explicit and not (cfg["merge"] or cfg["score_only"]):
        return world, int(os.environ.get("PADDLE_TRAINER_ID", "0") or 0)
    return int(cfg["num_chunks"] or 1), int(cfg["chunk_idx"] or 0)


def plan_runs(methods, budgets):
    """(method, budget) pairs; ``none`` keeps all tokens so runs once whatever the budgets."""
    runs = []
    for m in methods:
        for b in ([None] if m == "none" else budgets):
            if (m, b) not in runs:
                runs.append((m, b))
    return runs


def main(argv=None, predictor=None, image_loader=None):
    """Entry point; ``predictor``/``image_loader`` let tests inject fakes. Returns exit code."""
    try:
        return _main(argv, predictor, image_loader)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: answers so far are saved; run the same command again to resume",
              file=sys.stderr)
        return 130


def _manifest(cfg, predictor, method, budget, layout):
    from .manifest import model_identity, run_manifest

    options = {}
    compression = getattr(predictor, "compression", None)
    if compression is not None:
        try:
            from paddle_rc.compression import method_defaults
            options = dict(method_defaults(method))
        except (ImportError, KeyError):
            options = {}
        options.update(getattr(compression, "options", None) or {})
        if getattr(compression, "positions", "compact") != "compact":
            options["positions"] = compression.positions  # a different answer, so a different setup
    identity = getattr(predictor, "identity", None)
    if identity is None:
        identity = model_identity(cfg["model"], cfg["deploy"])
    return run_manifest(identity=identity, method=method, budget=budget, options=options,
                        conv_mode=getattr(predictor, "conv_mode", cfg["conv_mode"]),
                        max_new_tokens=cfg["max_new_tokens"], layout=layout)


def _summary_line(s):
    extra = ", ".join(f"{k}={v:.2f}" for k, v in (s.get("extra_scores") or {}).items()
                      if v is not None)
    score = "n/a" if s.get("score") is None else f"{s['score']:.2f}"
    why = partial_reason(s)
    line = (f"{s['benchmark']:14s} {s['tag']:16s} {score}"
            + (f" (partial: {why})" if why else "")
            + f"  answered {s.get('coverage', '?')}"
            + (f"  ({extra})" if extra else "")
            + (f"  upload: {s['upload_file']}" if s.get("upload_file") else ""))
    return line


def _warn_partial(summaries):
    partial = [f"{s['benchmark']}/{s['tag']} {partial_reason(s)}" for s in summaries
               if partial_reason(s)]
    if partial:
        print(f"warning: {len(partial)} of {len(summaries)} scores cover part of their benchmark "
              f"({'; '.join(partial)}); the official rule for unanswered items applies "
              "(docs/eval-data.md)", file=sys.stderr)
    misaligned = [f"{s['benchmark']}/{s['tag']} {s['n_misaligned']}" for s in summaries
                  if s.get("n_misaligned")]
    half = [f"{s['benchmark']}/{s['tag']} {s['images_half_answered']}" for s in summaries
            if s.get("images_half_answered")]
    if half:
        print("warning: MME images with one of their two questions answered (calculation.py "
              f"cannot score such a file; scored here per image): {'; '.join(half)}",
              file=sys.stderr)
    if misaligned:
        print("warning: answers out of question order, scored against other questions' labels "
              f"as eval_pope.py pairs them by position: {'; '.join(misaligned)}", file=sys.stderr)


def _main(argv, predictor, image_loader):
    args = build_parser().parse_args(argv)
    apply_threads(args)
    cfg = resolve_config(args)
    names = [B.canonical_name(n) for n in _as_list(cfg["benchmark"])]
    if not names:
        raise UserError("--benchmark is required (comma list of " + ", ".join(B.READERS) + ")")
    methods = _as_list(cfg["method"]) or ["rc"]
    runs = plan_runs(methods, _budgets(cfg["budget"]))
    positions = cfg["positions"]
    check_positions(positions)
    out = cfg["out"]
    limit = int(cfg["limit"]) if cfg["limit"] else None
    batch_size = int(cfg["batch_size"] or 1)
    if batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    nchunks, cidx = _chunks(cfg)
    if cfg["answers"] and not cfg["score_only"]:
        raise UserError("--answers is only used with --score-only")
    if cfg["answers"] and (len(names) != 1 or len(runs) != 1):
        raise UserError("--answers scores one file: give exactly one --benchmark and --method")
    if cfg["allow_partial"] and not cfg["merge"]:
        raise UserError("--allow-partial is only used with --merge")
    benches = {n: B.load_benchmark(n, cfg["data_root"], all_rounds=cfg["all_rounds"])
               for n in names}
    summaries = []

    if cfg["score_only"] or cfg["merge"]:
        for n, bench in benches.items():
            for m, b in runs:
                tag = run_tag(m, b, positions)
                if cfg["merge"]:
                    info = merge_chunks(bench, out, tag, nchunks, limit,
                                        allow_partial=bool(cfg["allow_partial"]))
                    print(f"merged {nchunks} chunks -> {info['answers']} "
                          f"({info['n_records']} answers"
                          + (f", {info['incomplete_chunks']} chunk(s) incomplete"
                             if info["incomplete_chunks"] else "") + ")", file=sys.stderr)
                path = cfg["answers"] or answers_path(out, n, tag)
                summary_path = None
                if cfg["answers"]:
                    summary_path = os.path.join(out, n, tag + ".summary.json")
                summaries.append(score_answers(bench, path, method=m, budget=b, limit=limit,
                                               summary_path=summary_path))
    else:
        demo = not cfg["model"] and not cfg["deploy"]
        if predictor is None:
            try:
                from paddle_rc.predictor import build_predictor
            except ImportError as e:
                raise UserError(f"the model pipeline is not available ({e}); "
                                "--score-only works without it") from None
            predictor = build_predictor(model_dir=cfg["model"], deploy_dir=cfg["deploy"],
                                        method=runs[0][0], budget=runs[0][1],
                                        conv_mode=cfg["conv_mode"])
        if demo:
            print("note: " + DEMO_NOTE, file=sys.stderr)
        for n, bench in benches.items():
            for m, b in runs:
                predictor.set_method(m, b, positions=positions)
                manifest = _manifest(cfg, predictor, m, b, bench.layout)
                info = run_benchmark(bench, predictor, m, b, out, image_loader=image_loader,
                                     limit=limit, max_new_tokens=int(cfg["max_new_tokens"]),
                                     num_chunks=nchunks, chunk_idx=cidx,
                                     progress=bool(cfg["progress"]), demo=demo,
                                     batch_size=batch_size, manifest=manifest,
                                     overwrite=bool(cfg["overwrite"]), positions=positions)
                msg = (f"{n}/{info['tag']}: {info['n_new']} new, {info['n_resumed']} already "
                       f"on disk, {info['n_errors']} failed (image or model)")
                if info["torn_line_dropped"]:
                    msg += " (dropped a torn last line from an interrupted run)"
                print(msg, file=sys.stderr)
                if nchunks == 1:
                    summaries.append(score_answers(bench, info["answers"], method=m, budget=b,
                                                   limit=limit))
        if nchunks > 1:
            print(f"chunk {cidx}/{nchunks} done; when all chunks are done run the same command "
                  "with --merge", file=sys.stderr)
            return 0

    for s in summaries:
        print(_summary_line(s))
    _warn_partial(summaries)
    paths = rebuild_report(out)
    print("report: " + ", ".join(paths[k] for k in sorted(paths)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
