"""What a host's Docker engine holds: the layers of its images, the ID a tag names there, and
whether it can run a relay hop; and this machine's image history (for layer sizes). Asked over SSH,
changing nothing but a tag."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import RunError
from .layers import chain_ids

# Which layers (chain IDs) the host's images hold, one JSON list per image; then whether its python3
# can run a relay hop.
_SURVEY = (
    "docker image ls -aq --no-trunc | sort -u | xargs -r docker image inspect --format '{{json .RootFS.Layers}}' || exit 1; "
    "python3 -c 'import sys; sys.exit(sys.version_info < (3, 6))' >/dev/null 2>&1 && echo relay-ok; exit 0"
)


@dataclass(frozen=True)
class HostImages:
    chains: set[str]  # the layers its images hold
    relay: bool  # it can pass a stream on (python3 3.6 or later)


def survey(conn) -> HostImages:
    """What the host's images hold, and whether it can run a relay hop."""
    from ..hosts.ssh import run

    code, out = run(conn, ["sh", "-c", _SURVEY])
    if code != 0:
        raise RunError(f"cannot list the host's images: {out.strip()[-300:]}")
    chains: set[str] = set()
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("["):
            chains.update(chain_ids(json.loads(line)))
    return HostImages(chains, "relay-ok" in out.split())


def image_id_on(conn, tag: str) -> str | None:
    from ..hosts.ssh import run

    code, out = run(conn, ["docker", "image", "inspect", "--format", "{{.Id}}", tag])
    return out.strip() if code == 0 else None


def tag_held_image(conn, image_id: str, tag: str) -> bool:
    """Tag the image on the host if it has it already (jobs with the same inputs share one image)."""
    from ..hosts.ssh import run

    if image_id_on(conn, image_id) != image_id:
        return False
    code, _ = run(conn, ["docker", "tag", image_id, tag])
    return code == 0 and image_id_on(conn, tag) == image_id


def history(client, tag: str) -> list[dict]:
    """The image's history as the Engine API gives it (for layer sizes); empty where it cannot."""
    try:
        return client.api.history(tag)
    except Exception:  # noqa: BLE001 - sizes are then estimated
        return []
