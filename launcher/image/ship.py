"""Getting the job's image onto every host that lacks it, sending only the layers each lacks
(`layers.split_save`): straight from this machine, in parallel, or down a chain of hosts
(`hosts.chain`) where several lack the same large layers (`route.plan_route`), so that they leave
this machine once. A host that has the image's ID is skipped; every host's image ID is checked after
loading.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import RunError
from ..hosts.parallel import on_every_host
from .held import HostImages, history, image_id_on, survey, tag_held_image
from .layers import CHUNK, LayerDirs, Receiver, chain_ids, must_learn, split_save
from .route import HostNeed, ImageRoute, plan_route, sizes_by_layer
from .squeeze import RawProgress, squeezed

KEEPALIVE_S = 1.0  # a chain's feed with nothing to send says it is alive this often


@dataclass
class ShipResult:
    host: str
    skipped: bool  # the host had the image already
    bytes_sent: int = 0  # what the host received (from this machine, or the host before it in a chain)
    raw_bytes: int = 0  # what those bytes hold before compression (the same where none)
    layers_sent: int = 0
    layers_skipped: int = 0
    seconds: float = 0.0
    error: str | None = None
    via: str | None = None  # the host it received the stream from, in a chain (None: this machine, directly)
    stream_s: float | None = None  # when it had the whole stream (sent, or in a chain received and checked); `docker load` then finishes
    detour: str | None = None  # why a chain did not feed it, where it was then sent the image from here


@dataclass
class ShipReport:
    results: dict[str, ShipResult] = field(default_factory=dict)
    route: ImageRoute = field(default_factory=ImageRoute)
    bytes_out: int = 0  # what left this machine, all hosts together

    @property
    def failed(self) -> dict[str, str]:
        return {h: r.error for h, r in self.results.items() if r.error}

    def raise_for_failures(self) -> None:
        if self.failed:
            lines = "; ".join(f"{h}: {e}" for h, e in self.failed.items())
            got = [h for h, r in self.results.items() if not r.error]
            others = f" ({', '.join(got)} got it)" if got else ""
            raise RunError(f"the image could not be sent to {len(self.failed)} host(s){others}: {lines}")


class _Sender:
    """Writes one host's stream from a thread of its own, so hosts receive in parallel.

    Small writes (tar headers) are gathered into chunks; a bounded queue keeps memory in check.
    """

    def __init__(self, channel, host: str, on_bytes: Callable[[str, int], None] | None,
                 stall_s: float | None = None, link=None, keepalive: Callable[[], None] | None = None) -> None:
        self.channel, self.host, self.on_bytes = channel, host, on_bytes
        self.stall_s, self.link = stall_s, link  # link: the SSH channel under `channel`
        self.keepalive = keepalive  # sent after KEEPALIVE_S with nothing to send
        self.queue: queue.Queue[bytes | None] = queue.Queue(maxsize=32)
        self.buffer = bytearray()
        self.error: BaseException | None = None
        self.sending_since: float | None = None  # when the send under way began
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def write(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        self.buffer += data
        if len(self.buffer) >= CHUNK:
            chunk = bytes(self.buffer)
            self.buffer.clear()
            self._put(chunk)

    def _put(self, item: bytes | None) -> None:
        """Queue `item` (None: the end) while the host's link takes something now and then."""
        while True:
            try:
                self.queue.put(item, timeout=0.5)
                return
            except queue.Full:
                self._check_stall()
                if self.error is not None:
                    if item is not None:
                        raise self.error from None
                    self._drain()

    def _check_stall(self) -> None:
        """A send under way for `stall_s` seconds (stuck in the connection itself, where the
        channel's time-out does not reach: a cut cable) fails the host, and its connection is
        closed, which ends that send. The close is not waited for: through a jump host it may block."""
        since = self.sending_since
        if self.error is None and self.stall_s is not None and since is not None and time.monotonic() - since > self.stall_s:
            self.error = socket.timeout()
            transport = self.link.get_transport() if self.link is not None else None
            if transport is not None:
                threading.Thread(target=transport.close, daemon=True).start()

    def _drain(self) -> None:
        """Drop what waits: the host failed."""
        try:
            while True:
                self.queue.get_nowait()
        except queue.Empty:
            pass

    def link_busy(self) -> bool:
        """Whether the link has a backlog: half of what may wait to be sent, or more, waits."""
        return self.queue.qsize() >= self.queue.maxsize // 2

    def close(self) -> None:
        """Send what is left and end the thread; a host that failed has what waits dropped, and its
        stuck send is given up on (its connection was closed) after a few seconds."""
        try:
            if self.buffer and self.error is None:
                self._put(bytes(self.buffer))
        finally:
            self.buffer.clear()
            self._put(None)
            given_up = None
            while self.thread.is_alive():
                self.thread.join(0.5)
                self._check_stall()
                if self.error is not None:
                    given_up = given_up or time.monotonic() + 5
                    if time.monotonic() > given_up:
                        break

    def _run(self) -> None:
        while True:
            try:
                data = self.queue.get(timeout=KEEPALIVE_S if self.keepalive else None)
            except queue.Empty:
                data = b""
            if data is None:
                return
            if self.error is not None:
                continue
            self.sending_since = time.monotonic()
            try:
                if data:
                    self.channel.sendall(data)
                    if self.on_bytes:
                        self.on_bytes(self.host, len(data))
                else:
                    self.keepalive()
            except BaseException as exc:  # noqa: BLE001 - reported with the host's result
                self.error = self.error or exc
            finally:
                self.sending_since = None


