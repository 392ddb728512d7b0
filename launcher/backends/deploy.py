"""Before a lab run: reach every host and find its NIC; build the job's image and ship it; copy the
job's workdir to every host (what changed only). The SSH backend's `prepare`."""

from __future__ import annotations

import dataclasses
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fabric
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from ..record.outcome import Phases
from ..errors import RunError
from ..image.build import CACHE, BuiltImage, build_here
from ..image.prune import KEEP, prune_here, prune_host, repository_of
from ..image.layers import chain_ids
from ..image.route import FANOUT_MIN_SAVING, HostNeed, layer_bytes, plan_route, sizes_by_layer
from ..image.squeeze import mode as compression
from ..image.held import HostImages, history, survey
from ..image.ship import ShipReport, ShipResult, ship_image
from ..hosts.ports import check_ports_free, listeners_over
from ..plan import LaunchPlan, PlanOptions, make_plan
from ..plan.ports import first_host_ports
from ..spec import Host, JobSpec
from ..sync import hosts as sync
from ..sync.manifest import Manifest
from ..sync.transfer import Transfer, shared_transfers
from ..hosts.parallel import on_every_host
from ..hosts.ssh import connect, run



def connect_all(hosts: tuple[Host, ...]) -> dict[str, fabric.Connection]:
    """A connection to every host, in parallel; one error naming every host that failed."""
    conns, errors = on_every_host(hosts, connect, lambda h: h.name)
    if errors:
        for conn in conns.values():
            conn.close()
        raise RunError("; ".join(str(errors[h.name]) for h in hosts if h.name in errors))
    return conns


def connect_some(hosts: tuple[Host, ...]) -> tuple[dict[str, fabric.Connection], dict[str, Exception]]:
    """Connections to the hosts that can be reached, and why the others cannot (for --dry-run, which
    changes nothing: not even known_hosts, so a host whose key is not known yet is not asked)."""
    strict = tuple(dataclasses.replace(h, ssh=dataclasses.replace(h.ssh, host_key_policy="strict")) for h in hosts)
    return on_every_host(strict, connect, lambda h: h.name)


def image_here(tag: str, base: str) -> str:
    """Whether this machine has the job's image or a launch would build it (for --dry-run)."""
    import docker
    import docker.errors

    try:
        docker.from_env().images.get(tag)
        return "built already on this machine"
    except docker.errors.ImageNotFound:
        return f"would be built on {base}"
    except Exception as exc:  # noqa: BLE001 - the SDK raises several kinds
        return f"cannot tell: this machine's Docker engine does not answer ({exc})"


def images_on_hosts(tag: str, base: str, conns: dict[str, fabric.Connection], addresses: dict[str, str]) -> tuple[dict[str, str], str | None]:
    """Whether each host has the job's image, and which way the layers it lacks would go; and a
    line on what leaves this machine when a chain is used (for --dry-run). Before the image is built,
    its base stands in for it (every host that lacks the image lacks the job's own, small, layers)."""
    import docker

    def one(item: tuple[str, fabric.Connection]) -> HostImages | None:
        code, _ = run(item[1], ["docker", "image", "inspect", "--format", "{{.Id}}", tag], timeout=60)
        return None if code == 0 else survey(item[1])

    found, errors = on_every_host(conns.items(), one, lambda item: item[0])
    said = {host: f"cannot tell: {errors[host]}" for host in errors}
    said.update({host: "has it" for host in conns if host in found and found[host] is None})
    order = [*addresses, *(h for h in conns if h not in addresses)]  # the inventory's
    lacking = {h: found[h] for h in order if found.get(h) is not None}
    if not lacking:
        return said, None
    try:
        client = docker.from_env()
        here = next(name for name in (tag, base) if _exists(client, name))
        local = client.images.get(here)
    except Exception:  # noqa: BLE001 - no engine here, or neither image: the layers are not known yet
        said.update({h: "lacks it: its layers go direct from this machine, or down a chain of hosts when several "
                        "lack the same ones (decided once the image is built)" for h in lacking})
        return said, None
    chains = chain_ids(local.attrs["RootFS"]["Layers"])
    sizes = sizes_by_layer(chains, history(client, here), local.attrs.get("Size", 0))
    needs = [HostNeed(h, frozenset(set(chains) - v.chains), v.relay and h in addresses) for h, v in lacking.items()]
    route = plan_route(needs, sizes)
    extra = " and the job's own" if here != tag else ""
    for need in needs:
        said[need.host] = (f"lacks it: would get {len(need.missing)} layer(s) of {here}{extra}, "
                           f"{_size(layer_bytes(need.missing, sizes))}: {route.path(need.host)}")
    each = sum(layer_bytes(n.missing, sizes) for n in needs)
    packed = "" if compression() == "off" else ", before compression"
    line = (f"image: about {_size(route.bytes_out)} would leave this machine{packed} (sent to each host directly: {_size(each)})"
            if route.chain else None)
    return said, line


