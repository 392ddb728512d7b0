"""torchrun, as `python -m torch.distributed.run` runs it, without the interpreter's teardown once it
has succeeded.

    python -m launcher.node.torchrun [torchrun's options] COMMAND [ARG ...]

After its ranks have ended, torchrun's interpreter spends 0.2 to 0.4 s of CPU taking torch's modules
apart before the process ends; with one torchrun per node on a machine's shared cores, every node of
the run waits for that. Here, when torchrun returns (its ranks succeeded and its exit barrier is
passed), the process ends at once with code 0 (`procs.end_now`: exit handlers run, output flushed).
Not node 0 of a run of several nodes: its torchrun holds the rendezvous store, which the other nodes
may still be asking as they leave their own exit barrier; it ends the usual way, as torchrun alone
does. Anything else (a failed rank, a signal, a bad option) takes torchrun's own path unchanged: the
same traceback, error file and exit code. Only the import of torch is outside the standard library,
as torchrun's is.
"""

from __future__ import annotations

import sys

from .procs import end_now


def main() -> None:
    from torch.distributed.run import main as torchrun, parse_args, parse_min_max_nnodes

    args = parse_args(sys.argv[1:])
    holds_the_store = args.node_rank == 0 and parse_min_max_nnodes(args.nnodes)[1] > 1
    torchrun()
    if not holds_the_store:
        end_now(0)


if __name__ == "__main__":
    main()