@dataclass
class _Image:
    """The image being shipped, as this machine's engine has it."""

    sdk: object  # docker.models.images.Image
    tag: str
    chains: list[str]
    known: LayerDirs

    @property
    def id(self) -> str:
        return self.sdk.id

    def stream(self, receivers: list[Receiver]) -> None:
        """One `docker save` here, split among `receivers`; a failure to read it fails each of them."""
        diffs = self.sdk.attrs["RootFS"]["Layers"]
        try:
            if must_learn(receivers, self.known):
                split_save(self.sdk.save(chunk_size=CHUNK, named=self.tag), [], self.known)  # learn where the layers are, send nothing
            split_save(self.sdk.save(chunk_size=CHUNK, named=self.tag), receivers, self.known, dict(zip(diffs, self.chains)))
        except Exception as exc:  # noqa: BLE001 - the SDK and tarfile raise several kinds; every host hears of it
            reason = f"reading `docker save` of {self.tag} from this machine's Docker engine failed: {type(exc).__name__}: {exc}"
            for r in receivers:
                if r.failed is None:
                    r.failed = RunError(reason)


_LOAD = ("docker", "load", "-q")


class _DirectLoad:
    """One host's `docker load`, fed straight from this machine."""

    def __init__(self, conn, host: str, have: set[str], on_bytes) -> None:
        from ..hosts.chain import idle_s
        from ..hosts.ssh import open_command

        self.conn, self.started, self.sent_s = conn, time.monotonic(), None
        self.channel = open_command(conn, _LOAD)
        self.probe_s = idle_s() / 2
        self.channel.settimeout(self.probe_s)  # a host that stops taking its stream fails alone, before a chain's head gives up
        progress = RawProgress(on_bytes)
        # past the channel's own time-out, which keeps the connection (and docker load's last words)
        self.sender = _Sender(self.channel, host, progress, stall_s=2 * self.probe_s, link=self.channel)
        self.squeezer = progress.squeezer = squeezed(self.sender.write, self.sender.link_busy)
        self.receiver = Receiver(host, have, self.squeezer.write if self.squeezer else self.sender.write)

    @property
    def failure(self) -> BaseException | None:
        return self.receiver.failed or self.sender.error

    def end_stream(self) -> None:
        """Send the rest of the host's stream, then its end: from here its load finishes on its own."""
        from ..hosts.ssh import end_input

        try:
            _end_squeezer(self.squeezer, self.receiver)
            self.sender.close()
            self.sent_s = time.monotonic() - self.started
            if self.failure is None:
                end_input(self.channel)
        except Exception as exc:  # noqa: BLE001 - the channel went: said with the host's result
            self.receiver.failed = self.receiver.failed or exc

    def finish(self, image: _Image) -> ShipResult:
        """Wait for the host's load, as long as the host answers (unpacking takes its time), and check
        the image it ends with; a stream that failed is said with what `docker load` said."""
        from ..hosts.ssh import await_exit

        r, error = self.receiver, None
        try:
            if self.failure is not None:
                said = _last_words(self.channel)
                error = f"sending the image failed: {self._why(self.failure)}" + (f"; docker load said: {said}" if said else "")
            else:
                code, output = await_exit(self.conn, self.channel, _LOAD, self.probe_s)
                if code != 0:
                    error = f"docker load failed (exit code {code}): {output.strip()[-300:]}"
                elif image_id_on(self.conn, image.tag) != image.id:
                    error = f"after loading, {image.tag} is not image {image.id}"
        except Exception as exc:  # noqa: BLE001
            error = self._why(exc)
        finally:
            self.channel.close()
        return ShipResult(r.host, False, self.sent, r.sent, r.sent_layers, r.skipped_layers, time.monotonic() - self.started,
                          error, stream_s=self.sent_s)

    def _why(self, exc: BaseException) -> str:
        if isinstance(exc, socket.timeout):
            return f"the host took nothing for {self.probe_s:g} s"
        return str(exc) or type(exc).__name__

    @property
    def sent(self) -> int:
        """What went to the host (compressed where it was)."""
        return self.squeezer.sent if self.squeezer else self.receiver.sent


