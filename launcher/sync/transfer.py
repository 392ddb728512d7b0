"""What to send a host so that it holds an exact copy of the workdir: pure planning, no I/O.

A host keeps complete copies of a job's recent workdirs, each named by its content hash. A new
copy starts as hard links to the copy that needs the fewest bytes sent, drops what changed or went,
and receives only the files that copy lacks.
"""

from __future__ import annotations

from dataclasses import dataclass

from .manifest import Entry, Manifest


@dataclass(frozen=True)
class Transfer:
    host: str
    target: str  # the workdir's hash: the name of its copy on the host
    present: bool  # the host has this exact workdir already: nothing to send
    base: str | None = None  # the host's copy the new one starts from (None: from nothing)
    send: tuple[Entry, ...] = ()
    remove: tuple[str, ...] = ()  # paths of the base copy the new one must not have
    copies: tuple[str, ...] = ()  # the host's copies before it, newest first
    leftovers: bool = False  # the host holds a transfer's folder (under way, or left by a launch that died)

    def leaves_copies_tidy(self, keep: int) -> bool:
        """Whether the host's copies need no tidying after it: it had this very copy as its newest,
        no more than `keep` copies and no transfer's folder."""
        return self.present and self.copies[:1] == (self.target,) and len(self.copies) <= keep and not self.leftovers

    @property
    def bytes(self) -> int:
        return sum(e.size for e in self.send)

    def describe(self) -> str:
        if self.present:
            return f"{self.host}: has workdir {self.target} already; nothing to send"
        start = f"from its copy {self.base}" if self.base else "from nothing"
        return (f"{self.host}: workdir {self.target} {start}: send {len(self.send)} file(s), {_size(self.bytes)}"
                + (f"; drop {len(self.remove)}" if self.remove else ""))


def plan_transfer(host: str, manifest: Manifest, copies: list[str], known: dict[str, Manifest],
                  leftovers: bool = False) -> Transfer:
    """The transfer to `host`, which holds `copies` (workdir hashes; `leftovers`: a transfer's folder
    too); `known`: their manifests, where known (a copy without one can still be skipped but not
    started from)."""
    target = manifest.hash
    if target in copies:
        return Transfer(host, target, present=True, copies=tuple(copies), leftovers=leftovers)
    best = Transfer(host, target, present=False, send=manifest.entries, copies=tuple(copies))
    for name in copies:
        if name not in known:
            continue
        candidate = _from(host, manifest, name, known[name], copies)
        if candidate.bytes < best.bytes or (candidate.bytes == best.bytes and best.base is None):
            best = candidate
    return best


def _from(host: str, manifest: Manifest, name: str, base: Manifest, copies: list[str]) -> Transfer:
    there = {e.path: e.key for e in base.entries}
    wanted = {e.path: e.key for e in manifest.entries}
    send = tuple(e for e in manifest.entries if there.get(e.path) != e.key)
    remove = tuple(sorted(p for p, key in there.items() if wanted.get(p) != key))
    return Transfer(host, manifest.hash, present=False, base=name, send=send, remove=remove, copies=tuple(copies))


def shared_transfers(transfers: dict[str, Transfer], min_saving: int) -> list[tuple[str, ...]]:
    """Groups of hosts (in the order of `transfers`) that need the very same stream (the same files
    onto the same copy, or from nothing) and enough of it that passing it down a chain of them keeps
    at least `min_saving` bytes off this machine's link."""
    groups: dict[tuple, list[str]] = {}
    for host, t in transfers.items():
        if not t.present:
            groups.setdefault((t.target, t.base, t.send, t.remove), []).append(host)
    return [tuple(hosts) for hosts in groups.values()
            if len(hosts) > 1 and (len(hosts) - 1) * transfers[hosts[0]].bytes >= min_saving]


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"
