"""Typed reads of one mapping of a user's file, each failure a one-line SpecError.

A `Section` knows which file and which key path it reads, so every message says
`job.yaml: image.base: expected a string, got 3`.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any, Iterable

from ..errors import SpecError
from .yamlfile import describe

_MISSING = object()
_DURATION = re.compile(r"(?:([0-9]{1,9})d)?(?:([0-9]{1,9})h)?(?:([0-9]{1,9})m)?(?:([0-9]{1,12})s)?")


def parse_duration(text: str) -> float | None:
    """Seconds in `90`, `90s`, `5m`, `1h30m` or `2d`; None when it is not such a text."""
    text = text.strip()
    if re.fullmatch(r"[0-9]{1,12}", text):
        return float(text)
    match = _DURATION.fullmatch(text)
    if not text or not match:
        return None
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def suggest(name: str, choices: list[str]) -> str | None:
    """The choice a misspelt or shortened `name` most likely meant, if any."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    if close:
        return close[0]
    if len(name) >= 3:
        prefixed = [c for c in choices if c.startswith(name) or name.startswith(c)]
        if len(prefixed) == 1:
            return prefixed[0]
    return None


class Section:
    """One mapping of a user's file, read key by key."""

    def __init__(self, label: str, data: dict[str, Any], prefix: str = "") -> None:
        self.label = label
        self.data = data
        self.prefix = prefix

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def fail(self, name: str, message: str) -> SpecError:
        return SpecError(f"{self.label}: {self.key(name)}: {message}")

    def expected(self, name: str, what: str, got: Any) -> SpecError:
        return self.fail(name, f"expected {what}, got {describe(got)}")

    def check_keys(self, allowed: Iterable[str], required: Iterable[str] = ()) -> None:
        """Refuse keys not in `allowed` (suggesting the nearest) and missing `required` keys."""
        allowed = list(allowed)
        for name in self.data:
            if not isinstance(name, str):
                where = self.prefix.rstrip(".") or "top level"
                raise SpecError(f"{self.label}: {where}: keys must be names, got {describe(name)}")
            if name not in allowed:
                close = suggest(name, allowed)
                hint = f"did you mean '{close}'?" if close else "valid keys: " + ", ".join(allowed)
                where = f"{self.label}: {self.prefix.rstrip('.')}: " if self.prefix else f"{self.label}: "
                raise SpecError(f"{where}unknown key '{name}'; {hint}")
        for name in required:
            if name not in self.data:
                raise self.fail(name, "missing; this key is required")

    def get(self, name: str, default: Any = _MISSING) -> Any:
        value = self.data.get(name, _MISSING)
        if value is _MISSING or value is None:
            if default is _MISSING:
                raise self.fail(name, "missing; this key is required")
            return default
        return value

    def string(self, name: str, default: Any = _MISSING, pattern: str | None = None, what: str = "a string") -> Any:
        value = self.get(name, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, str) or not value.strip():
            raise self.expected(name, what, value)
        if pattern and not re.fullmatch(pattern, value):
            raise self.expected(name, what, value)
        return value

    def integer(self, name: str, default: Any = _MISSING, minimum: int | None = None, maximum: int | None = None) -> Any:
        value = self.get(name, default)
        if value is default and default is not _MISSING:
            return value
        return self.check_int(name, value, minimum, maximum)

    def check_int(self, name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
        if minimum is not None and maximum is not None:
            what = f"an integer from {minimum} to {maximum}"
        elif minimum == 0:
            what = "a non-negative integer"
        elif minimum == 1:
            what = "a positive integer"
        else:
            what = "an integer"
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.expected(name, what, value)
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise self.expected(name, what, value)
        return value

    def boolean(self, name: str, default: Any = _MISSING) -> Any:
        value = self.get(name, default)
        if not isinstance(value, bool):
            raise self.expected(name, "true or false", value)
        return value

    def choice(self, name: str, choices: list[str], default: Any = _MISSING) -> Any:
        value = self.get(name, default)
        if value not in choices:
            raise self.expected(name, "one of " + " | ".join(choices), value)
        return value

    def duration(self, name: str, default: Any = _MISSING, maximum: float | None = None) -> Any:
        """Seconds, from a number or a text such as `1h30m`."""
        value = self.get(name, default)
        if value is default and default is not _MISSING:
            return value
        what = "a duration such as 90s, 30m, 1h or 1h30m"
        if isinstance(value, bool):
            raise self.expected(name, what, value)
        seconds = float(value) if isinstance(value, (int, float)) else None
        if isinstance(value, str):
            seconds = parse_duration(value)
        if seconds is None or not math.isfinite(seconds) or seconds <= 0:
            raise self.expected(name, what, value)
        if maximum is not None and seconds > maximum:
            raise self.expected(name, f"a duration of at most {maximum / 86400:g} days", value)
        return seconds

    def argv_item(self, name: str, value: Any) -> str:
        """A string for a command line or an environment value; integers are taken as written."""
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        raise self.expected(name, 'a string (quote it, e.g. "1.0" or "true")', value)

    def string_list(self, name: str, default: Any = _MISSING) -> Any:
        value = self.get(name, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, list):
            raise self.expected(name, "a list of strings, e.g. [python, train.py]", value)
        return [self.argv_item(f"{name}[{i}]", item) for i, item in enumerate(value)]

    def section(self, name: str) -> "Section":
        value = self.get(name, {})
        if not isinstance(value, dict):
            raise self.expected(name, "a mapping", value)
        return Section(self.label, value, prefix=f"{self.key(name)}.")
