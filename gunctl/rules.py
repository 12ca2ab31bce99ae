"""How an option is declared once: its flag, its rule (kind and range or choices), its help.

A config dataclass in ``gunctl/config.py`` declares each option as a field made with
``opt(default, flag, rule, help)``. Everything else derives from that declaration:

- ``check_declared(config)``: every declared field against its rule (the configs' ``check()``
  call it, then check relations between fields). A caller that is not the CLI (the HTTP
  service, a sweep trial, a test) gets the same one-line ``UsageError`` as the command line.
- ``check_stored(cls, document, where, error)``: the same rules for a stored config (a
  checkpoint's), with the error kind and place of that file.
- ``declared(cls, name)``: the flag, rule and help, for the command line's ``typer.Option``
  (``gunctl.cli.options.option``); the Typer layer declares no ranges of its own.
- config.yaml and checkpoints use the field names (``config.to_dict``).

This module imports nothing heavy: ``gunctl --help`` reads it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from gunctl.errors import GunctlError, UsageError

_KEY = "gunctl.option"


@dataclass(frozen=True)
class Rule:
    """What values an option takes. ``kind``: number, whole, wholes (a tuple of whole
    numbers), choice, flag, text. ``low``/``high`` bound numbers (``math.inf``: no bound),
    ``open_low``/``open_high`` exclude the bound; ``step`` asks for a multiple."""

    kind: str
    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False
    choices: tuple[str, ...] = ()
    step: int = 1

    def check(self, flag: str, value: Any) -> None:
        check = getattr(self, f"_{self.kind}")
        check(flag, value)

    def _number(self, flag: str, value: Any) -> None:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        fits = number and math.isfinite(value)
        fits = fits and (value > self.low if self.open_low else value >= self.low)
        if not (fits and (value < self.high if self.open_high else value <= self.high)):
            raise UsageError(f"{flag}: {self.describe()}, got {value!r}")

    def _whole(self, flag: str, value: Any) -> None:
        whole = isinstance(value, int) and not isinstance(value, bool)
        if not (whole and self.low <= value <= self.high and value % self.step == 0):
            raise UsageError(f"{flag}: {self.describe()}, got {value!r}")

    def _wholes(self, flag: str, values: Any) -> None:
        if not isinstance(values, tuple):
            raise UsageError(f"{flag}: a list of whole numbers, got {values!r}")
        for value in values:
            whole = isinstance(value, int) and not isinstance(value, bool)
            if not (whole and self.low <= value <= self.high):
                raise UsageError(f"{flag}: {self.describe()}, got {value!r}")

    def _numbers(self, flag: str, values: Any) -> None:
        if not isinstance(values, tuple):
            raise UsageError(f"{flag}: a list of numbers, got {values!r}")
        for value in values:
            self._number(flag, value)

    def _device(self, flag: str, value: Any) -> None:
        """The form of --device; whether that device exists here is distributed's question."""
        if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise UsageError(f"{flag} {value}: use auto, cpu, cuda or cuda:N")

    def _choices(self, flag: str, values: Any) -> None:
        if not isinstance(values, tuple):
            raise UsageError(f"{flag}: a list of {', '.join(self.choices)}, got {values!r}")
        for value in values:
            self._choice(flag, value)

    def _choice(self, flag: str, value: Any) -> None:
        if value not in self.choices:
            raise UsageError(f"{flag} {value}: choose one of {', '.join(self.choices)}")

    def _flag(self, flag: str, value: Any) -> None:
        if not isinstance(value, bool):
            raise UsageError(f"{flag}: true or false, got {value!r}")

    def _text(self, flag: str, value: Any) -> None:
        if not isinstance(value, str) or not value or len(value) > 4096:
            raise UsageError(f"{flag}: a non-empty text, got {value!r}")

    def describe(self) -> str:
        """The rule in words, for errors (``a number above 0``) and help (``metavar``)."""
        if self.kind in ("choice", "choices"):
            return "one of " + ", ".join(self.choices)
        if self.kind == "flag":
            return "true or false"
        if self.kind == "text":
            return "a text"
        if self.kind == "device":
            return "auto, cpu, cuda or cuda:N"
        what = {"number": "a number", "numbers": "numbers", "whole": "a whole number"}.get(
            self.kind, "whole numbers"
        )
        if self.step > 1:
            what = f"a multiple of {self.step}"
        lower = (
            ""
            if math.isinf(self.low)
            else (f" above {_plain(self.low)}" if self.open_low else f" from {_plain(self.low)}")
        )
        upper = (
            ""
            if math.isinf(self.high)
            else (f" below {_plain(self.high)}" if self.open_high else f" to {_plain(self.high)}")
        )
        return what + lower + upper

    def metavar(self) -> str:
        """What the value is, once, for ``--help``: ``0-1``, ``N``, ``X>0``, ``a|b|c``."""
        if self.kind in ("choice", "choices"):
            return "|".join(self.choices) if len("|".join(self.choices)) <= 10 else "NAME"
        if self.kind == "wholes":
            return "N,N,..."
        if self.kind == "device":
            return "DEVICE"
        if self.kind == "text":
            return "TEXT"
        if self.kind == "number" and (self.low, self.high) == (0, 1):
            return "0-1"
        if self.kind == "number":
            return "X>0" if (self.low, self.open_low) == (0, True) else "X"
        return "N"


