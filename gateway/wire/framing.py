"""Sans-IO framing: length headers, TPDU and fixed headers around an ISO 8583 message.

A frame on the wire is ``[length header][TPDU (5)][fixed header (N)][message]``; each part but
the message is optional and set by the dialect's (or the link's) :class:`Framing`.

TO BE IMPLEMENTED (contract):

    class FrameDecoder:             # one per connection
        def __init__(self, framing: Framing) -> None
        def feed(self, data: bytes) -> list[Frame]   # any chunking; raises FramingError
        def close(self) -> None     # end of stream; raises TruncatedFrame if bytes are buffered
        buffered: int               # bytes held for an incomplete frame

    def encode_frame(framing: Framing, frame: Frame) -> bytes
    def split_frame(framing: Framing, body: bytes) -> Frame   # body = bytes after the length
    def read_frame(framing: Framing, data: bytes) -> Frame    # exactly one frame, length incl.
    def swap_tpdu(tpdu: bytes) -> bytes                       # response TPDU
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

LengthHeader = Literal["binary2", "binary2_inclusive", "ascii4", "hex4", "bcd2", "binary4", "none"]
LENGTH_HEADERS: tuple[str, ...] = get_args(LengthHeader)

TPDU_LENGTH = 5


@dataclass(frozen=True, slots=True)
class Framing:
    length: LengthHeader = "binary2"
    tpdu: bool = False  # 5-byte TPDU after the length header
    header_length: int = 0  # fixed message header after the TPDU (CUP: 6, Visa BASE I: 22)
    max_frame: int = 8192  # largest accepted frame body (the bytes the length counts)


@dataclass(frozen=True, slots=True)
class Frame:
    message: bytes  # the ISO 8583 message: MTI onwards
    tpdu: bytes = b""  # 5 bytes or empty
    header: bytes = b""  # the fixed header, or empty

    @property
    def is_keepalive(self) -> bool:
        """A zero-length frame: some terminals and hosts send it to keep the link open."""
        return not (self.message or self.tpdu or self.header)


class FramingError(ValueError):
    """A byte stream that is not a valid sequence of frames. ``offset``: where in the stream."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} (at stream offset {offset})")
        self.offset = offset


class OversizedFrame(FramingError):
    def __init__(self, length: int, limit: int, offset: int) -> None:
        super().__init__(f"frame length {length} exceeds the maximum of {limit} bytes", offset)
        self.length = length
        self.limit = limit


class BadLengthHeader(FramingError):
    def __init__(self, header: bytes, kind: str, offset: int) -> None:
        super().__init__(f"length header {header.hex()} is not valid {kind}", offset)
        self.header = header


class TruncatedFrame(FramingError):
    def __init__(self, expected: int, received: int, offset: int) -> None:
        super().__init__(
            f"truncated frame: length says {expected} bytes but only {received} follow", offset
        )
        self.expected = expected
        self.received = received


class ShortTPDU(FramingError):
    def __init__(self, needed: int, received: int, offset: int) -> None:
        super().__init__(
            f"frame of {received} bytes is too short for its TPDU/header ({needed} bytes)", offset
        )
        self.needed = needed
        self.received = received
