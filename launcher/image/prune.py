"""Old job images go: each job keeps its newest few, on this machine and on every host.

Every edit of a job makes a new image (`launch/<job>:<hash>`); without pruning, each would stay in
every Docker store for good. After a launch has its image in place, the job's images beyond the
newest `KEEP` (and never the one being launched) are removed without force, so Docker itself
refuses to remove an image that a container, such as a run still going, uses.
"""

from __future__ import annotations

from typing import Iterable

KEEP = 3  # a job's newest images kept in each store: the current one and the last edits before it


def stale(tags_newest_first: Iterable[str], current: str, keep: int = KEEP) -> list[str]:
    """The tags to remove: all but the newest `keep`, never `current`."""
    others = [t for t in tags_newest_first if t != current and not t.endswith(":<none>")]
    return others[max(keep - 1, 0):]


def repository_of(tag: str) -> str:
    return tag.rsplit(":", 1)[0]


def prune_here(client, current: str, keep: int = KEEP) -> list[str]:
    """Remove this machine's stale images of `current`'s repository; the tags removed."""
    import docker.errors

    images = client.images.list(name=repository_of(current))
    images.sort(key=lambda image: image.attrs.get("Created", ""), reverse=True)
    tags = [t for image in images for t in image.tags if repository_of(t) == repository_of(current)]
    removed = []
    for tag in stale(tags, current, keep):
        try:
            client.images.remove(tag)
            removed.append(tag)
        except docker.errors.APIError:  # in use by a container, or gone already
            continue
    return removed


def prune_host(conn, current: str, keep: int = KEEP) -> list[str]:
    """Remove a host's stale images of `current`'s repository (`docker image ls` lists newest first)."""
    from ..hosts.ssh import run

    def tags() -> list[str] | None:
        code, out = run(conn, ["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", repository_of(current)])
        return out.split() if code == 0 else None

    doomed = stale(tags() or [], current, keep)
    if not doomed:
        return []
    run(conn, ["docker", "image", "rm", *doomed])  # one refused (in use) does not stop the others
    left = tags()
    return [t for t in doomed if left is not None and t not in left]
