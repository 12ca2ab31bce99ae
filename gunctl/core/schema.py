"""Field checks for the files gunctl reads back (manifest.json, split.json, checkpoints).

A spec maps a key to a kind; a kind ending in ``?`` may be missing or None. Kinds:
``int``, ``int>=0``, ``int>=1``, ``number`` (int or float, finite), ``number>0``,
``number>=0``, ``fraction`` (0 < x < 1), ``unit`` (0 <= x <= 1), ``seed``, ``str``, ``bool``,
``dict``, ``list``, ``sha256`` (64 hex digits), ``name`` (one plain path component, see
``paths.safe_name``). Unknown keys are left alone (a newer writer may add some).
Any mismatch is one line naming the file, the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from gunctl.errors import DataError, GunctlError

SEED_RANGE = (0, 2**32 - 1)  # numpy's and every library's seed range; torch takes it too
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def check_fields(
    document: Any,
    spec: dict[str, str],
    where: str,
    error: type[GunctlError] = DataError,
    allow_missing: bool = False,
) -> dict:
    """``document`` itself when every field of ``spec`` is of its kind; else ``error``.

    ``allow_missing``: absent keys are fine (a config stored by an older version).
    """
    if not isinstance(document, dict):
        raise error(f"{where}: expected an object, found {type(document).__name__}")
    for key, kind in spec.items():
        optional = kind.endswith("?")
        value = document.get(key)
        if key not in document and allow_missing:
            continue
        if key not in document or value is None:
            if optional:
                continue
            raise error(f"{where}: missing {key!r}")
        problem = kind_problem(value, kind.rstrip("?"))
        if problem:
            raise error(f"{where}: {key!r} {problem}")
    return document


def kind_problem(value: Any, kind: str) -> str | None:
    """Why ``value`` is not of ``kind``, or None."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    is_number = (is_int or isinstance(value, float)) and math.isfinite(value)
    checks = {
        "int": (is_int, "must be an integer"),
        "int>=0": (is_int and value >= 0, "must be an integer >= 0"),
        "int>=1": (is_int and value >= 1, "must be an integer >= 1"),
        "int>=2": (is_int and value >= 2, "must be an integer >= 2"),
        "seed": (is_int and SEED_RANGE[0] <= value <= SEED_RANGE[1], "must be 0 to 2**32-1"),
        "number": (is_number, "must be a finite number"),
        "number>0": (is_number and value > 0, "must be a number > 0"),
        "number>=0": (is_number and value >= 0, "must be a number >= 0"),
        "fraction": (is_number and 0 < value < 1, "must be between 0 and 1 (exclusive)"),
        "unit": (is_number and 0 <= value <= 1, "must be between 0 and 1"),
        "str": (isinstance(value, str), "must be a string"),
        "bool": (isinstance(value, bool), "must be true or false"),
        "dict": (isinstance(value, dict), "must be an object"),
        "list": (isinstance(value, list), "must be a list"),
        "sha256": (isinstance(value, str) and bool(_SHA256.match(value)), "must be a SHA-256"),
    }
    if kind == "name":
        from gunctl.core.paths import name_problem

        problem = name_problem(value)
        return f"{value!r}: {problem}" if problem else None
    ok, expected = checks[kind]
    return None if ok else f"{expected}, found {_shown(value)}"


def dataclass_spec(cls, ranges: dict[str, str] | None = None) -> dict[str, str]:
    """A spec from a config dataclass's annotations (int, float, str, bool, ``X | None``),
    with ``ranges`` overriding the kind of some fields; nested dataclasses are left out."""
    kinds = {"int": "int", "float": "number", "str": "str", "bool": "bool"}
    spec = {}
    for field in dataclasses.fields(cls):
        parts = [p.strip() for p in str(field.type).split("|")]
        base = [p for p in parts if p != "None"]
        if len(base) == 1 and base[0] in kinds:
            spec[field.name] = kinds[base[0]] + ("?" if "None" in parts else "")
    spec.update(ranges or {})
    return spec


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}"
