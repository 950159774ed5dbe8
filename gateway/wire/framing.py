"""Sans-IO framing: length headers, TPDU and fixed headers around an ISO 8583 message.

A frame on the wire is ``[length header][TPDU (5)][fixed header (N)][message]``; each part but
the message is optional and set by the dialect's (or the link's) :class:`Framing`. The *body*
is everything after the length header: TPDU + fixed header + message.

Length headers (``Framing.length``)::

    binary2            2 bytes big-endian, counts the body only (the common case)
    binary2_inclusive  2 bytes big-endian, counts the body and its own 2 bytes
    ascii4             4 ASCII digits        b"0005"
    hex4               4 ASCII hex digits    b"01AA" (either case read, upper case written)
    bcd2               2 bytes BCD           b"\\x01\\x23" = 123
    binary4            4 bytes big-endian
    none               no length: one message per datagram or file (no stream decoder)

API:

``FrameDecoder(framing)``
    One per connection. ``feed(data)`` takes bytes in any chunking and returns the frames they
    complete; ``close()`` says the stream ended and raises :class:`TruncatedFrame` if part of a
    frame is still buffered; ``buffered`` is how many bytes wait for the rest of a frame.
    A length is checked as soon as its header is complete, before the body is awaited, so a
    length above ``max_frame`` raises :class:`OversizedFrame` without buffering it. When one
    ``feed`` completes frames and then hits a bad spot, it returns those frames and the next
    ``feed``/``close`` raises the error (so a response just before garbage is not lost);
    ``pending_error`` shows it meanwhile.
    After a :class:`FramingError` the decoder has lost its place in the stream and is
    unusable: further calls raise ``RuntimeError``; the shell closes that one connection.
    ``FrameDecoder`` with ``length="none"`` raises ``ValueError`` at construction: without a
    length there is no way to find frame boundaries in a stream; use :func:`read_frame` on
    each datagram or file.

``encode_frame(framing, frame) -> bytes``
    The inverse. Raises ``ValueError`` (a bug on our side, not a peer's) when the frame's TPDU
    or header do not match the framing, or its body is longer than ``max_frame`` or the length
    header can express: we never send what our own decoder would refuse.

``split_frame(framing, body, offset=0) -> Frame``
    Cut a body into TPDU, fixed header and message.

``read_frame(framing, data) -> Frame``
    Exactly one frame, length header included (with ``"none"`` the whole of ``data`` is the
    body). Fewer bytes than the length says: :class:`TruncatedFrame`; more: :class:`TrailingData`.

``swap_tpdu(tpdu) -> bytes``
    The TPDU of the response: same id, destination and source swapped.

Rules common to all of them:

- A zero-length body is a keep-alive: ``Frame(b"")`` (``is_keepalive``), with no attempt to
  find a TPDU or header in it. With ``binary2_inclusive`` that is a length value of 2; values
  0 and 1 are :class:`BadLengthHeader`.
- ``max_frame`` limits the body (TPDU + header + message), whatever the length header counts.
- A non-empty body shorter than TPDU + fixed header is :class:`ShortTPDU`.
- Every error's ``offset`` is the stream offset where the offending frame starts (its length
  header; for ``read_frame`` that is 0). Errors quote at most the 2-4 length-header bytes,
  never the body, and ``Frame``'s repr shows the message's size only: no card data leaks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

from gateway.wire.snapshot import snapshot

LengthHeader = Literal["binary2", "binary2_inclusive", "ascii4", "hex4", "bcd2", "binary4", "none"]
LENGTH_HEADERS: tuple[str, ...] = get_args(LengthHeader)

TPDU_LENGTH = 5


@dataclass(frozen=True, slots=True)
class Framing:
    length: LengthHeader = "binary2"
    tpdu: bool = False  # 5-byte TPDU after the length header
    header_length: int = 0  # fixed message header after the TPDU (CUP: 6, Visa BASE I: 22)
    max_frame: int = 8192  # largest accepted frame body (TPDU + header + message)

    def __post_init__(self) -> None:
        # Framings come from dialect files: catch a typo here rather than on the first frame.
        if self.length not in LENGTH_HEADERS:
            raise ValueError(f"unknown length header {self.length!r}; one of {LENGTH_HEADERS}")
        if self.header_length < 0:
            raise ValueError(f"header_length must be >= 0, not {self.header_length}")
        if self.max_frame < 0:
            raise ValueError(f"max_frame must be >= 0, not {self.max_frame}")

    @property
    def overhead(self) -> int:
        """Bytes of TPDU and fixed header in front of every message (0 for a keep-alive)."""
        return (TPDU_LENGTH if self.tpdu else 0) + self.header_length


@snapshot
class Frame:
    message: bytes  # the ISO 8583 message: MTI onwards
    tpdu: bytes = b""  # 5 bytes or empty
    header: bytes = b""  # the fixed header, or empty

    @property
    def is_keepalive(self) -> bool:
        """A zero-length frame: some terminals and hosts send it to keep the link open."""
        return not (self.message or self.tpdu or self.header)

    def __repr__(self) -> str:
        # The message holds the PAN and track data: show its size only. TPDU and header are
        # routing data (ids and versions), safe and useful in logs.
        return (
            f"Frame(message=<{len(self.message)} bytes>, "
            f"tpdu={self.tpdu.hex().upper() or '-'}, header={self.header.hex().upper() or '-'})"
        )


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
    """The stream or data ended inside a frame.

    ``expected``/``received`` count body bytes, or with ``in_header`` length-header bytes
    (the stream ended before the length was complete).
    """

    def __init__(
        self, expected: int, received: int, offset: int, *, in_header: bool = False
    ) -> None:
        if in_header:
            text = f"truncated length header: needs {expected} bytes but only {received} follow"
        else:
            text = f"truncated frame: length says {expected} bytes but only {received} follow"
        super().__init__(text, offset)
        self.expected = expected
        self.received = received
        self.in_header = in_header


class ShortTPDU(FramingError):
    def __init__(self, needed: int, received: int, offset: int) -> None:
        super().__init__(
            f"frame of {received} bytes is too short for its TPDU/header ({needed} bytes)", offset
        )
        self.needed = needed
        self.received = received


class TrailingData(FramingError):
    """``read_frame``: more bytes follow the frame than its length says."""

    def __init__(self, expected: int, received: int, offset: int) -> None:
        super().__init__(
            f"length says {expected} bytes but {received} follow ({received - expected} extra)",
            offset,
        )
        self.expected = expected
        self.received = received


# --- length headers -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _LengthCodec:
    size: int  # bytes of the header itself
    max_body: int  # largest body the header can express
    read: Callable[[bytes], int | None]  # header -> body length, None when not valid
    write: Callable[[int], bytes]  # body length -> header


_HEX4 = re.compile(rb"[0-9A-Fa-f]{4}")


def _read_binary(header: bytes) -> int | None:
    return int.from_bytes(header, "big")


def _read_binary2_inclusive(header: bytes) -> int | None:
    value = int.from_bytes(header, "big")
    return value - 2 if value >= 2 else None


def _read_ascii4(header: bytes) -> int | None:
    # bytes.isdigit is ASCII-only; int() alone would accept b" +12" or b"1_23".
    return int(header) if header.isdigit() else None


def _read_hex4(header: bytes) -> int | None:
    # A pattern, because int(x, 16) also accepts b"0x1A", b" 1a" and b"1_2A".
    return int(header, 16) if _HEX4.fullmatch(header) else None


def _read_bcd2(header: bytes) -> int | None:
    digits = header.hex()  # one character per nibble: a nibble above 9 shows as a-f
    return int(digits) if digits.isdigit() else None


_LENGTH_CODECS: dict[str, _LengthCodec] = {
    "binary2": _LengthCodec(2, 0xFFFF, _read_binary, lambda n: n.to_bytes(2, "big")),
    "binary2_inclusive": _LengthCodec(
        2, 0xFFFF - 2, _read_binary2_inclusive, lambda n: (n + 2).to_bytes(2, "big")
    ),
    "ascii4": _LengthCodec(4, 9999, _read_ascii4, lambda n: b"%04d" % n),
    "hex4": _LengthCodec(4, 0xFFFF, _read_hex4, lambda n: b"%04X" % n),
    "bcd2": _LengthCodec(2, 9999, _read_bcd2, lambda n: bytes.fromhex(f"{n:04d}")),
    "binary4": _LengthCodec(4, 0xFFFF_FFFF, _read_binary, lambda n: n.to_bytes(4, "big")),
}


def _body_length(framing: Framing, codec: _LengthCodec, header: bytes, offset: int) -> int:
    """Decode and check one length header; every check that needs no body happens here."""
    length = codec.read(header)
    if length is None:
        raise BadLengthHeader(header, framing.length, offset)
    if length > framing.max_frame:
        raise OversizedFrame(length, framing.max_frame, offset)
    if 0 < length < framing.overhead:
        raise ShortTPDU(framing.overhead, length, offset)
    return length


def _cut(framing: Framing, body: bytes | memoryview) -> Frame:
    """Body (already checked: empty or at least ``overhead`` bytes) -> Frame, one copy per part."""
    if not body:
        return Frame(b"")
    tpdu_end = TPDU_LENGTH if framing.tpdu else 0
    header_end = tpdu_end + framing.header_length
    return Frame(
        message=bytes(body[header_end:]),
        tpdu=bytes(body[:tpdu_end]),
        header=bytes(body[tpdu_end:header_end]),
    )


# --- the API --------------------------------------------------------------------------------


def split_frame(framing: Framing, body: bytes, offset: int = 0) -> Frame:
    """Cut ``body`` (the bytes after the length header) into TPDU, fixed header and message.

    An empty body is a keep-alive. ``offset`` is reported in errors (where the frame starts).
    """
    if len(body) > framing.max_frame:
        raise OversizedFrame(len(body), framing.max_frame, offset)
    if 0 < len(body) < framing.overhead:
        raise ShortTPDU(framing.overhead, len(body), offset)
    return _cut(framing, body)


def read_frame(framing: Framing, data: bytes) -> Frame:
    """Parse exactly one frame, length header included (``"none"``: all of ``data`` is the body)."""
    if framing.length == "none":
        return split_frame(framing, data)
    codec = _LENGTH_CODECS[framing.length]
    if len(data) < codec.size:
        raise TruncatedFrame(codec.size, len(data), 0, in_header=True)
    length = _body_length(framing, codec, data[: codec.size], 0)
    received = len(data) - codec.size
    if received < length:
        raise TruncatedFrame(length, received, 0)
    if received > length:
        raise TrailingData(length, received, 0)
    return _cut(framing, memoryview(data)[codec.size :])


def encode_frame(framing: Framing, frame: Frame) -> bytes:
    """Frame -> bytes on the wire. A keep-alive (``Frame(b"")``) is a bare zero length."""
    if not frame.is_keepalive:
        want_tpdu = TPDU_LENGTH if framing.tpdu else 0
        if len(frame.tpdu) != want_tpdu:
            raise ValueError(f"frame TPDU has {len(frame.tpdu)} bytes; framing wants {want_tpdu}")
        if len(frame.header) != framing.header_length:
            raise ValueError(
                f"frame header has {len(frame.header)} bytes; framing wants {framing.header_length}"
            )
    body_length = len(frame.tpdu) + len(frame.header) + len(frame.message)
    if body_length > framing.max_frame:
        raise ValueError(f"frame body of {body_length} bytes exceeds max_frame {framing.max_frame}")
    if framing.length == "none":
        return b"".join((frame.tpdu, frame.header, frame.message))
    codec = _LENGTH_CODECS[framing.length]
    if body_length > codec.max_body:
        raise ValueError(
            f"frame body of {body_length} bytes does not fit a {framing.length} length header"
        )
    return b"".join((codec.write(body_length), frame.tpdu, frame.header, frame.message))


def swap_tpdu(tpdu: bytes) -> bytes:
    """The response TPDU: id(1) + destination(2) + source(2) with destination and source swapped."""
    if len(tpdu) != TPDU_LENGTH:
        raise ValueError(f"a TPDU has {TPDU_LENGTH} bytes, not {len(tpdu)}")
    return tpdu[:1] + tpdu[3:5] + tpdu[1:3]


class FrameDecoder:
    """Stream -> frames for one connection. See the module docstring for the rules."""

    # Compact the buffer once this many consumed bytes sit in front of a partial frame; below
    # it, keeping the dead prefix is cheaper than moving the partial frame down.
    _COMPACT_AT = 64 * 1024

    __slots__ = (
        "_buf", "_closed", "_codec", "_failed", "_framing", "_pending", "_pos", "_stream_offset",
    )  # fmt: skip

    def __init__(self, framing: Framing) -> None:
        if framing.length == "none":
            raise ValueError(
                'FrameDecoder needs a length header; with length="none" there are no frame '
                "boundaries in a stream: call read_frame() on each datagram or file"
            )
        self._framing = framing
        self._codec = _LENGTH_CODECS[framing.length]
        self._buf = bytearray()
        self._pos = 0  # start of the first unconsumed byte in _buf
        self._stream_offset = 0  # stream offset of _buf[0]
        self._pending: FramingError | None = None  # found, to be raised by the next call
        self._failed: FramingError | None = None  # raised: the decoder is done
        self._closed = False

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._buf) - self._pos

    @property
    def pending_error(self) -> FramingError | None:
        """An error the last ``feed`` found after the frames it returned; the next call raises
        it. A shell may act on it at once (close the connection) instead of waiting for more."""
        return self._pending

    def feed(self, data: bytes) -> list[Frame]:
        """Take the next bytes of the stream; return the frames they complete, in order.

        Frames that precede a bad spot are returned first; the error is then raised by the
        next ``feed``/``close`` (a response before garbage still completes its authorization).
        """
        self._check_usable()
        buf = self._buf
        buf += data
        frames = self._drain()
        if self._pending is not None and not frames:
            self._check_usable()  # raises it now: nothing to deliver first
        # Compact only after _drain's memoryview is released (a viewed bytearray cannot resize).
        pos = self._pos
        if pos == len(buf):
            buf.clear()
        elif pos >= self._COMPACT_AT or pos > len(buf) // 2:
            del buf[:pos]
        else:
            return frames
        self._stream_offset += pos
        self._pos = 0
        return frames

    def close(self) -> None:
        """End of stream. Raises TruncatedFrame if part of a frame is still buffered."""
        if self._closed:
            return
        self._check_usable()
        if self.buffered:
            self._pending = self._truncation()
            self._check_usable()  # raises it
        self._closed = True

    def _truncation(self) -> TruncatedFrame:
        offset = self._stream_offset + self._pos
        size, remaining = self._codec.size, self.buffered
        if remaining < size:
            return TruncatedFrame(size, remaining, offset, in_header=True)
        # This header passed _body_length in feed(), so it cannot raise here.
        header = bytes(self._buf[self._pos : self._pos + size])
        length = _body_length(self._framing, self._codec, header, offset)
        return TruncatedFrame(length, remaining - size, offset)

    def _check_usable(self) -> None:
        """Raise a found error once; after that, any use is a bug in the caller."""
        if self._pending is not None:
            self._failed, self._pending = self._pending, None
            raise self._failed
        if self._failed is not None:
            raise RuntimeError(f"frame decoder failed earlier and lost its place: {self._failed}")
        if self._closed:
            raise RuntimeError("frame decoder is closed")

    def _drain(self) -> list[Frame]:
        """Cut every complete frame from the buffer; an error is kept in ``_pending``."""
        framing, codec, size = self._framing, self._codec, self._codec.size
        frames: list[Frame] = []
        pos, end = self._pos, len(self._buf)
        with memoryview(self._buf) as view:
            while end - pos >= size:
                offset = self._stream_offset + pos
                try:
                    length = _body_length(framing, codec, bytes(view[pos : pos + size]), offset)
                except FramingError as exc:
                    self._pending = exc
                    break
                body_end = pos + size + length
                if body_end > end:
                    break  # wait for the rest of the body
                frames.append(_cut(framing, view[pos + size : body_end]))
                pos = body_end
        self._pos = pos
        return frames
