"""One hop of a relay chain, run by the launcher on a host (`python3 -c`; standard library only,
Python 3.6+). The stream is framed (`>Q` length + bytes; then length 0 and the SHA-256 of it all). A
hop reads it from standard input (the head), from the hop before it (TCP), or from a command on its
host (`docker save`); passes each frame on to the next hop as it reads it; and feeds its sink
(`docker load`, the workdir's receiver) one frame behind, the last one only once the checksum matches:
a stream cut short never completes the sink's input, the sink is killed instead. Configuration comes
as JSON lines on standard input, never on the command line (one at start, one with the hop before
it once that hop listens); then standard input is the hop's lifeline: when it ends, the hop kills
its sink and exits. Events go to standard output as JSON lines. The listener (a free port on the
address that reaches the next hop) takes only that hop's address with its token, answers with a
token of its own, and closes once that hop is connected.
"""

import hashlib
import hmac
import json
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

FRAME = struct.Struct(">Q")
KEEPALIVE = (1 << 64) - 1  # a frame's size that says: no data, the feed is alive (while it skips what the hosts have)
FRAME_BYTES = 1 << 20
DIGEST_BYTES = 32
HEARTBEAT_S = 2
SINK_STALL = 4  # times idle_s: a sink (`docker load`) that takes no input this long is stuck

_print_lock = threading.Lock()


def say(event, **fields):
    fields["event"] = event
    with _print_lock:
        try:
            print(json.dumps(fields), flush=True)
        except (OSError, ValueError):  # the launcher is gone: nobody to tell
            pass


class Failed(Exception):
    def __init__(self, where, message):
        Exception.__init__(self, message)
        self.where = where


def addresses(name, port=None):
    """The IP addresses `name` stands for on this host."""
    found = set((family, sockaddr) for family, _, _, _, sockaddr in socket.getaddrinfo(name, port, 0, socket.SOCK_STREAM)
                if family in (socket.AF_INET, socket.AF_INET6))
    if not found:
        raise Failed("setup", "%s does not resolve here" % name)
    return found


def plain(ip):
    return ip[7:] if ip.startswith("::ffff:") else ip


