"""Config mistakes as one short message naming the key and what it accepts.

jsonargparse reports a wrong value inside a `class_path` section as a nested "does not validate
against any of the Union subtypes" report after the whole usage text (some 80 lines for a
one-word typo), and a value a class's `__init__` refuses (`method: banana`) as a Python traceback.
`short_parser_error` reduces either report to `key: what is wrong`, with the accepted values or,
for an unknown option, the class's options and the closest match. `JSONARGPARSE_DEBUG=true` keeps
jsonargparse's own full report and the traceback.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import sys
from typing import NoReturn

from lightning.pytorch.cli import LightningArgumentParser

DEBUG_ENV = "JSONARGPARSE_DEBUG"  # jsonargparse's own switch for its full reports
# jsonargparse's bookkeeping lines around the one that says what is wrong
_STRUCTURE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value type:")


class ConfigError(Exception):
    """A config that cannot run; the message names the key and the value (printed without a traceback)."""


def debug_requested() -> bool:
    return os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")


def _type_name(expected: str) -> str:
    """`<class 'int'>` -> `int`; `typing.Literal['a', 'b']` -> `one of 'a', 'b'`."""
    expected = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", expected)
    literal = re.fullmatch(r"typing\.Literal\[(.*)\]", expected)
    return f"one of {literal.group(1)}" if literal else expected


def import_class(class_path: str) -> type | None:
    """The class a config's `class_path` names, or None when it does not import (the parser says why)."""
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def class_options(class_path: str) -> list[str]:
    """The `__init__` parameters of `class_path` (empty when it does not import)."""
    cls = import_class(class_path)
    if cls is None:
        return []
    parameters = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in parameters if p.name != "self"
            and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]


def short_parser_error(message: str) -> str:
    """jsonargparse's (nested) error report -> `key: what is wrong[, got value]` (module docstring)."""
    keys: list[str] = []
    class_path = unknown = got = None
    expected: list[str] = []
    other: list[str] = []
    for line in message.splitlines():
        text = line.strip().removeprefix("- ")
        key = re.match(r'Parser key "([^"]+)":\s*(.*)', text)
        if key:
            keys.append(key.group(1))
            text = key.group(2)
        if not text or text.startswith(_STRUCTURE) or text == "Expected a <class 'NoneType'>":
            continue
        if match := re.match(r"Problem with given class_path '([^']+)':", text):
            class_path = match.group(1)
        elif match := re.match(r"Option '([^']+)' is not accepted", text):
            unknown = match.group(1)
        elif match := re.match(r"Given value: (.*)", text):
            value = match.group(1)
            if got is None and not value.startswith(("NestedArg(", "Namespace(")):
                got = value
            if class_path is None and (match := re.search(r"class_path='([^']+)'", value)):
                class_path = match.group(1)  # a value the class's __init__ refused
        elif match := re.match(r"Expected a (.+?)(?:\. Got value: (.*))?$", text):
            expected.append(_type_name(match.group(1)))
            got = match.group(2) if match.group(2) is not None else got
        else:
            other.append(text)
    where = keys[0] if keys else ""
    if class_path is not None and (len(keys) > 1 or unknown):
        where = ".".join([where, "init_args", *keys[1:], *([unknown] if unknown else [])])
    if unknown:
        options = class_options(class_path) if class_path else []
        close = difflib.get_close_matches(unknown, options, n=1)
        detail = (f"{class_path.rpartition('.')[2] if class_path else 'this class'} has no option {unknown!r}"
                  + (f" (did you mean {close[0]!r}?)" if close else "")
                  + (f"; its options: {', '.join(options)}" if options else ""))
    elif expected:
        detail = f"expected {' or '.join(dict.fromkeys(expected))}" + (f", got {got}" if got is not None else "")
    else:
        detail = "; ".join(other) or message.strip()
        if class_path is not None and not keys:
            detail = f"{class_path}: {detail}"
    return f"{where}: {detail}" if where else detail


def refused_value_message(err: ValueError) -> str:
    """`short_parser_error` of the report jsonargparse wraps a class's own ValueError in, with that
    error's type when it is more specific (an `UnsafeCheckpointError` from loading a weights file)."""
    root: BaseException = err
    while (root.__cause__ or root.__context__) is not None:
        root = root.__cause__ or root.__context__
    message = short_parser_error(str(err))
    return message if type(root) is ValueError else f"{type(root).__name__}: {message}"


class SignLabArgumentParser(LightningArgumentParser):
    """LightningArgumentParser whose errors are one short message (`short_parser_error`) and a
    pointer to `--help`, not the usage text; exit code 2 as before."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or debug_requested():
            super().error(message, ex)
        prog = (getattr(ex, "subcommand_parser", None) or self).prog.replace(" [options]", "")
        sys.stderr.write(f"{prog}: config error: {short_parser_error(message)}\n"
                         f"({prog} --help lists every option; {DEBUG_ENV}=true shows the parser's full report)\n")
        self.exit(2)
