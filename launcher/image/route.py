"""Which way each host's missing layers go: straight from this machine, or down a chain of hosts
(`hosts.chain`) so that they leave this machine once. Pure planning: what the hosts hold is asked
elsewhere.

A chain pays when several hosts lack the same large layers: the launcher's link then carries them
once instead of once per host. It does not pay for one host, for hosts that hold the layers, or for
a few megabytes (a code edit's top layer), where starting the relays costs more than the copies it
saves; nor for a host that lacks only a little of what the others lack (it would receive, and unpack,
the whole stream).
"""

from __future__ import annotations

from dataclasses import dataclass

FANOUT_MIN_SAVING = 64 * 10**6  # bytes the chain must keep off the launcher's link to be worth starting
THIS_MACHINE = "this machine"


@dataclass(frozen=True)
class HostNeed:
    host: str
    missing: frozenset[str]  # layers (chain IDs) it lacks; empty: it has the image
    relay: bool  # it can run a relay hop (it has python3)


@dataclass(frozen=True)
class ImageRoute:
    direct: tuple[str, ...] = ()  # hosts this machine sends their layers to, each its own copy
    chain: tuple[str, ...] = ()  # hosts fed one after the other: this machine -> chain[0] -> chain[1] ...
    chain_bytes: int = 0  # what the chain's stream holds: every layer a host of the chain lacks
    direct_bytes: dict[str, int] | None = None

    def path(self, host: str) -> str:
        if host in self.chain:
            i = self.chain.index(host)
            return "relayed: " + " -> ".join((THIS_MACHINE, *self.chain[:i + 1]))
        return f"direct from {THIS_MACHINE}"

    @property
    def bytes_out(self) -> int:
        """What leaves this machine, by the layer sizes planned with."""
        return self.chain_bytes + sum((self.direct_bytes or {}).values())


def layer_bytes(layers: frozenset[str] | set[str], sizes: dict[str, int]) -> int:
    return sum(sizes.get(layer, 0) for layer in layers)


def plan_route(needs: list[HostNeed], sizes: dict[str, int]) -> ImageRoute:
    """The route for every host of `needs` (each lacks the image), in their order (the inventory's)."""
    able = [n for n in needs if n.relay and n.missing]
    union = frozenset().union(*(n.missing for n in able)) if able else frozenset()
    # a host joins the chain if it lacks at least half of what the chain carries
    chain = [n for n in able if 2 * layer_bytes(n.missing, sizes) >= layer_bytes(union, sizes)]
    carried = frozenset().union(*(n.missing for n in chain)) if chain else frozenset()
    saving = sum(layer_bytes(n.missing, sizes) for n in chain) - layer_bytes(carried, sizes)
    if len(chain) < 2 or saving < FANOUT_MIN_SAVING:
        chain = []
    names = {n.host for n in chain}
    direct = [n for n in needs if n.host not in names]  # a host that has every layer still needs the image's config
    return ImageRoute(direct=tuple(n.host for n in direct), chain=tuple(n.host for n in chain),
                      chain_bytes=layer_bytes(carried, sizes) if chain else 0,
                      direct_bytes={n.host: layer_bytes(n.missing, sizes) for n in direct})


def sizes_by_layer(chains: list[str], history: list[dict], total: int) -> dict[str, int]:
    """Each layer's size (by chain ID), from the image's history (newest first, as the Engine API
    gives it): its entries that made a layer are the layers, oldest first. Where that cannot be
    matched up, every layer counts as an equal share of the image's size."""
    oldest_first = list(reversed(history))
    made = [h for h in oldest_first if h.get("Size", 0) > 0]
    if len(made) != len(chains):
        made = oldest_first  # a layer of 0 bytes; right where no entry is only metadata
    if len(made) != len(chains):
        share = total // max(1, len(chains))
        return {c: share for c in chains}
    return {c: int(h.get("Size", 0)) for c, h in zip(chains, made)}
