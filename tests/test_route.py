"""Which way each host's bytes go (pure planning): a chain where several hosts lack the same large
layers or files, the direct path where that would not pay."""

from __future__ import annotations

from launcher.image.route import FANOUT_MIN_SAVING, HostNeed, plan_route, sizes_by_layer
from launcher.sync.manifest import Entry
from launcher.sync.transfer import Transfer, shared_transfers

GB = 10**9
SIZES = {"base": GB, "deps": 200 * 10**6, "code": 10**5}


def need(host: str, *missing: str, relay: bool = True) -> HostNeed:
    return HostNeed(host, frozenset(missing), relay)


def test_hosts_lacking_the_same_layers_form_a_chain_in_inventory_order() -> None:
    route = plan_route([need("h3", "base", "deps", "code"), need("h1", "base", "deps", "code"), need("h2")], SIZES)
    assert route.chain == ("h3", "h1")
    assert route.direct == ("h2",)  # it has every layer, not the image: its config and manifest go to it
    assert route.path("h1") == "relayed: this machine -> h3 -> h1"
    assert route.bytes_out == GB + 200 * 10**6 + 10**5  # once, not twice


def test_one_host_or_a_small_top_layer_goes_direct() -> None:
    assert plan_route([need("h1", "base", "deps", "code")], SIZES).direct == ("h1",)
    small = plan_route([need(h, "code") for h in ("h1", "h2", "h3")], SIZES)
    assert small.chain == () and small.direct == ("h1", "h2", "h3")
    assert small.path("h2") == "direct from this machine"


def test_a_host_lacking_little_of_what_the_chain_carries_goes_direct() -> None:
    route = plan_route([need("h1", "base", "deps", "code"), need("h2", "code"), need("h3", "base", "deps", "code")], SIZES)
    assert route.chain == ("h1", "h3") and route.direct == ("h2",)
    assert route.bytes_out == GB + 200 * 10**6 + 10**5 + 10**5


def test_a_host_without_python_goes_direct_and_the_rest_still_chain() -> None:
    route = plan_route([need(h, "base", relay=h != "h2") for h in ("h1", "h2", "h3")], SIZES)
    assert route.chain == ("h1", "h3") and route.direct == ("h2",)
    lone = plan_route([need(h, "base", relay=h == "h1") for h in ("h1", "h2")], SIZES)
    assert lone.chain == () and set(lone.direct) == {"h1", "h2"}


def test_the_saving_must_reach_the_threshold() -> None:
    just = {"layer": FANOUT_MIN_SAVING}
    assert plan_route([need("h1", "layer"), need("h2", "layer")], just).chain == ("h1", "h2")
    under = {"layer": FANOUT_MIN_SAVING - 1}
    assert plan_route([need("h1", "layer"), need("h2", "layer")], under).chain == ()


def test_layer_sizes_come_from_the_history_entries_that_made_layers() -> None:
    history = [{"Size": 30}, {"Size": 0}, {"Size": 20}, {"Size": 0}, {"Size": 10}]  # newest first
    assert sizes_by_layer(["a", "b", "c"], history, 60) == {"a": 10, "b": 20, "c": 30}
    assert sizes_by_layer(["a", "b"], [{"Size": 5}, {"Size": 5}, {"Size": 5}], 90) == {"a": 45, "b": 45}  # cannot match: shares


def entry(path: str, size: int) -> Entry:
    return Entry(path=path, executable=False, size=size, sha="0" * 64)


def test_hosts_needing_the_same_large_workdir_stream_are_grouped() -> None:
    big = (entry("data.bin", 40 * 10**6),)
    cold = {h: Transfer(h, "t1", False, None, big) for h in ("h1", "h2", "h3")}
    cold["h4"] = Transfer("h4", "t1", False, "t0", big)  # from a copy of its own: another stream
    cold["h5"] = Transfer("h5", "t1", True)
    assert shared_transfers(cold, FANOUT_MIN_SAVING) == [("h1", "h2", "h3")]
    assert shared_transfers({h: cold[h] for h in ("h1", "h2")}, FANOUT_MIN_SAVING) == []  # 40 MB saved: not worth it
