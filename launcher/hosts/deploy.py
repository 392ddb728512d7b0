"""Before a multi-host run: reach every host and find its NIC; build the job's image and ship it."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import fabric
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from ..errors import RunError
from ..image.build import CACHE, BuiltImage, build_image
from ..image.prune import KEEP, prune_here, prune_host, repository_of
from ..image.ship import ShipReport, ship_image
from ..spec import Host, JobSpec
from .parallel import on_every_host
from .ssh import connect, run

STREAM_TIMEOUT_S = 1800  # the Docker SDK's read timeout: a build step or a save stream may be silent this long


@dataclass
class Reached:
    """Open connections to every host of a run, and the interface each reaches rank 0 by."""

    conns: dict[str, fabric.Connection]
    nics: dict[str, str] = field(default_factory=dict)

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()


def connect_all(hosts: tuple[Host, ...]) -> dict[str, fabric.Connection]:
    """A connection to every host, in parallel; one error naming every host that failed."""
    conns, errors = on_every_host(hosts, connect, lambda h: h.name)
    if errors:
        for conn in conns.values():
            conn.close()
        raise RunError("; ".join(str(errors[h.name]) for h in hosts if h.name in errors))
    return conns


def reach(hosts: tuple[Host, ...]) -> Reached:
    """Connect to every host and find the NICs the plan needs; nothing is started on them."""
    conns = connect_all(hosts)
    try:
        return Reached(conns, detect_nics(hosts, conns))
    except BaseException:
        for conn in conns.values():
            conn.close()
        raise


def detect_nics(hosts: tuple[Host, ...], conns: dict[str, fabric.Connection]) -> dict[str, str]:
    """For hosts without `nic`: the interface that holds (rank 0) or routes to rank 0's address."""
    master = hosts[0].address
    found: dict[str, str] = {}
    for i, host in enumerate(hosts):
        if host.nic:
            continue
        argv = ["ip", "-o", "-4", "addr", "show", "to", master] if i == 0 else ["ip", "-o", "route", "get", master]
        code, out = run(conns[host.name], argv)
        words = out.split()
        if code == 0 and i == 0 and len(words) > 1:
            found[host.name] = words[1]
        elif code == 0 and "dev" in words:
            found[host.name] = words[words.index("dev") + 1]
    return found


def provide_image(job: JobSpec, conns: dict[str, fabric.Connection], say) -> BuiltImage:
    """Build the job's image here unless it exists, and get it onto every host that lacks it."""
    import docker

    try:
        # Builds and `docker save` streams can be silent for minutes on images of several GB: the
        # SDK's default 60 s read timeout would end them with a traceback.
        client = docker.from_env(timeout=STREAM_TIMEOUT_S)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - the SDK raises several kinds
        raise RunError(f"cannot reach this machine's Docker engine to build the job's image: {exc}") from None
    image = build_image(job, client, say)
    say(f"image {image.tag} ({'built' if image.built else 'unchanged'})")
    report = _ship_with_progress(client, image.tag, conns)
    for host, result in report.results.items():
        if result.skipped:
            say(f"{host}: has the image already")
        elif not result.error:
            say(f"{host}: sent {result.layers_sent} layer(s), {_size(result.bytes_sent)}; "
                f"{result.layers_skipped} layer(s) were there already")
    report.raise_for_failures()
    _prune(client, image.tag, conns, say)
    return image


def _prune(client, tag: str, conns: dict[str, fabric.Connection], say) -> None:
    """The job's old images go, here and on every host (`image.prune`); a failure only costs disk."""
    try:
        here = prune_here(client, tag)
    except Exception:  # noqa: BLE001 - pruning never fails a run
        here = []
    removed, _ = on_every_host(conns.items(), lambda item: prune_host(item[1], tag), lambda item: item[0])
    counts = {host: len(tags) for host, tags in removed.items() if tags}
    if here or counts:
        where = ", ".join([*(["this machine"] if here else []), *counts])
        say(f"removed old images of {repository_of(tag)} (keeping the newest {KEEP}): {where}")


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _ship_with_progress(client, tag: str, conns: dict[str, fabric.Connection]) -> ShipReport:
    lock = threading.Lock()
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  transient=True, disable=not os.isatty(1)) as progress:
        total = client.images.get(tag).attrs.get("Size")
        tasks = {host: progress.add_task(f"sending to {host}", total=total) for host in conns}

        def on_bytes(host: str, n: int) -> None:
            with lock:
                progress.advance(tasks[host], n)

        return ship_image(client, tag, conns, Path(CACHE) / "layer-dirs.json", on_bytes)
