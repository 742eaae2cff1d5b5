"""Train the demo LLaVA on the synthetic VQA task (the model every tool uses when given no --model).

    python tools/train_demo.py --out runs/demo                 # the full recipe (about an hour, 2 CPU cores)
    python tools/train_demo.py --out runs/demo                 # run again after an interruption: resumes
    python tools/train_demo.py --out runs/tiny --recipe stage1_steps=20 --recipe stage2_steps=20  # a quick try
    python tools/train_demo.py --probe runs/demo --seed 7   # where does a trained model lose the answer?

The result is a checkpoint directory (docs/checkpoint.md) with a MODEL_CARD.md: pass it as --model to
any tool, or copy it over paddle_rc/assets/synthvqa-demo to make it the default.
"""
import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddle_rc.cli import add_config_args, parse_with_config, read_overrides, run  # noqa: E402
from paddle_rc.errors import UserError  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="output checkpoint directory (also holds the resumable state)")
    p.add_argument("--probe", metavar="MODEL",
                   help="instead of training: for a trained model, the reply position's attention mass on the "
                        "asked objects per decoder layer and head, and linear probes of its state after each "
                        "layer, per question type (JSON; items from generate(--seed))")
    p.add_argument("--probe-items", type=int, default=640, help="questions for --probe")
    p.add_argument("--seed", type=int, default=0, help="seed of the data stream and the initial weights")
    p.add_argument("--overwrite", action="store_true", help="discard a previous run in --out")
    p.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation at the end")
    p.add_argument("--recipe", action="append", default=[], metavar="KEY=VALUE",
                   help="change one recipe field (see paddle_rc/train/recipe.py), e.g. stage2_steps=3000")
    add_config_args(p)
    return p


def main(argv=None) -> int:
    args = parse_with_config(build_parser(), argv)
    if args.probe:
        from paddle_rc.train.probe import reply_probe

        if not os.path.isdir(args.probe):
            raise UserError(f"model directory not found: {args.probe}")
        if args.probe_items < 8:
            raise UserError("--probe-items must be at least 8")
        print(json.dumps(reply_probe(args.probe, args.seed, args.probe_items), indent=2))
        return 0
    if not args.out:
        raise UserError("give --out DIR (where to train) or --probe MODEL")
    from paddle_rc.train import Recipe, train_demo

    fields = Recipe.__dataclass_fields__
    changes = read_overrides(None, args.recipe)
    unknown = sorted(set(changes) - set(fields))
    if unknown:
        raise UserError(f"unknown recipe field(s) {', '.join(unknown)}; see paddle_rc/train/recipe.py")
    for k, v in changes.items():
        if k == "type_mix":
            from paddle_rc.train.batches import check_type_mix

            check_type_mix(v)  # e.g. --recipe "type_mix={shape: 2, exist: 2}"
            continue
        if isinstance(fields[k].default, float) and isinstance(v, int) and not isinstance(v, bool):
            changes[k] = v = float(v)  # "grounding_weight=1" means 1.0
        if not isinstance(v, type(fields[k].default)) or isinstance(v, bool):
            raise UserError(f"recipe field {k} takes a {type(fields[k].default).__name__}, got {v!r}")
    recipe = Recipe(seed=args.seed, **changes)
    if args.overwrite and os.path.isdir(args.out):
        shutil.rmtree(args.out)
    card = train_demo(args.out, recipe, evaluate=not args.no_eval)
    print(json.dumps(card, indent=2))
    return 0


if __name__ == "__main__":
    run(main)
