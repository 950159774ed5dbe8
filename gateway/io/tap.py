"""A tap on the gateway's traffic, for recording captures (`[capture]` in the config).

The service calls the tap for every connection opened and closed and every frame that crosses
the gateway, on either side. A tap must return at once (it is on the transaction path): queue
the work, never block.
"""

from __future__ import annotations

from typing import Literal, Protocol

from gateway.wire.framing import Frame

Side = Literal["terminal", "acquirer"]
Address = tuple[str, int]


class FrameTap(Protocol):
    def connection_opened(self, side: Side, local: Address, peer: Address) -> None:
        """A TCP connection on this side is up (local = the gateway's end)."""

    def frame(self, side: Side, inbound: bool, local: Address, peer: Address, frame: Frame) -> None:
        """A frame crossed this connection; inbound = towards the gateway."""

    def connection_closed(self, side: Side, local: Address, peer: Address) -> None:
        """The connection is gone."""


def addresses(transport: object) -> tuple[Address, Address]:
    """(local, peer) of an asyncio transport, ("?", 0) where unknown."""
    get = getattr(transport, "get_extra_info", None)
    local = get("sockname") if get else None
    peer = get("peername") if get else None
    return (_address(local), _address(peer))


def _address(value: object) -> Address:
    if isinstance(value, tuple) and len(value) >= 2:
        return (str(value[0]), int(value[1]))
    return ("?", 0)
