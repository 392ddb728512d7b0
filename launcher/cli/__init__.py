"""`launch`: the command line (its flags and commands are in the README): arguments in, a run
(`launcher.run.conduct`), a report or an answer about runs out."""

from __future__ import annotations

import os
import signal
import sys
import traceback

from .. import __version__
from ..errors import EXIT_FAILED, EXIT_INTERRUPTED, LaunchError
from ..node.procs import end_now
from . import job as job_commands
from . import runs as run_commands
from .parsing import command_first, not_a_mistyped_command, split_extra

HANDLERS = {  # every command of parsing.COMMANDS: its parser, and what carries it out
    "logs": (run_commands.logs_parser, run_commands.logs),
    "status": (run_commands.status_parser, run_commands.status),
    "stop": (run_commands.stop_parser, run_commands.stop),
    "runs": (run_commands.runs_parser, run_commands.runs),
    "rm": (run_commands.rm_parser, run_commands.rm),
    "prune": (run_commands.prune_parser, run_commands.prune),
    "report": (job_commands.report_parser, job_commands.report),
    "check": (job_commands.check_parser, job_commands.check),
}


def entry() -> None:
    """The `launch` command and `python -m launcher`: `main`, then the process ends without the
    interpreter's teardown (`end_now`: 0.04 s of the user's wait)."""
    end_now(main())


def main(argv: list[str] | None = None) -> int:
    argv = command_first(list(sys.argv[1:] if argv is None else argv))
    debug = "--debug" in argv
    for sig in (signal.SIGTERM, signal.SIGHUP):  # outside a run's watch loop these end like Ctrl-C,
        if signal.getsignal(sig) is not signal.SIG_IGN:  # unless ignored from the start (nohup)
            signal.signal(sig, _sigterm)
    try:
        if argv[:1] == ["--version"]:
            print(f"launch {__version__}")
            return 0
        if argv and argv[0] in HANDLERS:
            parser, command = HANDLERS[argv[0]]
            return command(parser().parse_args(argv[1:]))
        not_a_mistyped_command(argv)
        args, extra = split_extra(argv)
        return job_commands.run_job(job_commands.run_parser().parse_args(args), extra)
    except LaunchError as exc:
        if debug:
            traceback.print_exc()
        print(f"launch: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("launch: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `launch logs RUN | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # noqa: BLE001 - the safety net: one line, the traceback kept in a file
        return _unexpected(exc, debug)


def _unexpected(exc: Exception, debug: bool) -> int:
    """An error the launcher did not expect, in one line that says where its traceback is: the
    launcher-error.txt of the run directory this launch made, while that run has not ended (an error
    while deploying or writing its inputs; an attached run keeps its own), else ~/.cache/launch/last-error.txt."""
    from ..image.wheels import CACHE
    from ..record import rundir

    text = traceback.format_exc()
    if debug:
        print(text, file=sys.stderr, end="")
    places = [CACHE / "last-error.txt"]
    if rundir.MADE and not rundir.MADE[-1].summary_file.exists():  # the run had not ended: the error is its own
        places.insert(0, rundir.MADE[-1].error_file)
    kept = ""
    for place in places:
        try:
            place.parent.mkdir(parents=True, exist_ok=True)
            place.write_text(text)
        except OSError:
            continue
        kept = f"; the traceback is in {place}"
        break
    message = " ".join(str(exc).split()).encode("utf-8", "backslashreplace").decode()  # one line, whatever it holds
    print(f"launch: unexpected error: {type(exc).__name__}: {message}{kept}" + ("" if debug else " (--debug prints it)"),
          file=sys.stderr)
    return EXIT_FAILED


def _sigterm(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt
