r"""Ask LLaVA about images, with visual-token compression.

    python tools/infer.py                                   # built-in demo model, scene and question
    python tools/infer.py --model ckpt/llava-1.5-7b --image cat.jpg --question "What is on the sofa?" \
        --method rc --save-vis kept.png --json
    python tools/infer.py --model ckpt/llava-1.5-7b --image-dir photos/ --batch-size 8 > answers.jsonl
    python tools/infer.py --model ckpt/llava-1.5-7b --image cat.jpg --chat [--recompress]

Many images (--images A B ... or --image-dir DIR) print one JSON line per image, in order; an image that
cannot be read gets a line with "error" and the run ends with exit code 2 after the others. --image and
--images take http(s) URLs only with --allow-download. --chat reads one question per line from standard
input (/reset starts over, /exit or end of input stops); by default every turn keeps the visual tokens
RC chose for the first question, --recompress chooses them again for each new question.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddle_rc.cli import ToolParser, add_config_args, parse_key_values, parse_with_config, run  # noqa: E402

from paddle_rc.demo import DEFAULT_MODEL_NOTE as DEMO_NOTE, demo_question  # noqa: E402
from paddle_rc.positions import POSITIONS  # noqa: E402

GENERIC_QUESTION = "What is in this image?"  # the default question about an image you give


def build_parser():
    p = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="checkpoint directory (tools/convert.py); default: the built-in demo model "
                   "(trained on the synthetic task, paddle_rc/assets/synthvqa-demo)")
    p.add_argument("--deploy", help="exported deployment directory (tools/export.py) instead of --model")
    p.add_argument("--image", help="image file (or URL, with --allow-download); default: the built-in demo scene "
                   "(a synthetic-task picture)")
    p.add_argument("--images", nargs="+", metavar="IMAGE", help="several images: one JSON line each")
    p.add_argument("--image-dir", metavar="DIR", help="every image file in DIR (sorted): one JSON line each")
    p.add_argument("--batch-size", type=int, default=1, help="images answered together (default 1)")
    p.add_argument("--allow-download", action="store_true", help="let --image/--images fetch http(s) URLs")
    p.add_argument("--question", help=f"the question (default: with the built-in scene its question, "
                   f"{demo_question()!r}; with your images {GENERIC_QUESTION!r})")
    p.add_argument("--chat", action="store_true", help="a conversation: questions from standard input")
    p.add_argument("--recompress", action="store_true",
                   help="with --chat: compress again with each new question (default: keep turn 1's tokens)")
    p.add_argument("--conv-mode", help="vicuna_v1 | llava_v1 | llava_hf (default: the checkpoint's)")
    p.add_argument("--method", help="compression method (none, rc, rc-reference, ...); default rc, "
                   "with --deploy the exported one (another is an error)")
    p.add_argument("--budget", type=int, help="exact visual tokens per image (default: adaptive)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option, e.g. --option topk=16 (repeatable; defaults in configs/methods/)")
    p.add_argument("--positions", choices=POSITIONS,
                   help="position ids after a compressed image: compact (default, as LLaVA), full (the text as if "
                        "every visual token were there) or source (also each kept token at its patch's position; "
                        "docs/positions.md)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-vis", metavar="PATH",
                   help="write the kept-token picture here (format from the extension: .png, .jpg, ...); "
                        "with several images, a folder for one PNG per image")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_config_args(p)
    return p


def main(argv=None) -> int:
    args = parse_with_config(build_parser(), argv)
    from paddle_rc.data.sources import collect_sources
    from paddle_rc.errors import UserError
    from paddle_rc.models.generation import check_sampling, seed_generators
    from paddle_rc.predictor import build_predictor

    if args.model and args.deploy:
        raise UserError("give --model or --deploy, not both")
    check_sampling(args.max_new_tokens, args.temperature, args.top_p)
    seed_generators(args.seed, 1)  # a bad seed fails before any work
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    many = bool(args.images or args.image_dir)
    if args.recompress and not args.chat:
        raise UserError("--recompress only applies to --chat")
    if args.chat and many:
        raise UserError("--chat is about one image: give --image, not --images/--image-dir")
    sources = collect_sources(args.image, args.images, args.image_dir, args.allow_download)
    if args.question is None:
        args.question = GENERIC_QUESTION if sources else demo_question()
    if args.save_vis and not many:
        picture_format(args.save_vis)  # an unknown extension fails now, not after the answer
    method = args.method if args.method or args.deploy else "rc"
    options = parse_key_values(args.option)
    if "positions" in options:
        raise UserError("positions is not a method option: use --positions compact|full|source")
    if args.positions:
        options["positions"] = args.positions
    predictor = build_predictor(args.model, args.deploy, method=method, budget=args.budget,
                                conv_mode=args.conv_mode, **options)
    if args.save_vis and predictor.method == "none":
        raise UserError("--save-vis needs a compression method (got --method none: every token is kept)")
    generation = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                      seed=args.seed)
    if many:
        return answer_many(predictor, sources, args, generation)
    if sources:
        image, image_path = open_image(sources[0]), sources[0]
    else:
        from paddle_rc.demo import demo_image

        image, image_path = demo_image(), "<built-in demo scene>"
    if args.chat:
        return chat(predictor, image, args, generation)
    out = predictor.answer(image, args.question, **generation)
    vis_path = save_picture(predictor, image, 0, args.save_vis) if args.save_vis else None
    record = make_record(out, image_path, args.question, predictor, vis_path)
    if args.json:
        print(json.dumps(record, ensure_ascii=False))
        return 0
    if predictor.is_demo:
        print(f"note: {DEMO_NOTE}")
    if not sources:
        from paddle_rc.demo import DEMO_INDEX, DEMO_SEED, demo_answer

        print(f"image: the built-in scene (paddle_rc.synth.make_item({DEMO_SEED}, {DEMO_INDEX})), "
              f"whose true answer to its own question is {demo_answer()!r}")
    print(f"question: {args.question}")
    print(f"answer: {record['answer']}")
    print(f"visual tokens: {record['visual_tokens_before']} -> {record['visual_tokens_after']} "
          f"({record['method']}{'' if record['budget'] is None else ', budget %d' % record['budget']})")
    stages = ", ".join(f"{k} {v}" for k, v in record["stage_counts"].items())
    if stages:
        print(f"stages: {stages}")
    t = record["timings"]
    print(f"time: vision {t['vision']:.3f}s, prefill {t['prefill']:.3f}s, decode {t['decode']:.3f}s "
          f"({t['new_tokens']} tokens)")
    if vis_path:
        print(f"picture: {vis_path}")
    return 0


def open_image(source):
    from paddle_rc.data.image import load_image
    from paddle_rc.data.sources import read_source

    data = read_source(source)
    return load_image(data) if isinstance(data, bytes) else load_image(source)


def make_record(out, image_path, question, predictor, vis_path):
    record = {
        "answer": out["text"],
        "method": out["method"],
        "budget": out["budget"],
        "positions": predictor.compression.positions,
        "visual_tokens_before": out["visual_tokens_before"],
        "visual_tokens_after": out["visual_tokens"],
        "prompt_tokens": out["prompt_tokens"],
        "stage_counts": out["stage_counts"],
        "timings": {k: round(v, 4) if isinstance(v, float) else v for k, v in out["timings"].items()},
        "image": image_path,
        "question": question,
        "model": predictor.model_id,
        "picture": vis_path,
    }
    if predictor.is_demo:
        record["note"] = DEMO_NOTE
    return record


def answer_many(predictor, sources, args, generation) -> int:
    """One JSON line per image, in order, answered --batch-size at a time."""
    from tqdm import tqdm

    from paddle_rc.errors import UserError

    if args.save_vis:
        os.makedirs(args.save_vis, exist_ok=True)
    used_names = set()
    failed = 0
    with tqdm(total=len(sources), unit="image", desc="answering", file=sys.stderr) as bar:
        for start in range(0, len(sources), args.batch_size):
            chunk = sources[start:start + args.batch_size]
            loaded, lines = [], {}
            for src in chunk:
                try:
                    loaded.append((src, open_image(src)))
                except UserError as e:  # one unreadable image does not cost the others their answers
                    lines[src] = {"image": src, "error": str(e)}
                    failed += 1
            if loaded:
                outs = predictor.answer_batch([im for _, im in loaded], [args.question] * len(loaded),
                                              **generation)
                for b, ((src, image), out) in enumerate(zip(loaded, outs)):
                    vis = None
                    if args.save_vis:
                        vis = save_picture(predictor, image, b, _picture_path(args.save_vis, src, used_names))
                    lines[src] = make_record(out, src, args.question, predictor, vis)
            for src in chunk:
                print(json.dumps(lines[src], ensure_ascii=False), flush=True)
            bar.update(len(chunk))
    if failed:
        raise UserError(f"{failed} of {len(sources)} images could not be read (their JSON lines say why)")
    return 0


def _picture_path(folder, source, used):
    stem = os.path.splitext(os.path.basename(source.rstrip("/").split("?")[0]))[0] or "image"
    name, k = stem, 1
    while name in used:
        k += 1
        name = f"{stem}-{k}"
    used.add(name)
    return os.path.join(folder, name + ".png")


def chat(predictor, image, args, generation) -> int:
    """LLaVA's CLI loop: a question per line, an answer per turn."""
    from paddle_rc.errors import UserError

    session = predictor.chat(image, recompress=args.recompress)
    interactive = sys.stdin.isatty()
    if predictor.is_demo:
        print(f"note: {DEMO_NOTE}", file=sys.stderr)
    while True:
        try:
            line = input("USER: ") if interactive else sys.stdin.readline()
        except EOFError:
            break
        if not interactive and not line:
            break
        line = line.strip()
        if not line:
            continue
        if line == "/exit":
            break
        if line == "/reset":
            session.reset()
            continue
        try:
            out = session.ask(line, **generation)
        except UserError as e:
            if not interactive:
                raise
            print(f"error: {e}", file=sys.stderr)  # at a keyboard the conversation goes on (/reset)
            continue
        if args.json:
            record = make_record(out, "<chat image>", line, predictor, None)
            record["turn"] = out["turn"]
            print(json.dumps(record, ensure_ascii=False), flush=True)
        else:
            print(f"ASSISTANT: {out['text']}", flush=True)
    return 0


def picture_format(path):
    """PIL's format name for the file extension of `path` (.png -> PNG, .jpg -> JPEG, ...)."""
    from PIL import Image

    from paddle_rc.errors import UserError

    ext = os.path.splitext(path)[1].lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.SAVE:
        raise UserError(f"--save-vis {path}: cannot tell the image format from {ext or 'no extension'!r}; "
                        "end the name with .png, .jpg or .webp")
    return fmt


def save_picture(predictor, image, sample, path):
    """The kept-token picture of one sample of the last answer, written atomically in the format
    its extension names."""
    from paddle_rc.compression.visualize import draw_kept_tokens
    from paddle_rc.errors import UserError

    fmt = picture_format(path)
    picture = draw_kept_tokens(predictor.processor.model_view(image), predictor.last_visual.result, sample=sample)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UserError(f"cannot write {path}: folder {directory} does not exist")
    if fmt == "JPEG" and picture.mode != "RGB":
        picture = picture.convert("RGB")
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp")
    picture.save(tmp, format=fmt)
    os.replace(tmp, path)
    return path


if __name__ == "__main__":
    run(main)
