"""What the ranks print, made safe for the user's terminal.

A rank's bytes go to its log file as written; on the console they pass through `printable`:
control characters (a NUL, a bell, `ESC]0;...` that retitles the terminal, `ESC[2J` that clears it)
are shown in caret notation (`^[`, `^@`) instead of acting on the terminal. Colour sequences
(`ESC[...m`) are kept when the console is a terminal. A carriage return redraws a line on a
terminal (progress bars): only what follows the last one is shown, after the line's own prefix.
"""

from __future__ import annotations

import re
from typing import BinaryIO

_SGR = re.compile(r"\x1b\[[0-9;]{0,32}m")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\x80-\x9f]")
_PREFIX = re.compile(r"^\[[^\]\s]{1,300}\] ")


def _caret(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if code < 0x20:
        return "^" + chr(code + 64)
    if code == 0x7F:
        return "^?"
    return f"\\x{code:02x}"


def printable_text(text: str, colour: bool = False) -> str:
    """One line of text (no line break) as it may reach a terminal."""
    text = text.rstrip("\r")
    if "\r" in text:
        prefix = _PREFIX.match(text)
        head = prefix.group() if prefix else ""
        text = head + text[len(head):].rsplit("\r", 1)[1]
    if not colour:
        return _CONTROL.sub(_caret, text)
    kept = _SGR.split(text)
    codes = _SGR.findall(text)
    out = [_CONTROL.sub(_caret, kept[0])]
    for code, part in zip(codes, kept[1:]):
        out += [code, _CONTROL.sub(_caret, part)]
    return "".join(out)


def printable(line: bytes, colour: bool = False) -> bytes:
    """One line of a rank's output (bytes, ending in a line break or not) as it may reach a terminal;
    bytes that are not UTF-8 are shown as U+FFFD."""
    body = line[:-1] if line.endswith(b"\n") else line
    return printable_text(body.decode("utf-8", "replace"), colour).encode() + b"\n"


class SafeOut:
    """A binary stream for rank output that writes each line through `printable`."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        try:
            self.colour = stream.isatty()
        except (AttributeError, ValueError):
            self.colour = False

    def write(self, data: bytes) -> int:
        for line in data.split(b"\n"):  # not splitlines(): a lone carriage return is not a line's end here
            if line:
                self.stream.write(printable(line, self.colour))
        return len(data)

    def flush(self) -> None:
        self.stream.flush()