def _exists(client, name: str) -> bool:
    import docker.errors

    try:
        client.images.get(name)
        return True
    except docker.errors.ImageNotFound:
        return False


def _nic_lines(hosts: tuple[Host, ...], conns: dict[str, fabric.Connection]) -> list[str]:
    """For --dry-run: the interface each host without `nic` would get (GLOO_SOCKET_IFNAME and
    NCCL_SOCKET_IFNAME, which the plan above leaves out: a launch finds them again)."""
    lacking = [h for h in hosts if not h.nic and not h.is_local]
    if not lacking:
        return []
    found: dict[str, str] = {}
    if all(h.name in conns for h in hosts):
        try:
            found = detect_nics(hosts, conns)
        except Exception:  # noqa: BLE001 - a dry run says it cannot tell, and goes on
            found = {}
    return [f"{h.name}: GLOO_SOCKET_IFNAME/NCCL_SOCKET_IFNAME={found[h.name]} (not in the plan above: found at launch, "
            f"the interface that reaches {hosts[0].net_address})" if h.name in found else
            f"{h.name}: GLOO_SOCKET_IFNAME/NCCL_SOCKET_IFNAME: found at launch (every host must answer to find it now)"
            for h in lacking]


def describe_deployment(job: JobSpec, hosts: tuple[Host, ...], manifest: Manifest, image: str | None,
                        folders: dict[str, str]) -> str:
    """For --dry-run: what would be built, and sent to each host (asks the hosts, sends nothing)."""
    lines = [f"\nworkdir {job.workdir}: {len(manifest.entries)} file(s), {manifest.total_bytes} bytes, hash {manifest.hash}"]
    if image:
        lines.append(f"image {image}: {image_here(image, job.image.base)}")
    conns, unreachable = connect_some(tuple(h for h in hosts if not h.is_local))
    try:
        transfers = plan_workdir(manifest, {k: v for k, v in folders.items() if k in conns}, conns)
        addresses = {h.name: h.net_address for h in hosts if h.name in conns}
        on_hosts, route_line = images_on_hosts(image, job.image.base, conns, addresses) if image else ({}, None)
        if route_line:
            lines.append(route_line)
        groups = shared_transfers({h: t for h in addresses if isinstance(t := transfers.get(h), Transfer)}, FANOUT_MIN_SAVING)
        paths = {h: " -> ".join(("this machine", *group[:i + 1])) for group in groups for i, h in enumerate(group)}
        for host in hosts:
            if host.name in unreachable:
                lines.append(f"{host.name}: cannot tell: {unreachable[host.name]}")
                continue
            if host.name in on_hosts:
                lines.append(f"{host.name}: image: {on_hosts[host.name]}")
            found = transfers.get(host.name)
            if isinstance(found, Transfer):
                lines.append(found.describe() + (f"; relayed: {paths[host.name]}" if host.name in paths else ""))
            else:
                lines.append(f"{host.name}: workdir: cannot tell: {found}")
        lines += _nic_lines(hosts, conns)
    finally:
        for conn in conns.values():
            conn.close()
    return "\n".join(lines)


def detect_nics(hosts: tuple[Host, ...], conns: dict[str, fabric.Connection]) -> dict[str, str]:
    """For hosts without `nic`: the interface that holds (rank 0) or routes to rank 0's address."""
    master = hosts[0].net_address

    def nic(host: Host) -> str | None:
        first = host is hosts[0]
        argv = ["ip", "-o", "-4", "addr", "show", "to", master] if first else ["ip", "-o", "route", "get", master]
        code, out = run(conns[host.name], argv)
        words = out.split()
        if code == 0 and first and len(words) > 1:
            return words[1]
        if code == 0 and "dev" in words:
            return words[words.index("dev") + 1]
        return None

    found, _ = on_every_host([h for h in hosts if not h.nic], nic, lambda h: h.name)  # every host at once
    return {host: name for host, name in found.items() if name}


