"""Options from a YAML file (``--config``, at most 1 MiB): read with PyYAML's safe loader
without aliases (``fileio.load_yaml``), and checked against the command's option names."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from gunctl.errors import UsageError


def read_options(path: Path, names: list[str]) -> dict[str, Any]:
    """The file's ``{option: value}``; names may be spelt with - or _ (``batch-size``).

    UsageError (exit 2) for a missing or malformed file, and for an unknown key, naming the
    closest valid one.
    """
    import yaml

    from gunctl.core.fileio import MAX_CONFIG_BYTES, TooLarge, load_yaml, open_regular, read_bounded

    try:
        with open_regular(Path(path)) as handle:  # a FIFO is refused, never read (it blocks)
            data = load_yaml(read_bounded(handle, MAX_CONFIG_BYTES).decode("utf-8"))
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
    except TooLarge as exc:
        raise UsageError(f"{path}: not a config file ({exc})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid YAML ({_first_line(exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a config file holds `option: value` lines, not a list or value")
    options = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise UsageError(f"{path}: unknown option {key!r}{_closest(name, names)}")
        options[name] = value
    return options


def _closest(name: str, names: list[str]) -> str:
    found = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    return f" (did you mean {found[0]!r}?)" if found else f" (valid: {', '.join(sorted(names))})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return " ".join(text.split())[:200] if text else type(exc).__name__