def _last_words(channel, wait_s: float = 2.0) -> str:
    """What a command that failed has said by now (a few seconds at most): why it stopped reading."""
    output, deadline = bytearray(), time.monotonic() + wait_s
    try:
        while time.monotonic() < deadline:
            channel.settimeout(max(0.1, deadline - time.monotonic()))
            chunk = channel.recv(65536)
            if not chunk:
                break
            output += chunk
    except Exception:  # noqa: BLE001 - a timeout, a closed channel: what came is what it said
        pass
    return output.decode(errors="replace").strip()[-300:]


def _end_squeezer(squeezer, receiver: Receiver) -> None:
    """Write out what the squeezer holds, unless its receiver failed; a failure to, the receiver's."""
    if squeezer is None:
        return
    if receiver.failed is not None:
        squeezer.abandon()
        return
    try:
        squeezer.close()
    except Exception as exc:  # noqa: BLE001 - the link went: said with the host's result
        receiver.failed = exc


def _direct(image: _Image, hosts: dict[str, set[str]], conns: dict, on_bytes, report: ShipReport,
            also: Receiver | None = None, streamed: Callable[[], None] = lambda: None) -> None:
    """Send every host of `hosts` ({host: layers it has}) its missing layers from this machine, in
    one pass over `docker save` (shared with `also`, a chain's head, where there is one; `streamed`
    is called as soon as the pass is over, before the hosts' loads have finished)."""
    loads: dict[str, _DirectLoad] = {}
    for host, have in hosts.items():
        try:
            loads[host] = _DirectLoad(conns[host], host, have & set(image.chains), on_bytes)
        except Exception as exc:  # noqa: BLE001 - every host is reported
            report.results[host] = ShipResult(host, skipped=False, error=str(exc) or type(exc).__name__)
    receivers = [load.receiver for load in loads.values()] + ([also] if also else [])
    if receivers:
        image.stream(receivers)
    streamed()
    for load in loads.values():
        load.end_stream()
    finished = _finish_all(loads, image)
    for host, load in loads.items():
        report.results[host] = finished[host]
        report.bytes_out += load.sent


def _finish_all(loads: dict[str, _DirectLoad], image: _Image) -> dict[str, ShipResult]:
    """Every host's load waited for side by side (each reports its own errors). Ctrl-C closes their
    channels, which ends their loads, and goes on up at once."""
    results: dict[str, ShipResult] = {}
    threads = [threading.Thread(target=lambda h=h: results.__setitem__(h, loads[h].finish(image)), daemon=True) for h in loads]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)
    except BaseException:
        for load in loads.values():
            load.channel.close()
        raise
    return results