def provide_image(job: JobSpec, conns: dict[str, fabric.Connection], say, phases: Phases | None = None,
                  tidy: list | None = None, addresses: dict[str, str] | None = None) -> BuiltImage:
    """Build the job's image here unless it exists, and get it onto every host that lacks it (down a
    chain of hosts, by their lab `addresses`, where that pays); its old images are removed then, or
    later by whoever runs what `tidy` collects."""
    phases = phases or Phases()
    client, image = build_here(job, say, phases)
    with phases.timing("ship"):
        report = _ship_with_progress(client, image.tag, conns, addresses)
    for host, result in report.results.items():
        if result.skipped:
            say(f"{host}: has the image already")
        elif not result.error and result.via:
            say(f"{host}: received {_size(result.bytes_sent)}{_packed(result)} from {result.via} (a chain of hosts){_timing(result)}, "
                f"for the {result.layers_sent} layer(s) it lacked; {result.layers_skipped} layer(s) were there already")
        elif not result.error:
            say(f"{host}: sent {result.layers_sent} layer(s), {_size(result.bytes_sent)}{_packed(result)}{_timing(result)}; "
                f"{result.layers_skipped} layer(s) were there already"
                + (f" (from this machine, after it {result.detour})" if result.detour else ""))
    if report.route.chain:
        say(f"image: {_size(report.bytes_out)} left this machine for {len(report.route.chain) + len(report.route.direct)} "
            f"host(s), down the chain {' -> '.join(('this machine', *report.route.chain))}")
    report.raise_for_failures()
    if tidy is None:
        _prune(client, image.tag, conns, say)
    else:
        tidy.append(lambda: _prune(client, image.tag, conns, say))
    return image


def _packed(result: ShipResult) -> str:
    return f" (compressed from {_size(result.raw_bytes)})" if result.raw_bytes > 1.05 * result.bytes_sent else ""


def _timing(result: ShipResult) -> str:
    if result.stream_s is None or result.bytes_sent < 10**6:
        return ""
    return f" in {result.stream_s:.1f} s, loaded {result.seconds:.1f} s after the start"


def workdir_folders(hosts: tuple[Host, ...], job: str, remote_jobs: str, local_user: str) -> dict[str, str]:
    """Where each host keeps the job's workdir copies (its SSH user's folder)."""
    from ..plan import workdir_copies

    return {h.name: workdir_copies(remote_jobs, h.ssh.user or local_user, job) for h in hosts}


def plan_workdir(manifest: Manifest, folders: dict[str, str], conns: dict[str, fabric.Connection]) -> dict[str, Transfer | Exception]:
    """What each host would be sent to hold this workdir: asks the hosts, changes nothing."""
    cache = Path(CACHE) / "workdir-manifests"
    found, errors = on_every_host(
        folders.items(), lambda item: sync.plan_for(conns[item[0]], item[0], item[1], manifest, cache), lambda item: item[0]
    )
    return {host: found.get(host) or errors[host] for host in folders}


def provide_workdir(workdir: Path, manifest: Manifest, folders: dict[str, str], conns: dict[str, fabric.Connection],
                    say, tidy: list | None = None, addresses: dict[str, str] | None = None) -> None:
    """Every host gets an exact copy of the workdir (from the copy it has that is nearest; down a
    chain of hosts, by their lab `addresses`, where several need the same large stream), then loses
    its copies beyond the newest few (then, or later by whoever runs what `tidy` collects); one error
    naming every host that failed."""
    cache = Path(CACHE) / "workdir-manifests"
    sync.remember(manifest, cache)
    planned = plan_workdir(manifest, folders, conns)
    failures = {h: t for h, t in planned.items() if isinstance(t, Exception)}
    transfers = {h: t for h, t in planned.items() if isinstance(t, Transfer)}
    addresses = addresses or {}
    chains = shared_transfers({h: transfers[h] for h in addresses if h in transfers}, FANOUT_MIN_SAVING)  # in the inventory's order

    def direct(item: tuple[str, Transfer]) -> sync.SyncResult:
        return sync.send(conns[item[0]], folders[item[0]], workdir, manifest, item[1])

    chained = {h for group in chains for h in group}
    results, errors = on_every_host([(h, t) for h, t in transfers.items() if h not in chained], direct, lambda item: item[0])
    for group in chains:
        got = sync.send_down_chain(conns, {h: (folders[h], addresses[h]) for h in group}, workdir, manifest, transfers[group[0]])
        results.update({h: r for h, r in got.items() if isinstance(r, sync.SyncResult)})
        again, still = on_every_host([(h, transfers[h]) for h, r in got.items() if isinstance(r, Exception)], direct, lambda item: item[0])
        results.update(again)  # a host the chain failed gets its copy straight from here
        errors.update(still)
    failures.update(errors)
    for host, result in results.items():
        t = result.transfer
        if t.present:
            say(f"{host}: has workdir {t.target} already")
        elif result.via:
            say(f"{host}: workdir {t.target}: received {len(t.send)} file(s) from {result.via} (a chain of hosts), "
                f"{_size(result.sent_bytes)} in all")
        else:
            start = f" onto its copy {t.base}" if t.base else ""
            say(f"{host}: workdir {t.target}: sent {len(t.send)} file(s){start}, {_size(result.sent_bytes)} in all")
    if failures:
        lines = "; ".join(str(failures[h]) if str(failures[h]).startswith(h) else f"{h}: {failures[h]}" for h in folders if h in failures)
        raise RunError(f"the workdir could not be copied to {len(failures)} host(s): {lines}")
    untidy = {h: folder for h, folder in folders.items() if not results[h].transfer.leaves_copies_tidy(KEEP)}
    if tidy is None:
        _prune_copies(manifest, untidy, conns, say)
    elif untidy:
        tidy.append(lambda: _prune_copies(manifest, untidy, conns, say))


