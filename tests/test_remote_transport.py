"""Pure unit tests of the SSH transport's bookkeeping (its SSH behaviour is tested on the lab)."""

from __future__ import annotations

from launcher.backends.ssh import SshBackend


class _Session:
    """An SFTP session whose closing races a lease renewal that drops another host's session."""

    def __init__(self, transport: SshBackend, other: str) -> None:
        self.transport, self.other, self.closed = transport, other, False

    def close(self) -> None:
        self.closed = True
        with self.transport.lock:
            self.transport.sftps.pop(self.other, None)


def test_closing_while_a_renewal_drops_a_session_closes_every_session() -> None:
    transport = SshBackend({}, None, "run")  # type: ignore[arg-type]
    first, second = _Session(transport, "h2"), _Session(transport, "h1")
    transport.sftps.update({"h1": first, "h2": second})  # type: ignore[dict-item]
    transport.close()
    assert first.closed and second.closed and transport.sftps == {}