def _down_chain(image: _Image, hosts: dict[str, set[str]], conns: dict, addresses: dict[str, str], on_bytes,
                report: ShipReport, direct: dict[str, set[str]] | None = None, source: str | None = None) -> list[str]:
    """Feed `hosts` ({host: layers it has}) one after the other, from this machine (only the layers
    one of them lacks) or from `source`, a host that holds the image (all of it), while `direct` hosts
    get theirs from the same pass; returns the hosts a failure before them cut off (to be fed again)."""
    from ..hosts.chain import Hop, idle_s, run_chain

    started = time.monotonic()
    hops = [Hop(h, addresses[h], sink=_LOAD) for h in hosts]
    head = Receiver("chain", set.intersection(*hosts.values()) & set(image.chains), lambda data: None)
    if source is not None:
        hops.insert(0, Hop(source, addresses[source], source=("docker", "save", image.tag)))

    progress = RawProgress(on_bytes)  # from the hops themselves, in the stream's bytes before compression

    def feed(framed) -> None:
        sender = _Sender(framed, "chain", None, stall_s=2 * idle_s(), link=framed.channel, keepalive=framed.keepalive)

        def streamed() -> None:  # the chain's stream ends now, not once the direct hosts have loaded theirs
            try:
                _end_squeezer(squeezer, head)
                sender.close()
                if not (head.failed or sender.error):
                    framed.end()
            except Exception as exc:  # noqa: BLE001 - the head is gone: said below, the direct hosts go on
                head.failed = head.failed or exc

        try:
            squeezer = progress.squeezer = squeezed(sender.write, sender.link_busy)
            head.write = squeezer.write if squeezer else sender.write
            _direct(image, direct or {}, conns, on_bytes, report, also=head, streamed=streamed)
        finally:
            sender.close()  # at once where streamed() closed it; else its keepalives end
        report.bytes_out += framed.sent
        failed = head.failed or sender.error
        if failed:
            raise failed

    outcome = run_chain(conns, hops, None if source else feed, progress)
    again = []
    for host in hosts:
        hop = outcome[host]
        error = None if hop.ok else f"{'lost' if hop.where == 'lost' else 'failed'} while receiving the image from {hop.upstream}: {hop.error}"
        if hop.ok:
            try:
                loaded = image_id_on(conns[host], image.tag)
            except Exception as exc:  # noqa: BLE001 - one host's error, in its result
                loaded = f"unknown ({exc})"
            if loaded != image.id:
                error = f"after loading, {image.tag} is not image {image.id} but {loaded}"
        if hop.cut_off:
            again.append(host)
        lacked = len(set(image.chains) - hosts[host])
        raw = progress.squeezer.raw_for(hop.received) if progress.squeezer else hop.received
        report.results[host] = ShipResult(host, False, hop.received, raw, lacked, len(image.chains) - lacked,
                                          time.monotonic() - started, error, via=hop.upstream, stream_s=hop.stream_s)
    return again


def ship_image(client, tag: str, conns: dict, known_path: Path, on_bytes: Callable[[str, int], None] | None = None,
               addresses: dict[str, str] | None = None) -> ShipReport:
    """Make `tag` present on every host of `conns` ({host: Connection}); report what was sent.
    With `addresses` (each host's lab address), hosts that lack the same layers get them down a
    chain (`route.plan_route`), so that they leave this machine once."""
    addresses = addresses or {}
    local = client.images.get(tag)
    image = _Image(local, tag, chain_ids(local.attrs["RootFS"]["Layers"]), LayerDirs(known_path))
    report = ShipReport()

    def look(host: str) -> HostImages | None:
        conn = conns[host]
        if image_id_on(conn, tag) == local.id or tag_held_image(conn, local.id, tag):  # the same image under another job's tag
            return None
        return survey(conn)

    found, errors = on_every_host(list(conns), look, lambda h: h)
    for host in conns:
        if host in errors:
            report.results[host] = ShipResult(host, skipped=False, error=str(errors[host]) or type(errors[host]).__name__)
        elif found.get(host) is None:
            report.results[host] = ShipResult(host, skipped=True)
    order = [*(h for h in addresses if h in conns), *(h for h in conns if h not in addresses)]  # the inventory's
    lacking = {h: found[h] for h in order if found.get(h) is not None}
    needs = [HostNeed(h, frozenset(set(image.chains) - held.chains), held.relay and h in addresses)
             for h, held in lacking.items()]
    report.route = plan_route(needs, sizes_by_layer(image.chains, history(client, tag), local.attrs.get("Size", 0)))
    direct = {h: lacking[h].chains for h in report.route.direct}
    if not report.route.chain:
        _direct(image, direct, conns, on_bytes, report)
        return report
    chain = {h: lacking[h].chains for h in report.route.chain}
    again = _down_chain(image, chain, conns, addresses, on_bytes, report, direct=direct)
    if again:  # fed again around the host that cut them off: from a host that has the image now, else from here
        fed = [h for h in chain if h not in again and not report.results[h].error]
        if fed or len(again) > 1:
            again = _down_chain(image, {h: lacking[h].chains for h in again}, conns, addresses, on_bytes, report,
                                source=fed[0] if fed else None)
    if again:  # the last resort: straight from here
        missed = {h: report.results[h].error for h in again}
        _direct(image, {h: lacking[h].chains for h in again}, conns, on_bytes, report)
        for host, why in missed.items():
            report.results[host].detour = why
    return report
