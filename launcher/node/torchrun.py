"""torchrun, as `python -m torch.distributed.run` runs it, without the interpreter's teardown once it
has succeeded.

    python -m launcher.node.torchrun [torchrun's options] COMMAND [ARG ...]

After its ranks have ended, torchrun's interpreter spends 0.2 to 0.4 s of CPU taking torch's modules
apart before the process ends; with one torchrun per node on a machine's shared cores, every node of
the run waits for that. Here, when torchrun returns (its ranks succeeded and its exit barrier is
passed), the exit handlers run (logging's flush among them), the output is flushed and the process
ends at once, with code 0. Anything else (a failed rank, a signal, a bad option) takes torchrun's own
path unchanged: the same traceback, error file and exit code. No thread of torchrun's is left at that
point to be cut short. Only the import of torch is outside the standard library, as torchrun's is.
"""

from __future__ import annotations

import atexit
import os
import sys


def main() -> None:
    from torch.distributed.run import main as torchrun

    torchrun()
    atexit._run_exitfuncs()  # what the interpreter's own exit runs first (logging.shutdown, finalizers)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing left to say to it
            pass
    os._exit(0)


if __name__ == "__main__":
    main()
