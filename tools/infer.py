"""Ask LLaVA one question about one image, with visual-token compression.

    python tools/infer.py                                   # built-in demo model and image
    python tools/infer.py --model ckpt/llava-1.5-7b --image cat.jpg --question "What is on the sofa?" \
        --method rc --save-vis kept.png --json
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddle_rc.cli import add_config_args, parse_key_values, parse_with_config, run  # noqa: E402

DEMO_NOTE = ("demo model with random weights: the answer is meaningless; pass --model DIR "
             "(a checkpoint written by tools/convert.py) for real answers")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="checkpoint directory (tools/convert.py); default: built-in demo model")
    p.add_argument("--deploy", help="exported deployment directory (tools/export.py) instead of --model")
    p.add_argument("--image", help="image file; default: built-in demo image")
    p.add_argument("--question", default="What is in this image?")
    p.add_argument("--conv-mode", help="vicuna_v1 | llava_v1 | llava_hf (default: the checkpoint's)")
    p.add_argument("--method", help="compression method (none, rc, rc-reference, ...); default rc, "
                   "with --deploy the exported one (another is an error)")
    p.add_argument("--budget", type=int, help="exact visual tokens per image (default: adaptive)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option, e.g. --option topk=16 (repeatable; defaults in configs/methods/)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-vis", metavar="PATH", help="write the kept-token picture (PNG) here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_config_args(p)
    return p


def main(argv=None) -> int:
    args = parse_with_config(build_parser(), argv)
    from paddle_rc.data.image import load_image
    from paddle_rc.errors import UserError
    from paddle_rc.predictor import build_predictor

    if args.model and args.deploy:
        raise UserError("give --model or --deploy, not both")
    if args.image:
        image = load_image(args.image)
        image_path = args.image
    else:
        from paddle_rc.demo import demo_image

        image, image_path = demo_image(), "<built-in demo image>"
    method = args.method if args.method or args.deploy else "rc"
    predictor = build_predictor(args.model, args.deploy, method=method, budget=args.budget,
                                conv_mode=args.conv_mode, **parse_key_values(args.option))
    out = predictor.answer(image, args.question, max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    vis_path = None
    if args.save_vis:
        vis_path = _save_picture(predictor, image, args.save_vis)
    record = {
        "answer": out["text"],
        "method": out["method"],
        "budget": out["budget"],
        "visual_tokens_before": out["visual_tokens_before"],
        "visual_tokens_after": out["visual_tokens"],
        "stage_counts": out["stage_counts"],
        "timings": {k: round(v, 4) if isinstance(v, float) else v for k, v in out["timings"].items()},
        "image": image_path,
        "question": args.question,
        "model": predictor.model_id,
        "picture": vis_path,
    }
    if predictor.is_demo:
        record["note"] = DEMO_NOTE
    if args.json:
        print(json.dumps(record, ensure_ascii=False))
        return 0
    if predictor.is_demo:
        print(f"note: {DEMO_NOTE}")
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


def _save_picture(predictor, image, path):
    from paddle_rc.errors import UserError

    visual = predictor.last_visual
    if visual is None or visual.result is None:
        raise UserError("--save-vis needs a compression method (got --method none: every token is kept)")
    from paddle_rc.compression.visualize import draw_kept_tokens

    picture = draw_kept_tokens(predictor.processor.model_view(image), visual.result, sample=0)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UserError(f"cannot write {path}: folder {directory} does not exist")
    tmp = path + ".tmp.png"
    picture.save(tmp)
    os.replace(tmp, path)
    return path


if __name__ == "__main__":
    run(main)
