"""How ``--help`` shows options: what a value is, once, and names that leave room for the help.

Typer shows each value's Python type (``<list[str]>``, ``<float>``) in a column of its own and
each option's negative form and short name in two more, which at 100 columns squeezes the help
text into a narrow strip. Here every option that takes a value gets a short metavar (``N``,
``X``, ``PATH``, ``TEXT``, ``0-1``; a declared rule's own is kept), and in the help only,
``--amp/--no-amp`` shows as ``--[no-]amp`` and ``--quiet``/``-q`` as ``--quiet, -q``, in one
column. Parsing never sees the help's copies.
"""

from __future__ import annotations

import copy

_BY_TYPE = {"int": "N", "float": "X", "Path": "PATH", "str": "TEXT", "list[str]": "TEXT"}


def set_metavars(params) -> None:
    """Give every option without one a metavar: flags none, values what they are. (An
    argument's metavar would replace its name: ``for_help`` shows its value instead.)"""
    for param in params:
        if param.metavar is not None or param.param_type_name != "option":
            continue
        param.metavar = "" if getattr(param, "is_flag", False) else _value(param)


def _value(param) -> str:
    """``N``, ``X``, ``PATH``, ``TEXT``; a Typer range with both ends as ``0-1``, ``0-65535``."""
    bare = getattr(param, "bare_type", None)
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    if low is not None and high is not None and len(f"{low:g}-{high:g}") <= 9:
        return f"{low:g}-{high:g}"
    return _BY_TYPE.get(bare() if bare else "", "VALUE")


def for_help(params) -> list:
    """Copies of ``params`` for the help: an option's names in one column (``--[no-]amp``,
    ``--quiet, -q``), an argument's value as an option's (``PATH``, not ``<path>``)."""
    shown = []
    for param in params:
        copied = copy.copy(param)
        if param.param_type_name == "option":
            copied.opts, copied.secondary_opts = [_names(param)], []
            copied.min = copied.max = None  # in the metavar, or a one-sided bound said in words
        elif param.metavar is None:
            copied.display_type_rich = lambda ctx, value=_value(param): value
        shown.append(copied)
    return shown


def _names(param) -> str:
    longs = [o for o in param.opts if o.startswith("--")]
    shorts = [o for o in param.opts if not o.startswith("--")]
    if not longs:
        return ", ".join(param.opts)
    names = longs[:1]
    negative = [o for o in param.secondary_opts if o.startswith("--")]
    if negative == [f"--no-{longs[0][2:]}"]:
        names = [f"--[no-]{longs[0][2:]}"]
    elif negative:
        names = [f"{longs[0]}/{negative[0]}"]
    return ", ".join(names + longs[1:] + shorts)
