"""The relay hop (launcher/hosts/relay.py) as real processes on this machine, over loopback: a stream
passes down a chain whole, a stream cut short or corrupted never completes a sink, only the expected
peer with its token is served, and nothing is left listening."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from launcher.hosts import relay

LOOPBACK = "127.0.0.1"


class HopProc:
    def __init__(self, conf: dict) -> None:
        self.proc = subprocess.Popen([sys.executable, "-u", "-c", Path(relay.__file__).read_text()],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.events: list[dict] = []
        self.port: int | None = None
        self.listening = threading.Event()
        self.send(conf)
        threading.Thread(target=self._read, daemon=True).start()

    def send(self, data: dict) -> None:
        self.proc.stdin.write(json.dumps(data).encode() + b"\n")
        self.proc.stdin.flush()

    def _read(self) -> None:
        for line in self.proc.stdout:
            event = json.loads(line)
            self.events.append(event)
            if event["event"] == "listening":
                self.port = event["port"]
                self.listening.set()

    def final(self, timeout: float = 30) -> dict:
        self.proc.wait(timeout)
        time.sleep(0.1)
        ends = [e for e in self.events if e["event"] in ("done", "failed")]
        assert len(ends) == 1, self.events
        return ends[0]


def frames(data: bytes, size: int = 1 << 18) -> list[bytes]:
    out = [relay.FRAME.pack(len(data[i:i + size])) + data[i:i + size] for i in range(0, len(data), size)]
    return out + [relay.FRAME.pack(0) + hashlib.sha256(data).digest()]


def chain_of(tmp_path: Path, n: int, idle_s: float = 10, sink: str = 'cat > "$0.part" && mv "$0.part" "$0"') -> list[HopProc]:
    tokens = [os.urandom(8).hex() for _ in range(n)]
    hops = []
    for i in range(n):
        conf = {"mode": "head" if i == 0 else "next", "idle_s": idle_s, "sink": ["sh", "-c", sink, str(tmp_path / f"out{i}")]}
        if i + 1 < n:
            conf.update(listen=LOOPBACK, peer=LOOPBACK, token=tokens[i + 1], reply=f"reply{i + 1}")
        hops.append(HopProc(conf))
    for i in range(1, n):
        assert hops[i - 1].listening.wait(10)
        hops[i].send({"name": f"hop{i - 1}", "address": LOOPBACK, "port": hops[i - 1].port, "token": tokens[i], "reply": f"reply{i}"})
    return hops


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((LOOPBACK, port)) == 0


def test_a_stream_passes_down_the_chain_whole(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)
    hops = chain_of(tmp_path, 3)
    for frame in frames(data):
        hops[0].proc.stdin.write(frame)
    hops[0].proc.stdin.close()
    for i, hop in enumerate(hops):
        end = hop.final()
        assert end["event"] == "done", end
        assert end["received"] == len(data)
        assert (tmp_path / f"out{i}").read_bytes() == data
    for hop in hops[:-1]:
        assert not listening(hop.port)  # closed once the next hop connected


def test_keepalives_hold_the_chain_past_its_idle_limit_and_the_stream_stays_whole(tmp_path):
    """A feed that reads past what every host has sends nothing for a while, only keepalives: no
    hop takes it for stalled, and the keepalives are not data."""
    data = os.urandom(1024 * 1024 + 5)
    hops = chain_of(tmp_path, 3, idle_s=1.5)
    parts = frames(data)
    hops[0].proc.stdin.write(parts[0])
    hops[0].proc.stdin.flush()
    for _ in range(8):  # 4 s: well past the idle limit
        hops[0].proc.stdin.write(relay.FRAME.pack(relay.KEEPALIVE))
        hops[0].proc.stdin.flush()
        time.sleep(0.5)
    for frame in parts[1:]:
        hops[0].proc.stdin.write(frame)
    hops[0].proc.stdin.close()
    for i, hop in enumerate(hops):
        end = hop.final()
        assert end["event"] == "done" and end["received"] == len(data), end
        assert (tmp_path / f"out{i}").read_bytes() == data


def test_a_stream_cut_short_completes_no_sink(tmp_path):
    data = os.urandom(2 * 1024 * 1024)
    hops = chain_of(tmp_path, 3)
    for frame in frames(data)[:-2]:  # the last frame of data and the end never come
        hops[0].proc.stdin.write(frame)
    hops[0].proc.stdin.close()
    for i, hop in enumerate(hops):
        end = hop.final()
        # the head's input ended early; a later hop's did too, or its hop before was gone before it connected
        assert end["event"] == "failed" and end["where"] in (("upstream",) if i == 0 else ("upstream", "setup")), end
        assert not (tmp_path / f"out{i}").exists()  # the sink never saw its input end: killed, nothing moved into place
        assert hop.proc.returncode == 1
    assert "hop0" in hops[1].final()["error"]


def test_a_corrupted_stream_completes_no_sink(tmp_path):
    data = os.urandom(1024 * 1024)
    hops = chain_of(tmp_path, 2)
    sent = frames(data)
    sent[-1] = relay.FRAME.pack(0) + hashlib.sha256(b"something else").digest()
    for frame in sent:
        hops[0].proc.stdin.write(frame)
    hops[0].proc.stdin.close()
    first, second = hops[0].final(), hops[1].final()
    assert first["event"] == "failed" and "does not match its checksum" in first["error"], first
    assert second["event"] == "failed" and second["where"] in ("upstream", "setup"), second  # cut off: fed again
    for i in range(2):
        assert not (tmp_path / f"out{i}").exists()


def test_only_the_expected_peer_with_its_token_is_served(tmp_path):
    head = HopProc({"mode": "head", "idle_s": 10, "sink": None, "listen": LOOPBACK, "peer": LOOPBACK, "token": "right",
                    "reply": "back"})
    assert head.listening.wait(10)
    with socket.create_connection((LOOPBACK, head.port)) as wrong:
        wrong.sendall(b"wrong\n")
        wrong.settimeout(5)
        assert wrong.recv(10) == b""  # refused: closed at once
    follower = HopProc({"mode": "next", "idle_s": 10, "sink": ["sh", "-c", 'cat > "$0"', str(tmp_path / "out")]})
    follower.send({"name": "head", "address": LOOPBACK, "port": head.port, "token": "right", "reply": "back"})
    data = os.urandom(100_000)
    for frame in frames(data):
        head.proc.stdin.write(frame)
    head.proc.stdin.close()
    assert head.final()["event"] == "done"
    assert follower.final()["event"] == "done"
    assert (tmp_path / "out").read_bytes() == data


@pytest.mark.parametrize("who", ["launcher", "peer"])
def test_a_hop_left_alone_ends_and_stops_listening(tmp_path, who):
    """A hop whose launcher goes (its lifeline ends), or whose next hop never connects, ends; its
    listener goes with it."""
    hop = HopProc({"mode": "next", "idle_s": 2, "sink": ["sleep", "600"], "listen": LOOPBACK, "peer": LOOPBACK, "token": "t",
                  "reply": "r"})
    assert hop.listening.wait(10)
    if who == "launcher":
        hop.proc.stdin.close()
        end = hop.final()
        assert end["where"] == "launcher", end
    else:
        upstream = socket.create_server((LOOPBACK, 0))
        hop.send({"name": "up", "address": LOOPBACK, "port": upstream.getsockname()[1], "token": "x", "reply": "y"})
        end = hop.final(timeout=20)  # nothing comes from upstream: it gives up after idle_s
        assert end["where"] == "upstream" and "reading from up failed: nothing came for 2 s" in end["error"], end
        upstream.close()
    assert not listening(hop.port)


def test_a_hop_whose_own_sink_fails_still_passes_the_whole_stream_on(tmp_path):
    data = os.urandom(6 * 1024 * 1024)
    hops = chain_of(tmp_path, 2, sink='[ "$0" = "' + str(tmp_path / "out0") + '" ] && exit 1; cat > "$0"')
    for frame in frames(data):
        hops[0].proc.stdin.write(frame)
    hops[0].proc.stdin.close()
    first, second = hops[0].final(), hops[1].final()
    assert first["event"] == "failed" and first["where"] == "sink", first
    assert second["event"] == "done", second
    assert (tmp_path / "out1").read_bytes() == data


def test_an_upstream_that_is_not_the_launchers_relay_is_refused(tmp_path):
    """Something else on the port the hop was told to read from (it does not know the reply token)."""
    impostor = socket.create_server((LOOPBACK, 0))
    hop = HopProc({"mode": "next", "idle_s": 10, "sink": ["sh", "-c", 'cat > "$0"', str(tmp_path / "out")]})
    hop.send({"name": "up", "address": LOOPBACK, "port": impostor.getsockname()[1], "token": "t", "reply": "secret"})
    conn, _ = impostor.accept()
    conn.sendall(b"guess0\n" + b"".join(frames(b"forged")))
    end = hop.final()
    assert end["event"] == "failed" and "is not the relay the launcher started" in end["error"], end
    assert not (tmp_path / "out").exists() or (tmp_path / "out").read_bytes() == b""
    conn.close()
    impostor.close()