class Hop(object):
    def __init__(self, conf):
        self.conf = conf
        self.idle = float(conf.get("idle_s", 30))
        self.lock = threading.Lock()
        self.ended = False
        self.listener = self.sink = self.down = None  # down: the connected socket to the next hop
        self.sink_output, self.sink_error = b"", None
        self.sink_queue, self.down_queue = queue.Queue(maxsize=16), queue.Queue(maxsize=16)
        self.down_dropped = threading.Event()
        self.down_done = threading.Event()  # the next hop has everything, or was dropped
        self.received = 0
        self.waiting_since = None  # when the read now in progress began
        self.sink_blocked_since = None  # when the wait for room in the sink's queue began
        self.upstream_name = "the launcher"

    # ---- ending
    def abort(self, where, message):
        """Kill the sink, close every socket, say why, exit: nothing is left behind."""
        with self.lock:
            ending, self.ended = self.ended, True
        if ending:  # another thread is ending the hop (or it has said done): it exits the process
            while True:
                time.sleep(1)
        if self.sink is not None and self.sink.poll() is None:
            try:
                os.killpg(self.sink.pid, signal.SIGKILL)
            except OSError:
                pass
        self._close_sockets()
        say("failed", where=where, error=message, received=self.received)
        os._exit(1)

    def _close_sockets(self):
        for sock in (self.listener, self.down):
            if sock is not None:
                sock.close()
        self.listener = None

    # ---- setup
    def listen(self):
        """A listener on a free port of the address this host reaches the next hop from (its lab
        address), else of the address `listen` names here."""
        peers = addresses(self.conf["peer"])
        self.peers = set(plain(s[0]) for _, s in peers)
        family, ip = self._source_towards(peers) or self._named(self.conf["listen"])
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.bind((ip, 0))
        sock.listen(4)
        self.listener = sock
        say("listening", address=ip, port=sock.getsockname()[1])
        threading.Thread(target=self._serve_next, daemon=True).start()

    @staticmethod
    def _source_towards(peers):
        for family, sockaddr in sorted(peers):
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                try:
                    probe.connect(sockaddr)  # no packet is sent: the route's source address is chosen
                except OSError:
                    continue
                ip = probe.getsockname()[0]
            if not ip.startswith("127.") and ip != "::1":
                return family, ip
        return None

    @staticmethod
    def _named(name):
        family, sockaddr = sorted(addresses(name))[0]
        return family, sockaddr[0]

    def start_sink(self):
        argv = self.conf.get("sink")
        if not argv:
            return
        self.sink = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.sink_read = threading.Thread(target=self._sink_reader, daemon=True)
        self.sink_read.start()
        threading.Thread(target=self._sink_writer, daemon=True).start()

    def _sink_reader(self):
        self.sink_output = self.sink.stdout.read()

    def _sink_writer(self):
        for data in iter(self.sink_queue.get, None):
            try:
                if self.sink_error is None:
                    self.sink.stdin.write(data)
            except (OSError, ValueError) as exc:
                self.sink_error = "its input closed early (%s)" % exc
        try:
            self.sink.stdin.close()
        except OSError:
            pass

    # ---- the next hop
    def _serve_next(self):
        try:
            self._send_next()
        except Exception as exc:  # noqa: BLE001 - whatever it is, the next hop is dropped, not waited for
            self._drop_down("%s: %s" % (type(exc).__name__, exc))
        finally:
            self.down_done.set()

    def _send_next(self):
        try:
            self.down = self._accept()
        except Failed as exc:
            self._drop_down(str(exc))
            return
        finally:
            listener, self.listener = self.listener, None
            if listener is not None:
                listener.close()
        self.down.settimeout(self.idle / 2)  # a next hop that stops reading is dropped before the launcher gives up on this one
        for data in iter(self.down_queue.get, None):
            try:
                self.down.sendall(data)
            except (OSError, socket.timeout) as exc:
                self._drop_down("sending to it failed: %s" % (exc or type(exc).__name__))
                return
        try:
            self.down.shutdown(socket.SHUT_WR)
            self.down.recv(1)  # the next hop closes once it has read everything
        except (OSError, socket.timeout):
            pass
        self.down.close()

    def _accept(self):
        deadline = time.time() + self.idle
        token = self.conf["token"].encode()
        while time.time() < deadline:
            self.listener.settimeout(max(0.1, deadline - time.time()))
            try:
                sock, address = self.listener.accept()
            except socket.timeout:
                break
            if plain(address[0]) not in self.peers:
                sock.close()
                continue
            sock.settimeout(5)
            try:
                got = sock.makefile("rb").readline(len(token) + 2)
            except (OSError, socket.timeout):
                got = b""
            if hmac.compare_digest(got.strip(), token):
                sock.sendall(self.conf["reply"].encode() + b"\n")
                return sock
            sock.close()
        raise Failed("downstream", "the next hop did not connect in %.0f s" % self.idle)

    def _drop_down(self, why):
        if self.down_dropped.is_set():
            return
        self.down_dropped.set()
        say("downstream_lost", error=why)
        while not self.down_queue.empty():  # unblock a reader waiting to queue for it
            self.down_queue.get_nowait()

    def to_down(self, data):
        """Queue bytes for the next hop (None: the stream's end)."""
        if not self.conf.get("listen"):
            return
        while not self.down_dropped.is_set() and not self.down_done.is_set():
            try:
                return self.down_queue.put(data, timeout=0.5)
            except queue.Full:
                pass

    # ---- the stream
    def connect_upstream(self, wiring):
        """Connect to the hop before this one, and make sure it is the relay the launcher started."""
        self.upstream_name = wiring["name"]
        where = "%s at %s port %d" % (wiring["name"], wiring["address"], wiring["port"])
        family, sockaddr = sorted(addresses(wiring["address"], wiring["port"]))[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(self.idle)
        try:
            sock.connect(sockaddr)
            sock.sendall(wiring["token"].encode() + b"\n")
        except (OSError, socket.timeout) as exc:
            raise Failed("setup", "cannot reach %s: %s" % (where, exc))
        stream = sock.makefile("rb")
        reply = wiring["reply"].encode() + b"\n"
        if not hmac.compare_digest(self.read_exact(stream, len(reply)), reply):
            raise Failed("setup", "%s is not the relay the launcher started" % where)
        return sock, stream

    def read_exact(self, stream, n):
        parts, left = [], n
        self.waiting_since = time.time()
        try:
            while left:
                chunk = stream.read(left)
                if not chunk:
                    raise Failed("upstream", "the stream from %s ended early, after %d bytes" % (self.upstream_name, self.received))
                parts.append(chunk)
                left -= len(chunk)
        except OSError as exc:  # socket.timeout is one
            why = "nothing came for %.0f s" % self.idle if isinstance(exc, socket.timeout) else exc or type(exc).__name__
            raise Failed("upstream", "reading from %s failed: %s" % (self.upstream_name, why))
        finally:
            self.waiting_since = None
        return b"".join(parts)

    def pump(self, stream):
        digest = hashlib.sha256()
        held = None
        while True:
            head = self.read_exact(stream, FRAME.size)
            (size,) = FRAME.unpack(head)
            if size == KEEPALIVE:  # passed on: the hops after this one wait on it too
                self.to_down(head)
                continue
            if size == 0:
                tail = self.read_exact(stream, DIGEST_BYTES)
                self.to_down(head + tail)
                if not hmac.compare_digest(tail, digest.digest()):
                    raise Failed("upstream", "the stream from %s does not match its checksum" % self.upstream_name)
                if held is not None:
                    self.to_sink(held)
                return say("received", bytes=self.received)
            if size > 64 * FRAME_BYTES:
                raise Failed("upstream", "a frame of %d bytes: not a relay stream" % size)
            data = self.read_exact(stream, size)
            digest.update(data)
            self.received += size
            self.to_down(head + data)
            if held is not None:
                self.to_sink(held)
            held = data

    def produce(self, argv):
        """Frame the output of a command on this host (`docker save`) and pass it on."""
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        self.sink = proc  # killed like a sink when the hop aborts
        digest = hashlib.sha256()
        self.upstream_name = " ".join(argv)
        while True:
            self.waiting_since = time.time()
            data = proc.stdout.read(FRAME_BYTES)
            self.waiting_since = None
            if not data:
                break
            digest.update(data)
            self.received += len(data)
            self.to_down(FRAME.pack(len(data)) + data)
        err = proc.stderr.read()
        if proc.wait() != 0:
            raise Failed("source", "%s failed: %s" % (" ".join(argv), err.decode(errors="replace").strip()[-300:]))
        self.to_down(FRAME.pack(0) + digest.digest())

    def to_sink(self, data):
        if self.sink is not None and self.sink_error is None:
            self.sink_blocked_since = time.time()
            self.sink_queue.put(data)
            self.sink_blocked_since = None

    # ---- watching
    def _watch(self):
        """Progress twice a second, and at least every HEARTBEAT_S (silence means the host is lost);
        a read that waits longer than `idle_s` ends the hop."""
        told, said = -1, 0.0
        while True:
            time.sleep(0.5)
            if self.received != told or time.time() - said >= HEARTBEAT_S:
                told, said = self.received, time.time()
                say("got", bytes=told)
            since, blocked = self.waiting_since, self.sink_blocked_since
            if since is not None and time.time() - since > self.idle:
                self.abort("upstream", "reading from %s failed: nothing came for %.0f s" % (self.upstream_name, self.idle))
            if blocked is not None and time.time() - blocked > SINK_STALL * self.idle:
                self.abort("sink", "%s took nothing for %.0f s" % (" ".join(self.conf["sink"]), SINK_STALL * self.idle))

    def watch_lifeline(self, lifeline):
        def watch():
            while lifeline.read(65536):
                pass
            self.abort("launcher", "the launcher closed the hop")
        threading.Thread(target=watch, daemon=True).start()

    # ---- the end
    def finish(self):
        """The stream is complete: the next hop gets its end, the sink its last frame and its end."""
        self.to_down(None)
        result, failed = {}, None
        if self.conf.get("sink"):
            self.sink_queue.put(None)
            code = self.sink.wait()
            self.sink_read.join(10)
            output = self.sink_output.decode(errors="replace").strip()[-500:]
            if code != 0 or self.sink_error:
                failed = Failed("sink", "%s: %s" % (self.sink_error or "exit code %d" % code, output))
            result["output"] = output
        if self.conf.get("listen"):
            self.down_done.wait(2 * self.idle)  # the next hop has it all before this one ends, whatever its own sink did
        if failed is not None:
            raise failed
        with self.lock:
            self.ended = True
        self._close_sockets()
        say("done", received=self.received, **result)


def main():
    stdin = sys.stdin.buffer
    conf = json.loads(stdin.readline().decode())
    mode = conf["mode"]  # head | next | source
    hop = Hop(conf)
    threading.Thread(target=hop._watch, daemon=True).start()  # heartbeats from the start: a hop waiting to be wired is not lost
    try:
        if conf.get("listen"):
            hop.listen()
        hop.start_sink()
        if mode == "head":  # standard input is the stream: its end is the lifeline's
            hop.pump(stdin)
        elif mode == "next":
            line = stdin.readline()
            if not line:
                raise Failed("launcher", "the launcher closed the hop")
            hop.watch_lifeline(stdin)
            sock, stream = hop.connect_upstream(json.loads(line.decode()))
            hop.pump(stream)
            stream.close()
            sock.close()
        else:
            hop.watch_lifeline(stdin)
            hop.produce(conf["source"])
        hop.finish()
        sys.stdout.flush()
        os._exit(0)  # not a normal exit: the lifeline thread is still reading standard input
    except Failed as exc:
        hop.abort(exc.where, str(exc))
    except Exception as exc:  # noqa: BLE001 - whatever it is, the hop ends and says why
        hop.abort("setup", "%s: %s" % (type(exc).__name__, exc))


if __name__ == "__main__":
    main()
