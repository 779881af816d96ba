"""The recipes' command line: options from dataclasses, run configs as files, errors a person can act on.

    def main(argv=None):
        (args,) = parse_args(MyArguments, argv=argv)   # --help, --config run.yaml, --debug
        ...

    if __name__ == "__main__":
        run(main)   # a user error: its one paragraph on stderr, exit status 2

``parse_args`` builds the options with ``HfArgumentParser``, as TRL's recipes do, and adds
``--config FILE``: a YAML or JSON mapping of option names to values. The command line wins
over the file, the file over the recipe's defaults, and each dataclass validates once
(``__post_init__``) on the merged values. A key or value the file gets wrong stops the run
as a wrong flag does, with one ``error:`` line naming the file and the key, exit status 2.
``None`` (or ``null``) sets an optional option to None, on the command line and in a file.

``run`` ends the errors in ``llm_rl.errors.USER_ERRORS`` the way argparse ends a bad flag;
``--debug`` or ``LLM_RL_DEBUG=1`` lets them out with their traceback. Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import get_args, get_type_hints

import yaml
from transformers import HfArgumentParser

from llm_rl.errors import USER_ERRORS
from llm_rl.trainers.config import ConfigError

DEBUG_ENV = "LLM_RL_DEBUG"
FILE_READERS = {".yaml": ("YAML", yaml.safe_load), ".yml": ("YAML", yaml.safe_load), ".json": ("JSON", json.loads)}
NONE_STRINGS = ("None", "none", "null")
NOT_FILE_KEYS = ("config", "debug", "help")  # options of the command line itself, not of the run


# ----------------------------------------------------------------------------- errors
def debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no")


def run(main: Callable, argv: list[str] | None = None):
    """``main(argv)``, with a user error ended as argparse ends a bad flag: one paragraph on stderr, exit status 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return main(argv)
    except USER_ERRORS as error:
        if debug_requested(argv):
            raise
        rank = f"[rank {os.environ.get('RANK')}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        print(f"{rank}{Path(sys.argv[0]).name}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


# ----------------------------------------------------------------------------- parsing
def parse_args(dataclass_types, defaults: dict | None = None, argv: list[str] | None = None) -> tuple:
    """One instance per dataclass, from the command line over ``--config FILE`` over ``defaults``."""
    types = tuple(dataclass_types) if isinstance(dataclass_types, (list, tuple)) else (dataclass_types,)
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(types)
    parser.add_argument(
        "--config", metavar="FILE",
        help="A YAML or JSON file of option values by name (recipes/configs/ has examples); flags given here win.",
    )  # fmt: skip
    parser.add_argument(
        "--debug", action="store_true", help=f"Show the traceback of an error, not only its message (also {DEBUG_ENV}=1)."
    )
    _accept_none(parser, types)
    parser.set_defaults(**(defaults or {}))
    finder = argparse.ArgumentParser(add_help=False)
    finder.add_argument("--config")
    path = finder.parse_known_args(argv)[0].config
    from_file = read_config_file(parser, path) if path else {}
    parser.set_defaults(**from_file)
    try:
        *instances, _ = parser.parse_args_into_dataclasses(args=argv)  # the last: the namespace of --config, --debug
    except ConfigError as error:  # an argparse-style line, not a traceback from inside the dataclass
        parser.exit(2, f"{parser.prog}: error: {error}{_named_in_file(str(error), from_file, argv, path)}\n")
    return tuple(instances)


def _accept_none(parser: argparse.ArgumentParser, types: tuple) -> None:
    """Optional fields (``X | None``) take ``None`` on the command line; HfArgumentParser keeps only X."""
    for dtype in types:
        hints = get_type_hints(dtype)  # the annotations, which HfArgumentParser leaves as they are
        for f in dataclasses.fields(dtype):
            if f.init and type(None) in get_args(hints[f.name]):
                action = parser._option_string_actions[f"--{f.name}"]
                action.type = _or_none(action.type)
                if action.choices is not None:
                    action.choices = [*action.choices, None]


def _or_none(convert: Callable | None) -> Callable:
    def convert_or_none(text):
        return None if text in NONE_STRINGS else (convert(text) if convert else text)

    convert_or_none.__name__ = getattr(convert, "__name__", "str")  # argparse names it: "invalid float value"
    convert_or_none.accepts_none = True
    return convert_or_none


