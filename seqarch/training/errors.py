"""Config errors that name the key path: ``train.steps: expected a positive integer, got 0``.

pydantic reports where an error is (``("train", "steps")``) and what went wrong; this
turns that into the one-line messages seqarch uses everywhere, one line per bad key.
"""

from __future__ import annotations

import re

from pydantic import ValidationError

# Parts of a pydantic error location that name a branch of a union type, not a key.
_TYPE_TAG = re.compile(r"^(str|int|float|bool|none|list\[.*\]|dict\[.*\]|tuple\[.*\]|function-.*|.*\[.*\]\(.*\))$")
# A message that already starts with its key path (``sweep.d_model: ...``, ``architectures[1] (m2): ...``).
_STARTS_WITH_PATH = re.compile(r"^[\w.\[\]]+( \([^)]*\))?: ")
# A message of a check that names its field (``d_model: expected a positive integer, got 0``).
_STARTS_WITH_FIELD = re.compile(r"^[a-z_]+: ")


class NonFiniteLossError(RuntimeError):
    """The loss, a gradient or a weight became NaN or infinite; checkpoints written before are kept as they were."""


class ConfigError(ValueError):
    """A run config that cannot run; the message names the key path."""


def key_path(loc: tuple) -> str:
    """``("architectures", 0, "d_model")`` -> ``architectures[0].d_model``."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not _TYPE_TAG.match(str(part)):
            path += f".{part}" if path else str(part)
    return path


def _describe(error: dict) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "value_error":
        return str(ctx.get("error", error["msg"])).removeprefix("value: ")
    got = f", got {error['input']!r}"
    expected = {
        "missing": "expected a value, got none",
        "literal_error": f"expected {ctx.get('expected')}{got}",
        "greater_than_equal": f"expected a number >= {ctx.get('ge')}{got}",
        "less_than_equal": f"expected a number <= {ctx.get('le')}{got}",
        "too_short": f"expected a non-empty list{got}",
    }.get(kind)
    if expected is not None:
        return expected
    return "expected " + error["msg"].removeprefix("Input should be ").removeprefix("Value error, ") + got


def option_error(option: str, error: ValidationError) -> str:
    """A command-line option's value refused by the config field that holds the same setting:
    ``--gpus: expected a positive integer, got -1`` (the field's own rule, under the option's name)."""
    message = _describe(error.errors(include_url=False)[0])
    return f"{option}: {_STARTS_WITH_FIELD.sub('', message, count=1)}"


def nested(path: str, error: Exception | str) -> str:
    """``error``'s message under ``path``: ``model.d_model: ...`` for a check naming its field, else ``path: ...``."""
    message = str(error)  # a ValueError or already a message
    return f"{path}.{message}" if _STARTS_WITH_FIELD.match(message) else f"{path}: {message}"


def format_validation_error(error: ValidationError) -> str:
    """One line per bad key path (the first problem found at each)."""
    lines: dict[str, str] = {}
    for item in error.errors(include_url=False):
        path, message = key_path(item["loc"]), _describe(item)
        if not path:
            line = message if _STARTS_WITH_PATH.match(message) else f"config: {message}"
        else:
            line = nested(path, message)
        lines.setdefault(path or line, line)
    return "\n".join(lines.values())


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message names the file."""
