"""Doing one thing on every host at once, and hearing from every host (as Fabric's groups do)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, TypeVar


T = TypeVar("T")
R = TypeVar("R")


def on_every_host(items: Iterable[T], action: Callable[[T], R], name: Callable[[T], str]) -> tuple[dict[str, R], dict[str, Exception]]:
    """`action` on every item at once (one thread each); every result and every error, by name.

    One host's failure never stops the others' (as Fabric's group operations)."""
    items = list(items)
    results: dict[str, R] = {}
    errors: dict[str, Exception] = {}

    def one(item: T) -> None:
        try:
            results[name(item)] = action(item)
        except Exception as exc:  # noqa: BLE001 - collected and reported with the host's name
            errors[name(item)] = exc

    if items:
        with ThreadPoolExecutor(max_workers=len(items)) as pool:
            list(pool.map(one, items))
    return results, errors