def read_config_file(parser: argparse.ArgumentParser, path: str) -> dict:
    """The option values of a YAML/JSON run config, each checked and converted as argparse converts a flag."""

    def fail(message: str):
        parser.exit(2, f"{parser.prog}: error: --config {path}: {message}\n")

    file = Path(path)
    if file.suffix.lower() not in FILE_READERS:
        fail("a run config is a .yaml, .yml or .json file")
    if not file.is_file():
        fail("no such file")
    kind, reader = FILE_READERS[file.suffix.lower()]
    try:
        values = reader(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as error:
        fail(f"not valid {kind}: {_where(error)}")
    values = {} if values is None else values
    if not isinstance(values, dict):
        fail(f"it must map option names to values, but holds a {type(values).__name__}")
    actions = {}
    for action in parser._actions:  # the first action per name: a bool's --no_X shares X's dest
        if action.option_strings and action.dest not in NOT_FILE_KEYS:
            actions.setdefault(action.dest, action)
    converted = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in actions:
            close = difflib.get_close_matches(name, actions, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            fail(f"unknown key {key!r}: {hint}the keys are the options --help lists, without the dashes")
        converted[name] = _file_value(actions[name], value, lambda message, key=key: fail(f"{key}: {message}"))
    return converted


def _where(error: Exception) -> str:
    """A parser's error as one line: what, and at which line and column."""
    if isinstance(error, json.JSONDecodeError):
        return f"{error.msg} at line {error.lineno}, column {error.colno}"
    mark = getattr(error, "problem_mark", None)
    if isinstance(error, yaml.YAMLError) and mark is not None:
        return f"{error.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(error).split())


def _file_value(action: argparse.Action, value, fail: Callable):
    if value is None:
        if getattr(action.type, "accepts_none", False):
            return None
        fail("null is not allowed here; give a value (--help shows the default)")
    many = action.nargs in ("+", "*")
    if isinstance(value, dict) or (isinstance(value, list) and not many):
        fail(f"expects one value, got {value!r}")
    converted = [_convert(action, item, fail) for item in (value if isinstance(value, list) else [value])]
    return converted if many else converted[0]


def _convert(action: argparse.Action, item, fail: Callable):
    """``item`` through the flag's own type, from its text (so 2.5 is no int and true no number)."""
    text = item if isinstance(item, str) else str(item)
    try:
        result = action.type(text) if action.type else text
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        fail(f"invalid {getattr(action.type, '__name__', 'str')} value: {item!r}")
    if action.choices is not None and result not in action.choices:
        fail(f"invalid choice: {item!r} (choose from {', '.join(repr(c) for c in action.choices)})")
    return result


def _named_in_file(message: str, from_file: dict, argv: list[str], path: str | None) -> str:
    """" (from --config FILE: key)" when the keys a validation message names came from the file."""
    given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in argv if a.startswith("--")}
    words = set(message.replace("=", " ").replace(",", " ").replace(":", " ").split())
    keys = [k for k in from_file if k in words and k not in given]
    return f" (from --config {path}: {', '.join(keys)})" if keys else ""


# ----------------------------------------------------------------------------- writing run configs
def default_values(dataclass_types, defaults: dict | None = None) -> dict:
    """Every option of ``dataclass_types`` with the value it takes when nothing is passed."""
    types = tuple(dataclass_types) if isinstance(dataclass_types, (list, tuple)) else (dataclass_types,)
    values = {}
    for dtype in types:
        for f in dataclasses.fields(dtype):
            if f.init:
                values[f.name] = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return {**values, **{k: v for k, v in (defaults or {}).items() if k in values}}


def config_yaml(dataclass_types, values: dict, title: str) -> str:
    """A YAML run config holding ``values``, each under its option's help text, grouped by dataclass."""
    types = tuple(dataclass_types) if isinstance(dataclass_types, (list, tuple)) else (dataclass_types,)
    lines = [f"# {line}" for line in title.splitlines()]
    for dtype in types:
        lines += ["", f"# --- {dtype.__name__} ---"]
        for f in dataclasses.fields(dtype):
            if f.init and f.name in values:
                help_text = f.metadata.get("help", "")
                lines += textwrap.wrap(help_text, 110, initial_indent="# ", subsequent_indent="# ")
                flow = None if isinstance(values[f.name], list) else False  # lists on one line: [1.0, 0.5]
                lines.append(yaml.safe_dump({f.name: values[f.name]}, default_flow_style=flow, width=10**6).rstrip())
    return "\n".join(lines) + "\n"