def _prune_copies(manifest: Manifest, folders: dict[str, str], conns: dict[str, fabric.Connection], say) -> None:
    """Every host loses its workdir copies beyond the newest few (never the one of this run)."""
    removed, _ = on_every_host(folders.items(), lambda item: sync.prune(conns[item[0]], item[1], manifest.hash, KEEP),
                               lambda item: item[0])
    counts = [host for host, names in removed.items() if names]
    if counts:
        say(f"removed old workdir copies (keeping the newest {KEEP}): {', '.join(counts)}")


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


def _ship_with_progress(client, tag: str, conns: dict[str, fabric.Connection], addresses: dict[str, str] | None) -> ShipReport:
    """Ship the image with a bar per host (what it has received, from this machine or the host before it)."""
    lock = threading.Lock()
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  transient=True, disable=not os.isatty(1)) as progress:
        total = client.images.get(tag).attrs.get("Size")
        tasks = {host: progress.add_task(f"image to {host}", total=total) for host in conns}

        def on_bytes(host: str, n: int) -> None:
            with lock:
                if host in tasks:
                    progress.advance(tasks[host], n)

        return ship_image(client, tag, conns, Path(CACHE) / "layer-dirs.json", on_bytes, addresses)


def prepare_lab(backend, job: JobSpec, hosts: tuple[Host, ...], run_id: str, options: PlanOptions,
                manifest: Manifest, say, phases: Phases) -> LaunchPlan:
    """Get the lab hosts ready for the run and plan it: reach them, then at once find their NICs,
    check rank 0's ports, get the job's image onto them and sync the workdir. `backend` keeps the
    connections."""
    with phases.timing("connect"):
        conns = connect_all(hosts)
    backend.conns.update(conns)  # closed by the backend from here on
    addresses = {h.name: h.net_address for h in hosts if not h.is_local}  # where the hosts reach each other

    def workdir() -> None:
        with phases.timing("workdir"):
            provide_workdir(job.workdir, manifest, lab_folders(job, hosts, options), conns, say, backend.tidy_ups,
                            addresses)

    # the NICs are found and the workdir goes while the ports are asked and the image comes
    with ThreadPoolExecutor(max_workers=2) as pool:
        nics = pool.submit(detect_nics, hosts, conns)
        copied = pool.submit(workdir)
        first = hosts[0]
        check_ports_free(f"{first.name} (rank 0's host)", first_host_ports(job, hosts), listeners_over(conns[first.name]))
        plan = make_plan(job, hosts, run_id, dataclasses.replace(options, nics=nics.result()))
        if options.image:
            built = provide_image(job, conns, say, phases, backend.tidy_ups, addresses)
            assert built.tag == options.image, (built.tag, options.image)
            plan = dataclasses.replace(plan, image_id=built.id)
        copied.result()
    return plan


def lab_folders(job: JobSpec, hosts: tuple[Host, ...], options: PlanOptions) -> dict[str, str]:
    """Where each lab host of the run keeps the job's workdir copies."""
    return workdir_folders(tuple(h for h in hosts if not h.is_local), job.name, options.remote_jobs, options.local_user)
