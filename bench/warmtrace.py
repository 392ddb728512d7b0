"""Where a launch's time goes (bench/warmpath.py --profile): one launch traced on both sides.

Here, the launcher runs in a child process (`python bench/warmtrace.py TRACE -- JOB ARGS...`) with its
SSH round trips (connect, every command, channel opens) and its main steps wrapped, each call a
JSON line of TRACE (what, where in the launcher, host, thread, start, end). On the lab hosts (network
namespaces of this machine, so their processes are in this /proc), a sampler notes when each
process of a node starts and ends: the ssh session, the node supervisor, torchrun, the rank wrapper,
the job. The same sampler watches a start by hand, for comparison. Times are seconds from the
command's start.
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_S = 0.03
KINDS = ("ssh session", "node supervisor", "torchrun", "rank wrapper", "job")

class Tracer:
    """Spans (what, where in the launcher, host, thread, start and end, seconds from T0) as JSON lines."""

    def __init__(self, path: str, t0: float) -> None:
        self.fh = open(path, "a", buffering=1)
        self.t0 = t0
        self.lock = threading.Lock()
        self.local = threading.local()

    def record(self, what: str, start: float, end: float, host: str = "", where: str = "", depth: int = 0) -> None:
        line = json.dumps({"what": what, "start": round(start - self.t0, 4), "end": round(end - self.t0, 4), "host": host,
                           "where": where, "depth": depth, "thread": threading.current_thread().name})
        with self.lock:
            self.fh.write(line + "\n")

    def wrap(self, owner, name: str, label, host_of) -> None:
        """Replace owner.name by a function that records each call (label(args) says what it was)."""
        original = getattr(owner, name)
        tracer = self

        def traced(*args, **kwargs):
            depth = getattr(tracer.local, "depth", 0)
            tracer.local.depth = depth + 1
            start = time.time()
            try:
                return original(*args, **kwargs)
            finally:
                tracer.local.depth = depth
                tracer.record(label(args), start, time.time(), _safe(host_of, args), _caller(), depth)

        setattr(owner, name, traced)
        for module in list(sys.modules.values()):  # names bound by `from .ssh import run` elsewhere
            if getattr(module, "__name__", "").startswith("launcher") and getattr(module, name, None) is original:
                setattr(module, name, traced)


def _safe(fn, args) -> str:
    try:
        return str(fn(args))
    except Exception:  # noqa: BLE001 - a span without a host is still a span
        return ""


def _caller() -> str:
    """The innermost launcher function below the traced one, `file:function`, with its caller's name."""
    frame = sys._getframe(2)
    while frame and ("launcher/hosts/ssh.py" in frame.f_code.co_filename or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    while frame and "/launcher/" not in frame.f_code.co_filename:
        frame = frame.f_back
    if frame is None:
        return ""
    path = frame.f_code.co_filename.split("/launcher/", 1)[1]
    parent = frame.f_back
    while parent and parent.f_code.co_filename == __file__:  # another traced function: name what it wraps
        parent = parent.f_back
    return f"{path}:{frame.f_code.co_name} < {parent.f_code.co_name if parent else ''}"


def _command_label(args) -> str:
    from launcher.backends import ssh as lab
    from launcher.hosts import ports
    from launcher.plan.hostproc import HOST_WRAPPER
    from launcher.sync import hosts as sync

    argv = list(args[1]) if len(args) > 1 else []
    script = argv[2] if argv[:2] == ["sh", "-c"] and len(argv) > 2 else ""
    named = {ports._LISTENERS: "port check (ss)", sync._LIST: "list workdir copies", sync._PRUNE: "prune workdir copies",
             sync._RECEIVE: "receive workdir", lab._START: "start node (folders, helpers, then its command)"}
    if script in named:
        return named[script]
    if HOST_WRAPPER in argv:
        return "start node (setsid supervisor ...)"
    for needle, label in (("cat >", "write secrets"), ("rmdir", "remove node dir"),
                          ("kill -TERM", "stop process group")):
        if needle in script:
            return label
    if argv[:2] == ["tar", "-xz"]:
        return "copy launcher helpers (tar.gz)"
    return shlex.join(argv)[:60]


def _install(tracer: Tracer) -> None:
    """Every SSH round trip (connect, command, channel) and the launcher's steps around them."""
    from launcher.backends import deploy, local
    from launcher.backends import ssh as lab
    from launcher.hosts import ssh
    from launcher.record import outcome
    from launcher.run import attach, conduct, events, finish
    from launcher.sync import hosts as sync

    conn_host = lambda a: a[0].host  # noqa: E731
    node_host = lambda a: a[1].host  # noqa: E731
    tracer.wrap(ssh, "connect", lambda a: "ssh connect (TCP, kex, auth)", lambda a: a[0].name)
    tracer.wrap(ssh, "pipe_into", _command_label, conn_host)
    tracer.wrap(ssh, "open_command", lambda a: "open channel + exec: " + _command_label(a), conn_host)
    tracer.wrap(ssh, "open_after", lambda a: "until ready: " + _command_label(a), conn_host)
    tracer.wrap(ssh, "as_ssh_reaches", lambda a: "read ssh config per host", lambda a: "")
    for name in ("plan_for", "send", "prune"):
        tracer.wrap(sync, name, lambda a, name=name: f"workdir {name}", conn_host)
    for name in ("connect_all", "detect_nics", "provide_workdir"):
        tracer.wrap(deploy, name, lambda a, name=name: f"deploy.{name}", lambda a: "")
    for name in ("_start", "collect", "close", "renew"):
        tracer.wrap(lab.SshBackend, name, lambda a, name=name: f"SshBackend.{name}",
                    node_host if name != "close" else (lambda a: ""))
    for name in ("scan", "render"):
        tracer.wrap(conduct, name, lambda a, name=name: f"conduct: {name}", lambda a: "")
    for module in (deploy, local):
        tracer.wrap(module, "make_plan", lambda a: "make_plan", lambda a: "")
    tracer.wrap(finish, "collect_all", lambda a: "finish.collect_all", lambda a: "")
    tracer.wrap(finish, "build_summary", lambda a: "finish.build_summary", lambda a: "")
    for name in ("_submit", "_stop_all"):
        tracer.wrap(attach.Attached, name, lambda a, name=name: f"Attached.{name}", lambda a: "")
    _trace_events(tracer, events, outcome)


def _trace_events(tracer: Tracer, events, outcome) -> None:
    """The nodes' events as marks (when the launcher read them), and the phases as spans."""
    on_event = events.RunView.on_event

    def traced_event(self, host: str, event: dict):
        now = time.time()
        kind = event.get("event")
        if kind in ("rank-start", "rank-end", "node-end"):
            tracer.record(f"event {kind}", now, now, host)
        return on_event(self, host, event)

    events.RunView.on_event = traced_event
    timing = outcome.Phases.timing

    def traced_timing(self, name: str):
        start = time.time()
        inner = timing(self, name)

        class Span:
            def __enter__(self):
                return inner.__enter__()

            def __exit__(self, *exc):
                tracer.record(f"phase {name}", start, time.time())
                return inner.__exit__(*exc)

        return Span()

    outcome.Phases.timing = traced_timing


def traced_launch(trace: str, argv: list[str]) -> int:
    """The launcher's main, in this process, traced."""
    tracer = Tracer(trace, float(os.environ["WARMPATH_T0"]))
    up = time.time()
    sys.path.insert(0, str(ROOT))
    import fabric  # noqa: F401 - what a launch to lab hosts imports, timed as one step here
    import launcher.cli
    import launcher.backends.deploy  # noqa: F401
    import launcher.backends.ssh  # noqa: F401

    tracer.record("python started; imports of the launcher, fabric, paramiko", tracer.t0, time.time())
    tracer.record("  of which: the interpreter's own start", tracer.t0, up)
    _install(tracer)
    start = time.time()
    code = launcher.cli.main(argv)
    tracer.record("launcher main()", start, time.time())
    return code


# ---- the lab hosts' side: their processes, from this machine's /proc

def _kind(argv: list[str]) -> str | None:
    if argv and argv[0].startswith("sshd:") and "@" in argv[0]:
        return "ssh session"
    if len(argv) < 2 or "python" not in os.path.basename(argv[0]):
        return None
    module = argv[2] if argv[1] == "-m" and len(argv) > 2 else ""
    named = {"launcher.node.supervisor": "node supervisor", "torch.distributed.run": "torchrun", "launcher.node.torchrun": "torchrun",
             "launcher.node.rankexec": "rank wrapper"}
    return named.get(module) or ("job" if "job.py" in argv[1:3] else None)


class ProcSampler:
    """Every SAMPLE_S, the processes of the lab's hosts: when each kind (KINDS) was first and last seen, by host."""

    def __init__(self, lab, t0: float) -> None:
        self.t0 = t0
        self.hosts = {os.stat(f"/run/netns/{h.netns}").st_ino: h.name for h in lab.hosts}
        self.seen: dict[tuple[int, str], list] = {}  # (pid, kind) -> [host, first, last]
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "ProcSampler":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()

    def _loop(self) -> None:
        while not self.done.is_set():
            now = time.time() - self.t0
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    self._look(int(entry), now)
            self.done.wait(SAMPLE_S)

    def _look(self, pid: int, now: float) -> None:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
            host = self.hosts.get(os.stat(f"/proc/{pid}/ns/net").st_ino)
        except OSError:
            return
        kind = _kind(argv) if host else None
        if kind:
            self.seen.setdefault((pid, kind), [host, now, now])[2] = now

    def by_host(self) -> dict[str, dict[str, tuple[float, float]]]:
        """host -> kind -> (first seen, last seen) of its first process of that kind (ssh sessions: the
        first start and the last end of any)."""
        found: dict[str, dict[str, tuple[float, float]]] = {}
        for (_, kind), (host, first, last) in sorted(self.seen.items(), key=lambda item: item[1][1]):
            kinds = found.setdefault(host, {})
            if kind not in kinds:
                kinds[kind] = (first, last)
            elif kind == "ssh session":
                kinds[kind] = (kinds[kind][0], max(kinds[kind][1], last))
        return found


# ---- the parent's side

def profile(lab, tmp: Path, n: int, job: Path, by_hand, port: int) -> None:
    """One traced launch on the first `n` hosts and one start by hand, both sampled; printed."""
    trace = tmp / f"trace{n}.jsonl"
    argv = [sys.executable, __file__, str(trace), "--", str(job), "--runs-dir", str(tmp / "runs")]
    t0 = time.time()
    with ProcSampler(lab, t0) as launched:
        result = subprocess.run(argv, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1", WARMPATH_T0=repr(t0)),
                                capture_output=True, text=True)
        ended = time.time() - t0
    if result.returncode != 0:
        sys.exit(f"the traced launch failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}")
    spans = [json.loads(line) for line in trace.read_text().splitlines()]
    summary = max((tmp / "runs").glob("*/summary.json"), key=lambda p: p.stat().st_mtime)
    print_trace(n, spans, ended, json.loads(summary.read_text()).get("phases_s", {}))
    print_hosts(f"N={n}: the launch, on the hosts", launched.by_host(), ended)
    t0 = time.time()
    with ProcSampler(lab, t0) as hand:
        by_hand(lab, n, port)
        ended = time.time() - t0
    print_hosts(f"N={n}: by hand, on the hosts", hand.by_host(), ended)


def print_hosts(title: str, hosts: dict[str, dict[str, tuple[float, float]]], ended: float) -> None:
    """Per kind of process: when it started and ended, median and last over the hosts."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{title} (seconds from the command's start; the command ended at {ended:.2f})")
    for col in ("process", "hosts", "started: median", "last", "ended: median", "last"):
        table.add_column(col, justify="left" if col == "process" else "right")
    for kind in KINDS:
        times = [kinds[kind] for kinds in hosts.values() if kind in kinds]
        if times:
            starts, ends = [t[0] for t in times], [t[1] for t in times]
            table.add_row(kind, str(len(times)), f"{statistics.median(starts):.2f}", f"{max(starts):.2f}",
                          f"{statistics.median(ends):.2f}", f"{max(ends):.2f}")
    Console(width=160).print(table)


def print_trace(n: int, spans: list[dict], ended: float, phases: dict[str, float]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=220)
    main_span = next(s for s in spans if s["what"] == "launcher main()")
    console.print(f"\nN={n}: launcher main() from {main_span['start']:.2f} s to {main_span['end']:.2f} s; process ended {ended:.2f} s")
    for kind in ("rank-start", "rank-end", "node-end"):
        marks = sorted((s["start"], s["host"]) for s in spans if s["what"] == f"event {kind}")
        console.print(f"N={n}: {kind} read by the launcher: " + ", ".join(f"{host} {t:.2f}" for t, host in marks))
    console.print(f"N={n}: phases (summary.json): " + ", ".join(f"{k} {v:.2f} s" for k, v in phases.items()))
    groups: dict[tuple[str, str], list[dict]] = {}
    for span in spans:
        if span["what"] != "SshBackend.renew" and not span["what"].startswith("event "):
            groups.setdefault((span["what"], span["where"]), []).append(span)
    table = Table(title=f"N={n}: the launcher's steps and SSH round trips, grouped over hosts (seconds from the command's start)")
    for col in ("first start", "last end", "calls", "how", "median (s)", "max (s)", "sum (s)", "what", "where (launcher/...)"):
        table.add_column(col, justify="left" if col in ("what", "where (launcher/...)", "how") else "right")
    for (what, where), found in sorted(groups.items(), key=lambda item: min(s["start"] for s in item[1])):
        durations = [s["end"] - s["start"] for s in found]
        threads = {s["thread"] for s in found}
        how = "one" if len(found) == 1 else "serial" if len(threads) == 1 else f"{len(threads)} threads"
        table.add_row(f"{min(s['start'] for s in found):.3f}", f"{max(s['end'] for s in found):.3f}", str(len(found)), how,
                      f"{statistics.median(durations):.3f}", f"{max(durations):.3f}", f"{sum(durations):.3f}",
                      "  " * min(s["depth"] for s in found) + what, where)
    console.print(table)
    renewals = [s for s in spans if s["what"] == "SshBackend.renew"]
    console.print(f"N={n}: {len(renewals)} lease renewals (sftp utime, one thread per host) while it ran")


if __name__ == "__main__":
    from launcher.node.procs import end_now  # as `launch` ends

    end_now(traced_launch(sys.argv[1], sys.argv[3:]))
