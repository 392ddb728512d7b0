"""The command line's parsing: strict parsers (no abbreviations, a did-you-mean for an unknown
option), global flags before a command's name, and what follows `--`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import SpecError
from ..spec.fields import suggest

COMMANDS = ("check", "status", "logs", "stop", "report", "runs", "rm", "prune")  # besides `launch JOB`
GLOBAL_FLAGS = {"--debug": 0, "--runs-dir": 1}  # taken before or after a command's name; how many values each takes

def command_first(argv: list[str]) -> list[str]:
    """`launch --debug logs RUN` as `launch logs RUN --debug`: global flags may come first."""
    lead = 0
    while lead < len(argv) and (argv[lead] in GLOBAL_FLAGS or argv[lead].split("=", 1)[0] in GLOBAL_FLAGS):
        lead += 1 + (GLOBAL_FLAGS.get(argv[lead], 0) if "=" not in argv[lead] else 0)
    if lead and lead < len(argv) and argv[lead] in COMMANDS:
        return [argv[lead], *argv[lead + 1:], *argv[:lead]]
    return argv


def not_a_mistyped_command(argv: list[str]) -> None:
    """`launch stauts` is a mistyped command, not a job file that is missing."""
    first = next((a for a in argv if not a.startswith("-")), None)
    if first and not Path(first).exists() and not first.endswith((".yaml", ".yml")):
        close = suggest(first, list(COMMANDS))
        if close:
            raise SpecError(f"unknown command '{first}'; did you mean '{close}'? (commands: {', '.join(COMMANDS)}, or a job file)")


def split_extra(argv: list[str]) -> tuple[list[str], list[str]]:
    """The launcher's arguments, and what follows `--` (appended to the job's command)."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


class Parser(argparse.ArgumentParser):
    """A command's parser (built with allow_abbrev=False, so `--dry` is not `--dry-run`) that refuses an
    unknown option in one line naming the option it most likely meant."""

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        given = list(sys.argv[1:] if args is None else args)
        for arg in given[: given.index("--") if "--" in given else len(given)]:  # after `--`: arguments
            name = arg.split("=", 1)[0]
            if self._unknown_option(name):
                close = suggest(name, [o for o in self._option_string_actions if o.startswith("--")])
                hint = f"did you mean '{close}'?" if close else f"{self.prog} --help lists the options"
                raise SpecError(f"unknown option '{name}'; {hint}")
        return super().parse_args(given, namespace)

    def _unknown_option(self, name: str) -> bool:
        if not name.startswith("-") or name == "-" or name in self._option_string_actions:
            return False
        if name[1:].replace(".", "", 1).isdigit():  # a negative number: a value (`--rank -1`)
            return False
        return name.startswith("--") or name[:2] not in self._option_string_actions  # `-vv`: short flags run together


def existing_run_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of every command about existing runs; its parser made strict as `Parser` is, whichever
    class built it."""
    parser.__class__, parser.allow_abbrev = Parser, False
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where run ids are looked up (default: ./runs)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
