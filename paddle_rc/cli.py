"""What every tools/*.py shares: `-c config.yml -o key=value` overrides and one-line user errors."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

import yaml

from paddle_rc.errors import UserError


class ToolParser(argparse.ArgumentParser):
    """argparse with the tools' error convention: a bad flag is one `error: ...` line and exit 2
    (raised as UserError for cli.run), not argparse's usage text and `prog: error:`."""

    def error(self, message):
        raise UserError(message)


def add_threads_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU math threads (default: OMP_NUM_THREADS if set, else all physical cores)")


def apply_threads(args: argparse.Namespace) -> None:
    """Set the math thread count a tool was asked for (paddle_rc's import already applied the default)."""
    from paddle_rc import runtime

    if getattr(args, "threads", None) is not None:
        runtime.configure(args.threads)


def add_config_args(parser: argparse.ArgumentParser) -> None:
    add_threads_arg(parser)
    parser.add_argument("-c", "--config", help="YAML file of option defaults (keys = long option names)")
    parser.add_argument("-o", "--opt", action="append", default=[], metavar="KEY=VALUE",
                        help="override an option, e.g. -o method=rc -o budget=64 (repeatable)")


def read_overrides(config_path, opts, section=None) -> dict:
    """Settings from `-c file.yml` (flat keys, or under `section:`) updated by `-o key=value` pairs
    (values parsed as YAML, so -o budget=64 is an int and -o method=[rc,none] a list)."""
    values = {}
    if config_path:
        if not os.path.isfile(config_path):
            raise UserError(f"config file not found: {config_path}")
        try:
            with open(config_path, encoding="utf-8") as f:
                loaded = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise UserError(f"cannot parse {config_path}: {_yaml_problem(e)}") from None
        if not isinstance(loaded, dict):
            raise UserError(f"{config_path}: expected a mapping of option names to values")
        if section and isinstance(loaded.get(section), dict):
            loaded = loaded[section]
        values.update(loaded)
    for item in opts or []:
        if "=" not in item:
            raise UserError(f"-o expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        values[key.strip().replace("-", "_")] = value
    return {k.replace("-", "_"): v for k, v in values.items()}


def _yaml_problem(e: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: what is wrong and where."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return " ".join(str(problem).split()) + where


def parse_key_values(items, flag="--option") -> dict:
    """Repeated KEY=VALUE arguments -> dict (values parsed as YAML)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"{flag} expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def parse_with_config(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Precedence: command-line flags > -o overrides > -c file > parser defaults."""
    args = parser.parse_args(argv)
    known = {a.dest for a in parser._actions}
    explicit = _explicit_dests(parser, argv if argv is not None else sys.argv[1:])
    actions = {a.dest: a for a in parser._actions}
    for dest, value in read_overrides(args.config, args.opt).items():
        if dest not in known or dest in ("config", "opt"):
            raise UserError(f"unknown option {dest!r} in config/overrides")
        if dest not in explicit:
            setattr(args, dest, _typed(actions[dest], value))
    apply_threads(args)
    return args


def _typed(action: argparse.Action, value):
    """A -c/-o value checked and converted as the flag itself would be (-o budget=abc is refused the
    way --budget abc is; -o option=topk=8 is one KEY=VALUE item of the repeatable --option)."""
    name = action.option_strings[-1] if action.option_strings else action.dest
    if isinstance(action, argparse._AppendAction):
        if isinstance(value, dict):  # option: {topk: 8} in a -c file
            value = [f"{k}={v}" for k, v in value.items()]
        items = value if isinstance(value, list) else [value]
        return [_convert(action, name, v) for v in items]
    if action.nargs == 0:  # store_true / store_false / store_const
        if not isinstance(value, bool):
            raise UserError(f"{name} is a switch: give true or false, got {value!r}")
        return action.const if value else action.default
    if isinstance(value, list) and action.nargs not in (None, "?"):
        return [_convert(action, name, v) for v in value]
    return _convert(action, name, value)


def _convert(action: argparse.Action, name: str, value):
    if value is None:
        return None
    if isinstance(value, (list, dict)):
        raise UserError(f"{name} takes one value, got {value!r}")
    # As on the command line: the flag's type applied to the text (so 2.5 is not an integer).
    text = str(value).lower() if isinstance(value, bool) else str(value)
    if action.type is not None:
        try:
            value = action.type(text)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
            kind = {int: "an integer", float: "a number"}.get(action.type)
            raise UserError(f"{name}: expected {kind}, got {value!r}" if kind else f"{name}: {e}") from None
    else:
        value = text
    if action.choices is not None and value not in action.choices:
        raise UserError(f"{name}: {value!r} is not one of {', '.join(map(str, action.choices))}")
    return value


def _explicit_dests(parser, argv) -> set:
    flags = {}
    for action in parser._actions:
        for s in action.option_strings:
            flags[s] = action.dest
    out = set()
    for tok in argv:
        name = tok.split("=", 1)[0]
        if name in flags:
            out.add(flags[name])
    return out


def progress_bar(desc: str, unit: str = "step"):
    """A `progress(done, total)` callback drawing a tqdm bar on stderr, and a close() for the end."""
    from tqdm import tqdm

    bar = None

    def progress(done, total=None):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)
        bar.update(done - bar.n)

    def close():
        if bar is not None:
            bar.close()

    return progress, close


def run(main: Callable[[], int]) -> None:
    """Run a tool: user errors become one line on stderr and exit code 2, not a traceback."""
    try:
        code = main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
