"""Typed checks for single JSON values, each raising ``InvalidRequest`` that names the field.

Every check takes ``(value, param)`` where ``param`` is the field's path in the
line (``body.messages[2].role``). JSON booleans are not numbers here, NaN and
infinities are refused, and integers are compared, never converted, so no value
of any size can overflow anything.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, NoReturn

from dropbatch.errors import InvalidRequest

Check = Callable[[Any, str], None]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MAX = 2**31 - 1
FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def fail(param: str, message: str, code: str = "invalid_body") -> NoReturn:
    raise InvalidRequest(f"{param} {message}", code=code, param=param)


def kind(value: Any) -> str:
    """The JSON name of a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def is_number(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, float) and math.isfinite(value)
    )


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def number(low: float, high: float) -> Check:
    def check(value: Any, param: str) -> None:
        if not is_number(value) or not low <= value <= high:
            fail(param, f"must be a number from {low:g} to {high:g}, not {_shown(value)}.")

    return check


def integer(low: int, high: int) -> Check:
    def check(value: Any, param: str) -> None:
        if not is_integer(value) or not low <= value <= high:
            fail(param, f"must be an integer from {low} to {high}, not {_shown(value)}.")

    return check


def positive_number(value: Any, param: str) -> None:
    if not is_number(value) or value <= 0:
        fail(param, f"must be a number greater than 0, not {_shown(value)}.")


def boolean(value: Any, param: str) -> None:
    if not isinstance(value, bool):
        fail(param, f"must be a boolean, not {kind(value)}.")


def string(value: Any, param: str) -> None:
    if not isinstance(value, str):
        fail(param, f"must be a string, not {kind(value)}.")


def json_object(value: Any, param: str) -> None:
    if not isinstance(value, dict):
        fail(param, f"must be an object, not {kind(value)}.")


def metadata(value: Any, param: str) -> None:
    """OpenAI's metadata: at most 16 string keys (64 characters) with string values (512)."""
    json_object(value, param)
    if len(value) > 16:
        fail(param, f"may hold at most 16 keys; it holds {len(value)}.")
    for key, item in value.items():
        if len(key) > 64 or not isinstance(item, str) or len(item) > 512:
            fail(f"{param}.{key[:64]}", "keys are strings of at most 64 characters, values strings of at most 512.")


def one_of(*choices: str) -> Check:
    def check(value: Any, param: str) -> None:
        if not isinstance(value, str) or value not in choices:
            fail(param, f"must be one of {', '.join(repr(c) for c in choices)}, not {_shown(value)}.")

    return check


def function_name(value: Any, param: str) -> None:
    if not isinstance(value, str) or not FUNCTION_NAME.fullmatch(value):
        fail(param, "must be 1-64 letters, digits, underscores or dashes.")


def fields(value: Any, param: str, known: dict[str, Check], required: tuple[str, ...] = ()) -> None:
    """An object whose keys are all in ``known`` (null values count as absent), with ``required`` present."""
    json_object(value, param)
    for name in required:
        if value.get(name) is None:
            fail(f"{param}.{name}", "is required.", "missing_required_parameter")
    for name, item in value.items():
        check = known.get(name)
        if check is None:
            fail(f"{param}.{name}", "is not a known parameter.", "unknown_parameter")
        if item is None or (check is string and type(item) is str):  # the common case, without building param
            continue
        check(item, f"{param}.{name}")


def array_of(check: Check, *, min_items: int = 0, max_items: int | None = None) -> Check:
    def run(value: Any, param: str) -> None:
        if not isinstance(value, list):
            fail(param, f"must be an array, not {kind(value)}.")
        if len(value) < min_items or (max_items is not None and len(value) > max_items):
            bound = f"at most {max_items}" if max_items is not None and len(value) > max_items else f"at least {min_items}"
            fail(param, f"must hold {bound} items; it holds {len(value)}.")
        for index, item in enumerate(value):
            check(item, f"{param}[{index}]")

    return run


def _shown(value: Any) -> str:
    if is_integer(value) and value.bit_length() > 64:
        return "an integer beyond 64 bits"  # never printed: str() of a huge int can itself raise
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)
    if isinstance(value, str) and len(value) <= 24:
        return repr(value)
    return kind(value)