def number(low=-math.inf, high=math.inf, *, open_low=False, open_high=False) -> Rule:
    return Rule("number", low, high, open_low, open_high)


def whole(low=-math.inf, high=math.inf, *, step: int = 1) -> Rule:
    return Rule("whole", low, high, step=step)


def wholes(low=-math.inf, high=math.inf) -> Rule:
    return Rule("wholes", low, high)


def numbers(low=-math.inf, high=math.inf) -> Rule:
    return Rule("numbers", low, high)


def choice(*choices: str) -> Rule:
    return Rule("choice", choices=tuple(choices))


def choices(*names: str) -> Rule:
    """A tuple of values, each one of ``names``."""
    return Rule("choices", choices=tuple(names))


FLAG = Rule("flag")
TEXT = Rule("text")
UNIT = number(0, 1)  # a probability or a score threshold
POSITIVE = number(0, math.inf, open_low=True)
NON_NEGATIVE = number(0, math.inf)
FRACTION = number(0, 1, open_low=True, open_high=True)  # a share of the images
SEED = whole(0, 2**32 - 1)  # numpy's and every library's seed range
DEVICE = Rule("device")


@dataclass(frozen=True)
class Option:
    """One option's declaration (kept in its dataclass field's metadata)."""

    flag: str  # the command line's name, e.g. "--lr"; errors name it
    rule: Rule | None  # None: no rule of its own (a path, a nested config)
    help: str = ""
    builder: bool = False  # a keyword argument of torchvision's detector builders, as it is


def opt(
    default: Any = dataclasses.MISSING,
    flag: str = "",
    rule: Rule | None = None,
    help: str = "",  # noqa: A002 - the word the CLI uses
    *,
    builder: bool = False,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field that declares an option (see the module's docstring)."""
    metadata = {_KEY: Option(flag, rule, help, builder)}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def options(cls) -> dict[str, Option]:
    """{field name: declaration} of a config class (or instance), in field order."""
    return {f.name: f.metadata[_KEY] for f in dataclasses.fields(cls) if _KEY in f.metadata}


def declared(cls, name: str) -> Option:
    return options(cls)[name]


def check_declared(config: Any) -> None:
    """Every declared field of ``config`` against its rule; nested configs too. A field whose
    annotation admits None may be None."""
    nullable = _nullable(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            if options(value):
                check_declared(value)
            continue
        option = field.metadata.get(_KEY)
        if option is None or option.rule is None or (value is None and field.name in nullable):
            continue
        option.rule.check(option.flag or field.name, value)


def check_stored(
    cls, document: dict, where: str, error: type[GunctlError], names: tuple[str, ...] = ()
) -> None:
    """The declared rules for a stored config (a dict read from a file): each present field
    (lists read as tuples); ``error`` names ``where`` and the field. ``names``: only these."""
    nullable = _nullable(cls)
    for name, option in options(cls).items():
        if option.rule is None or name not in document or (names and name not in names):
            continue
        value = document[name]
        if value is None and name in nullable:
            continue
        if isinstance(value, list):
            value = tuple(value)
        try:
            option.rule.check(option.flag or name, value)
        except UsageError as exc:
            raise error(f"{where}.{name}: {exc}") from None


def _nullable(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if "None" in str(f.type)}


def _plain(value: float) -> str:
    if value == 2**32 - 1:
        return "2**32-1"
    return f"{value:g}" if isinstance(value, float) else str(value)
