"""The launcher's own exceptions: each carries the exit code the CLI returns for it."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class LaunchError(Exception):
    """An expected failure: the CLI prints its message in one line, without a traceback."""

    exit_code = EXIT_FAILED


class SpecError(LaunchError):
    """Bad input in job.yaml, cluster.yaml or on the command line; nothing was started."""

    exit_code = EXIT_BAD_INPUT


class RunError(LaunchError):
    """The run could not be carried out (a process failed to start, a run directory clash, ...)."""

    exit_code = EXIT_FAILED
