"""Passing one stream along a chain of hosts over the lab's own network, set up over the launcher's
SSH connections: a relay hop (`relay.py`, run with the host's python3) on every host, each listening
for the next. The stream crosses the launcher's link once, whatever the number of hosts.

A chain rather than a tree: every host receives the stream once and sends it once, so no link
carries it twice, and the hops pass it on as they read it, so a longer chain costs one frame's
delay per hop, not one transfer per host. Its weakness, a host that drops out cutting off the ones
after it, is met by feeding those again around it (`image.ship`).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..errors import RunError, SpecError
from . import relay
from .ssh import end_input, open_command

RELAY_SOURCE = Path(relay.__file__).read_text()
IDLE_S = 30.0  # a hop whose input stalls this long ends; the launcher's own feed gives up as late
IDLE_ENV = "LAUNCH_RELAY_IDLE_S"  # another value for IDLE_S (a slow or lossy network, or a test)
SETUP_S = 30.0  # the longest a hop may take to start and listen


def idle_s() -> float:
    """How long a stalled hop is waited for: IDLE_S, or the seconds LAUNCH_RELAY_IDLE_S says."""
    text = os.environ.get(IDLE_ENV, "")
    if not text:
        return IDLE_S
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 3 <= value <= 3600:
        raise SpecError(f"{IDLE_ENV}={text!r}: expected a number of seconds from 3 to 3600")
    return value


def lost_s(idle: float) -> float:
    """A hop silent this long is taken for lost (it says something every relay.HEARTBEAT_S)."""
    return max(3 * relay.HEARTBEAT_S, 2 * idle / 3)


@dataclass(frozen=True)
class Hop:
    host: str
    address: str  # where the hosts reach it (its listener is bound there)
    sink: tuple[str, ...] | None = None  # what it feeds the stream into (None: it only passes it on)
    source: tuple[str, ...] | None = None  # a command on the host whose output is the stream (the head only)
    python: str = "python3"


@dataclass
class HopResult:
    host: str
    ok: bool = False
    where: str | None = None  # upstream: the stream stopped coming to it; lost: it stopped answering; sink, setup, ...
    error: str | None = None
    received: int = 0
    output: str = ""
    upstream: str = "this machine"
    stream_s: float | None = None  # when it had the whole stream (checked), from the chain's start; its sink then finishes

    @property
    def cut_off(self) -> bool:
        """It failed because what fed it did, or its hop could not be set up (the launcher ended it,
        the hop before it could not be reached): it still answers, so feed it again, another way."""
        return not self.ok and self.where in ("upstream", "launcher", "setup")


class _Framed:
    """The launcher's side of the head hop's input: frames, and the checksum at the end."""

    def __init__(self, channel) -> None:
        self.channel = channel
        self.digest = hashlib.sha256()
        self.sent = 0
        self.ended = False

    def sendall(self, data: bytes) -> None:
        for start in range(0, len(data), relay.FRAME_BYTES):
            part = data[start:start + relay.FRAME_BYTES]
            self.digest.update(part)
            self.channel.sendall(relay.FRAME.pack(len(part)) + part)
            self.sent += len(part)

    def keepalive(self) -> None:
        """A frame with no data, so that the hops do not take a feed with nothing to send yet (it
        reads past the layers every host has) for a stalled one."""
        self.channel.sendall(relay.FRAME.pack(relay.KEEPALIVE))

    def end(self) -> None:
        """The end of the stream and its checksum (once; a feed may end its stream before it returns)."""
        if not self.ended:
            self.ended = True
            self.channel.sendall(relay.FRAME.pack(0) + self.digest.digest())


@dataclass
class _Running:
    hop: Hop
    channel: object
    result: HopResult
    port: int | None = None
    listen_ip: str | None = None  # where its listener is bound
    listening: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    heard: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.monotonic)


def run_chain(conns: dict, hops: Sequence[Hop], feed: Callable[[_Framed], None] | None = None,
              on_bytes: Callable[[str, int], None] | None = None) -> dict[str, HopResult]:
    """Pass a stream down `hops`, in order: `feed` writes it into the first hop (from this machine),
    unless that hop has a `source`. Returns every hop's result; never raises for a hop's failure."""
    idle = idle_s()
    running: list[_Running] = []
    try:
        for i, hop in enumerate(hops):
            running.append(_start(conns[hop.host], hop, hops[i - 1].host if i else "this machine"))
        tokens = [secrets.token_hex(16) for _ in hops]  # the next hop proves itself with it to the one before
        replies = [secrets.token_hex(16) for _ in hops]  # and the one before to it
        for i, r in enumerate(running):
            conf = {"mode": "source" if _is_source(r.hop, i) else ("head" if i == 0 else "next"),
                    "idle_s": idle, "sink": list(r.hop.sink) if r.hop.sink else None}
            if r.hop.source:
                conf["source"] = list(r.hop.source)
            if i + 1 < len(running):
                conf.update(listen=r.hop.address, peer=hops[i + 1].address, token=tokens[i + 1], reply=replies[i + 1])
            _send_line(r, conf)
            threading.Thread(target=_read_events, args=(r, on_bytes), daemon=True).start()
        for i, r in enumerate(running[1:], start=1):
            before = running[i - 1]
            if not (before.listening.wait(SETUP_S) and before.port):
                _end(r, "upstream", f"{before.hop.host} did not start its relay")
                continue
            _send_line(r, {"name": before.hop.host, "address": before.listen_ip or before.hop.address, "port": before.port,
                           "token": tokens[i], "reply": replies[i]})
        if running and feed is not None and not running[0].hop.source:
            _feed(running[0], feed, idle)
        _wait(running, lost_s(idle))
    finally:
        for r in running:
            try:
                r.channel.close()  # a hop still going ends when its lifeline does
            except Exception:  # noqa: BLE001 - closing what may be gone
                pass
    return {r.hop.host: r.result for r in running}


def _is_source(hop: Hop, index: int) -> bool:
    return index == 0 and hop.source is not None


def _start(conn, hop: Hop, upstream: str) -> _Running:
    result = HopResult(hop.host, upstream=upstream)
    try:
        channel = open_command(conn, [hop.python, "-u", "-c", RELAY_SOURCE])
    except RunError as exc:
        result.where, result.error = "lost", str(exc)
        r = _Running(hop, _Closed(), result)
        r.ended.set()
        return r
    return _Running(hop, channel, result)


class _Closed:
    """The channel of a hop that did not start."""

    def sendall(self, data: bytes) -> None:
        raise OSError("the hop did not start")

    def settimeout(self, seconds: float) -> None:
        pass

    def shutdown_write(self) -> None:
        pass

    def close(self) -> None:
        pass


def _send_line(r: _Running, data: dict) -> None:
    try:
        r.channel.sendall(json.dumps(data).encode() + b"\n")
    except Exception as exc:  # noqa: BLE001 - SSH errors of several kinds
        _end(r, "lost", f"cannot reach its relay: {exc or type(exc).__name__}")


def _feed(head: _Running, feed: Callable[[_Framed], None], idle: float) -> None:
    """Write the stream into the head hop. A RunError is this machine's own failure (its `docker
    save`, a file that changed while being sent): the head is cut off, not lost. Anything else is the
    head's channel failing: the head is lost."""
    framed = _Framed(head.channel)
    try:
        head.channel.settimeout(idle)
        feed(framed)
        framed.end()
    except Exception as exc:  # noqa: BLE001 - the head is told by its stream ending early
        mine = isinstance(exc, RunError)
        _end(head, "upstream" if mine else "lost", f"{'' if mine else 'sending to it failed: '}{exc or type(exc).__name__}")
        try:
            end_input(head.channel)
        except Exception:  # noqa: BLE001
            pass


def _read_events(r: _Running, on_bytes: Callable[[str, int], None] | None) -> None:
    told = 0
    lines: list[str] = []
    try:
        for raw in r.channel.makefile("rb"):
            r.heard = time.monotonic()
            line = raw.decode(errors="replace").strip()
            try:
                event = json.loads(line)
            except ValueError:
                lines.append(line)  # python3 missing, a traceback: said in the error
                continue
            kind = event.get("event")
            if kind == "listening":
                r.port, r.listen_ip = int(event["port"]), event.get("address")
                r.listening.set()
            elif kind == "got":  # a source hop's bytes are its own `docker save`: not what it received
                got = int(event.get("bytes", 0))
                if on_bytes and got > told and r.hop.source is None:
                    on_bytes(r.hop.host, got - told)
                told = max(told, got)
                r.result.received = got
            elif kind == "received":
                r.result.stream_s = time.monotonic() - r.started
            elif kind == "done":
                r.result.ok, r.result.output = True, event.get("output", "")
                r.result.received = int(event.get("received", told))
                if on_bytes and r.result.received > told and r.hop.source is None:
                    on_bytes(r.hop.host, r.result.received - told)
            elif kind == "failed":
                _end(r, event.get("where", "setup"), event.get("error", "failed"))
    except Exception:  # noqa: BLE001 - the channel went: judged below
        pass
    if not r.result.ok and r.result.error is None:
        said = "; ".join(lines)[-300:]
        _end(r, "setup" if said else "lost", said or "its relay ended without a word")
    r.listening.set()
    r.ended.set()


def _end(r: _Running, where: str, error: str) -> None:
    if r.result.error is None and not r.result.ok:
        r.result.where, r.result.error = where, error
    r.ended.set()
    r.listening.set()


def _wait(running: list[_Running], lost: float) -> None:
    """Until every hop has ended, or gone silent for `lost` seconds (it is lost: its link, or the host)."""
    while True:
        pending = [r for r in running if not r.ended.is_set()]
        if not pending:
            return
        now = time.monotonic()
        for r in pending:
            if now - r.heard > lost:
                _end(r, "lost", f"stopped answering for {lost:.0f} s")
        time.sleep(0.2)
