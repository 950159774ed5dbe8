"""Codec: ISO 8583 message bytes <-> :class:`Message`, plus a fast field scanner.

``Codec.decode`` and ``Codec.encode`` wrap pyiso8583 with the dialect's field spec. The bytes
are the ISO 8583 message alone (MTI onwards): length header, TPDU and fixed header belong to
framing.

``Codec.scan`` is the hot path of the proxy. It walks the bitmap with a table compiled once per
codec and records where each present field starts and ends; a field's value is decoded only
when asked for. It checks the structure as strictly as pyiso8583 does (bitmap, length prefixes,
maximum lengths, nothing missing, nothing left over) and raises the same :class:`CodecError`;
the content of a field (text encoding, BCD padding) is checked when that field is read.
``FieldView.replace`` re-encodes one field in place, for the STAN rewrite.

Card data: no error text carries field data. pyiso8583's messages name only sizes and
encodings; they are passed through :func:`redact_text` anyway, and its exceptions (which hold
the partly decoded message) are never chained.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import iso8583
from iso8583.decoder import DecodeError
from iso8583.encoder import EncodeError

from gateway.wire.dialect import Dialect
from gateway.wire.masking import DEFAULT_SENSITIVE_FIELDS, masked_fields, redact_text

NO_POSITION = -1  # CodecError.position of an encode error: there is no input byte to point at

# pyiso8583 keys -> the names our errors use
_FIELD_NAMES = {"t": "mti", "p": "bitmap", "h": "header"}
_NOT_DATA_ELEMENTS = frozenset({"h", "t", "p", "1"})  # header, MTI, bitmaps


class CodecError(ValueError):
    """A message that cannot be decoded or encoded. ``str()`` never contains field data."""

    def __init__(self, field: str, position: int, reason: str) -> None:
        where = f" at byte {position}" if position >= 0 else ""
        super().__init__(f"field {field}{where}: {reason}")
        self.field = field
        self.position = position
        self.reason = reason


@dataclass(frozen=True, slots=True, repr=False)
class Message:
    """A decoded message: MTI and data elements "2".."192" as text (binary as upper hex)."""

    mti: str
    fields: Mapping[str, str]
    raw: bytes = b""  # the bytes it was decoded from (forwarded unchanged)
    sensitive_fields: frozenset[str] = field(default=DEFAULT_SENSITIVE_FIELDS, compare=False)

    def get(self, field: str) -> str | None:
        return self.fields.get(field)

    def masked(self) -> dict[str, str]:
        """Fields safe to log: PAN first 6 / last 4, sensitive fields replaced by their size."""
        return masked_fields(self.fields, self.sensitive_fields)

    def __repr__(self) -> str:
        return f"Message(mti={self.mti!r}, fields={self.masked()!r})"

    __str__ = __repr__


# --- the compiled spec ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Layout:
    """How one field sits on the wire, precomputed from its pyiso8583 spec entry."""

    key: str
    data_enc: str  # "b" (binary/BCD, shown as hex) or a Python codec name
    len_enc: str  # "b", "bcd" or a Python codec name (variable fields only)
    prefix: int  # width of the length prefix in bytes; 0: fixed length
    max_len: int  # in bytes or nibbles, as the spec counts
    nibbles: bool
    fixed_bytes: int  # byte length of a fixed field
    left_pad: str
    right_pad: str

    @classmethod
    def of(cls, key: str, spec: Mapping[str, Any]) -> _Layout:
        nibbles = spec.get("len_count", "bytes") == "nibbles"
        max_len = int(spec["max_len"])
        return cls(
            key=key,
            data_enc=spec["data_enc"],
            len_enc=spec["len_enc"],
            prefix=int(spec["len_type"]),
            max_len=max_len,
            nibbles=nibbles,
            fixed_bytes=(max_len + 1) // 2 if nibbles else max_len,
            left_pad=spec.get("left_pad", "")[:1],
            right_pad=spec.get("right_pad", "")[:1],
        )

    @property
    def unit(self) -> str:
        return "nibbles" if self.nibbles else "bytes"


# How the scanner finds a field's length: fixed; a 1-byte BCD prefix; a text prefix that is
# usually plain ASCII digits; anything else (binary, 2-byte BCD, EBCDIC) via _read_length.
# _MISSING: a field the dialect does not define (an error once the scanner reaches it).
_FIXED, _BCD1, _TEXT_DIGITS, _OTHER, _MISSING = range(5)
_PLAN_CACHE_SIZE = 1024
_ASCII_DIGITS = frozenset({"ascii", "latin-1", "latin1", "iso-8859-1", "utf-8", "utf8"})
# key, length kind, prefix width, max length, counted in nibbles, byte length if fixed
_Step = tuple[str, int, int, int, bool, int]


def _step(layout: _Layout) -> _Step:
    if not layout.prefix:
        kind = _FIXED
    elif layout.len_enc == "bcd" and layout.prefix == 1:
        kind = _BCD1
    elif layout.len_enc in _ASCII_DIGITS:
        kind = _TEXT_DIGITS
    else:
        kind = _OTHER
    return (layout.key, kind, layout.prefix, layout.max_len, layout.nibbles, layout.fixed_bytes)


# BCD value of one byte, or -1 when a nibble is not a decimal digit.
_BCD = tuple(
    (b >> 4) * 10 + (b & 0xF) if (b >> 4) < 10 and (b & 0xF) < 10 else -1 for b in range(256)
)
# Field numbers (1..8) whose bit is set in a bitmap byte.
_BITS = tuple(tuple(bit for bit in range(1, 9) if byte >> (8 - bit) & 1) for byte in range(256))


def _error(layout_key: str, position: int, reason: str) -> CodecError:
    return CodecError(_FIELD_NAMES.get(layout_key, layout_key), position, reason)


def _read_length(layout: _Layout, message: bytes, pos: int) -> int:
    """The value of a length prefix, read exactly as pyiso8583 reads it."""
    prefix = message[pos : pos + layout.prefix]
    if len(prefix) != layout.prefix:
        raise _error(
            layout.key, pos, f"length prefix is {len(prefix)} bytes, expecting {layout.prefix}"
        )
    enc = layout.len_enc
    if enc == "b":
        return int.from_bytes(prefix, "big")
    if enc == "bcd":
        value = 0
        for byte in prefix:
            digits = _BCD[byte]
            if digits < 0:
                raise _error(layout.key, pos, "length prefix is not valid BCD")
            value = value * 100 + digits
        return value
    if prefix.isdigit() and enc in _ASCII_DIGITS:
        return int(prefix)
    try:  # the rare and the odd (EBCDIC, " 9"): the same steps as pyiso8583
        return int(prefix.decode(enc))
    except (UnicodeError, LookupError, ValueError):
        pass  # raised below, outside the handler: the decode error holds message bytes
    raise _error(layout.key, pos, "length prefix is not a number")


def _hex_bytes(raw: bytes, enc: str) -> bytes | None:
    """Bytes from hex text (a text bitmap), exactly as pyiso8583 reads it; None if it is not."""
    try:
        return bytes.fromhex(raw.decode(enc))
    except (UnicodeError, ValueError):
        return None


def _decode_value(layout: _Layout, data: bytes, length: int, pos: int) -> str:
    """A field's text from its data bytes, as pyiso8583 gives it."""
    if layout.data_enc == "b":
        text = data.hex().upper()
        if layout.nibbles and length & 1:
            if layout.left_pad and text[:1] == layout.left_pad:
                return text[1:]
            if layout.right_pad and text[-1:] == layout.right_pad:
                return text[:-1]
            raise _error(layout.key, pos, f"padding nibble does not match the {length} nibbles")
        return text
    try:
        return data.decode(layout.data_enc)
    except (UnicodeError, LookupError):
        pass  # raised below, outside the handler: the decode error holds the field's bytes
    raise _error(layout.key, pos, f"data is not valid {layout.data_enc}")


def _encode_value(layout: _Layout, value: str) -> bytes:
    """Length prefix + data of one field, as pyiso8583 encodes it."""
    key = layout.key
    if not isinstance(value, str):
        raise _error(key, NO_POSITION, f"value must be text, not {type(value).__name__}")
    if layout.data_enc == "b":
        text = value
        if layout.nibbles and len(value) & 1:
            text = (layout.left_pad + value) if layout.left_pad else (value + layout.right_pad)
        try:
            data = binascii.a2b_hex(text)
        except (binascii.Error, ValueError):
            data = None
        if data is None:
            raise _error(key, NO_POSITION, "value is not an even count of hex digits")
        length = len(value) if layout.nibbles else len(data)
    else:
        try:
            data = value.encode(layout.data_enc)
        except (UnicodeError, LookupError):
            data = None  # the encode error holds the value: raise outside its handler
        if data is None:
            raise _error(key, NO_POSITION, f"value is not valid {layout.data_enc}")
        length = len(data) * 2 if layout.nibbles else len(data)
    if layout.prefix == 0:
        if length != layout.max_len:
            raise _error(
                key, NO_POSITION, f"value is {length} {layout.unit}, expecting {layout.max_len}"
            )
        return data
    if length > layout.max_len:
        raise _error(
            key, NO_POSITION, f"value is {length} {layout.unit}, larger than {layout.max_len}"
        )
    return _encode_length(layout, length) + data


def _encode_length(layout: _Layout, length: int) -> bytes:
    width, enc = layout.prefix, layout.len_enc
    if enc == "b":
        if length >= 1 << (8 * width):
            raise _error(layout.key, NO_POSITION, "length does not fit its prefix")
        return length.to_bytes(width, "big")
    digits = f"{length:0{width * 2 if enc == 'bcd' else width}d}"
    if enc == "bcd":
        if len(digits) > width * 2:
            raise _error(layout.key, NO_POSITION, "length does not fit its prefix")
        return binascii.a2b_hex(digits)
    prefix = digits.encode(enc)
    if len(prefix) > width:
        raise _error(layout.key, NO_POSITION, "length does not fit its prefix")
    return prefix


# --- the scanner ------------------------------------------------------------------------------


class FieldView:
    """Where each field of one message is; values are decoded on first ``get`` and cached."""

    __slots__ = ("_cache", "_layouts", "_spans", "message", "mti")

    def __init__(
        self,
        mti: str,
        message: bytes,
        spans: dict[str, tuple[int, int, int, int]],
        layouts: Mapping[str, _Layout],
    ) -> None:
        self.mti = mti
        self.message = message
        # field -> (prefix start, data start, data end, length as the prefix/spec counts it)
        self._spans = spans
        self._layouts = layouts
        self._cache: dict[str, str] = {}

    @property
    def present(self) -> tuple[str, ...]:
        """The data elements this message carries, in wire order."""
        return tuple(self._spans)

    def has(self, field: str) -> bool:
        return field in self._spans

    def get(self, field: str) -> str | None:
        cached = self._cache.get(field)
        if cached is not None:
            return cached
        span = self._spans.get(field)
        if span is None:
            return None
        _, start, end, length = span
        layout = self._layouts[field]
        # The common cases inline (this runs for ~18 fields of every message the gateway
        # handles); padding and every error go through _decode_value.
        value: str | None
        if not length:
            value = ""
        elif layout.data_enc == "b":
            if layout.nibbles and length & 1:  # a pad nibble to strip
                value = _decode_value(layout, self.message[start:end], length, start)
            else:
                value = self.message[start:end].hex().upper()
        else:
            try:
                value = self.message[start:end].decode(layout.data_enc)
            except (UnicodeError, LookupError):
                value = None  # raised below, outside the handler: the error holds the bytes
            if value is None:
                value = _decode_value(layout, self.message[start:end], length, start)  # raises
        self._cache[field] = value
        return value

    def fields(self, names: Iterable[str]) -> dict[str, str]:
        """The named fields this message carries (absent ones are left out)."""
        spans, get = self._spans, self.get
        return {name: get(name) or "" for name in names if name in spans}

    def replace(self, field: str, value: str) -> bytes:
        """The message with one present field re-encoded (length prefix included)."""
        span = self._spans.get(field)
        if span is None:
            raise CodecError(field, NO_POSITION, "field is not present, so it cannot be replaced")
        start, _, end, _ = span
        encoded = _encode_value(self._layouts[field], value)
        return self.message[:start] + encoded + self.message[end:]

    def __repr__(self) -> str:
        return f"FieldView(mti={self.mti!r}, present={list(self._spans)!r})"


class LazyFields(Mapping[str, str]):
    """Some fields of a message decoded now (a malformed one raises CodecError here), others
    only when read: one that cannot be decoded then reads as the ``unreadable`` value given.

    The gateway reads a few fields of every response (the key, DE 38, DE 39) and others only
    on rarer paths (the echoed DE 7/12/13/37 when two requests share a key, the RRN of a late
    answer): decoding those for every response cost as much as the scan itself.
    """

    __slots__ = ("_later", "_unreadable", "_values", "_view")

    def __init__(
        self, view: FieldView, now: Iterable[str], later: frozenset[str], unreadable: str
    ) -> None:
        self._view = view
        self._values = view.fields(now)
        self._later = later
        self._unreadable = unreadable

    def __getitem__(self, name: str) -> str:
        value = self._values.get(name)
        if value is None:
            if name not in self._later or not self._view.has(name):
                raise KeyError(name)
            try:
                value = self._view.get(name) or ""
            except CodecError:
                value = self._unreadable
            self._values[name] = value
        return value

    def __iter__(self) -> Iterator[str]:
        return iter([name for name in self._view.present if name in self])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, name: object) -> bool:
        if name in self._values:
            return True
        return isinstance(name, str) and name in self._later and self._view.has(name)

    def __repr__(self) -> str:  # values may include a PAN: names only
        return f"LazyFields(decoded={sorted(self._values)!r}, later={sorted(self._later)!r})"


# --- the codec --------------------------------------------------------------------------------


class Codec:
    """Decode, encode and scan the messages of one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        spec: dict[str, Mapping[str, Any]] = {k: dict(v) for k, v in dialect.spec.items()}
        # Framing owns TPDU and headers: the message handed to the codec starts at the MTI.
        spec["h"] = {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": 0}
        self._spec = spec
        self._sensitive = frozenset(dialect.sensitive_fields)
        self._layouts = {
            key: _Layout.of(key, entry) for key, entry in spec.items() if key not in ("h", "t")
        }
        self._mti_binary = spec["t"]["data_enc"] == "b"
        self._mti_enc = spec["t"]["data_enc"]
        self._mti_len = 2 if self._mti_binary else 4
        # Bitmap: 8 raw bytes, or 16 characters of hex text in the bitmap's encoding.
        self._bitmap_enc = spec["p"]["data_enc"]
        self._bitmap_len = 8 if self._bitmap_enc == "b" else 16
        secondary_enc = spec["1"]["data_enc"]
        self._secondary = (secondary_enc, 8 if secondary_enc == "b" else 16)
        # The scanner's table: field number -> how to step over it.
        self._table: list[_Step] = [(str(n), _MISSING, 0, 0, False, 0) for n in range(193)]
        for key, layout in self._layouts.items():
            if key.isdigit():
                self._table[int(key)] = _step(layout)
        # bitmap offset (0, 64, 128) -> raw bitmap -> (steps, another bitmap follows)
        self._plans: dict[int, dict[bytes, tuple[tuple[_Step, ...], bool]]] = {
            0: {},
            64: {},
            128: {},
        }

    # pyiso8583 wrappers

    def decode(self, message: bytes) -> Message:
        """All fields of a message (MTI onwards). Raises CodecError."""
        # pyiso8583's errors hold the partly decoded message (a PAN among it): they are
        # turned into a CodecError outside the handler, so that not even __context__ keeps them.
        failure: CodecError | None = None
        try:
            decoded, _ = iso8583.decode(bytes(message), self._spec)
        except DecodeError as exc:
            failure = _error(exc.field, exc.pos, redact_text(exc.msg))
        except KeyError as exc:  # a bitmap bit for a field the dialect does not define
            failure = CodecError(str(exc.args[0]), NO_POSITION, "not defined by the dialect")
        if failure is not None:
            raise failure
        fields = {k: v for k, v in decoded.items() if k not in _NOT_DATA_ELEMENTS}
        return Message(decoded["t"], fields, bytes(message), self._sensitive)

    def encode(self, mti: str, fields: Mapping[str, str]) -> bytes:
        """The message bytes (MTI onwards) for these data elements. Raises CodecError."""
        doc: dict[str, str] = {"t": mti}
        for key, value in fields.items():
            if key not in self._layouts or key in _NOT_DATA_ELEMENTS or key == "65":
                raise CodecError(str(key), NO_POSITION, "not a data element of this dialect")
            doc[key] = value
        failure: CodecError | None = None
        try:
            encoded, _ = iso8583.encode(doc, self._spec)
        except EncodeError as exc:  # holds the fields: raise outside its handler
            failure = _error(exc.field, NO_POSITION, redact_text(exc.msg))
        if failure is not None:
            raise failure
        return bytes(encoded)

    # the fast path

    def scan(self, message: bytes) -> FieldView:
        """Positions of every field; values decoded on demand. Raises CodecError."""
        message = bytes(message)
        size = len(message)
        pos = self._mti_len
        if size < pos:
            raise _error("t", 0, f"message is {size} bytes, too short for the MTI")
        raw_mti = message[:pos]
        if self._mti_binary:
            mti = raw_mti.hex().upper()
        else:
            try:
                mti = raw_mti.decode(self._mti_enc)
            except UnicodeError:
                mti = ""
            if not mti:
                raise _error("t", 0, f"MTI is not valid {self._mti_enc}")

        steps, more, pos = self._steps("p", message, pos, 0)
        if more:
            secondary, more, pos = self._steps("1", message, pos, 64)
            steps += secondary
            if more:  # pyiso8583 reads bit 65 as "a third bitmap follows"
                tertiary, _, pos = self._steps("1", message, pos, 128)
                steps += tertiary

        spans: dict[str, tuple[int, int, int, int]] = {}
        key = "p"
        for key, kind, width, max_len, nibbles, fixed_bytes in steps:
            start = pos
            if kind == _FIXED:
                length, nbytes = max_len, fixed_bytes
            else:
                if kind == _BCD1 and pos < size:
                    length = _BCD[message[pos]]
                elif kind == _TEXT_DIGITS and (prefix := message[pos : pos + width]).isdigit():
                    length = int(prefix) if len(prefix) == width else -1
                elif kind == _MISSING:
                    raise CodecError(key, pos, "not defined by the dialect")
                else:
                    length = -1
                if length < 0:  # anything unusual, and every error, takes the careful path
                    length = _read_length(self._layouts[key], message, pos)
                if length > max_len:
                    raise _error(key, pos, f"length {length} exceeds the maximum {max_len}")
                pos += width
                nbytes = (length + 1) >> 1 if nibbles else length
            end = pos + nbytes
            if end > size:
                raise _error(key, pos, f"field needs {nbytes} bytes, {size - pos} left")
            spans[key] = (start, pos, end, length)
            pos = end
        if pos != size:
            raise _error(key, pos, f"{size - pos} bytes after the last field")
        return FieldView(mti, message, spans, self._layouts)

    def _steps(
        self, key: str, message: bytes, pos: int, offset: int
    ) -> tuple[tuple[_Step, ...], bool, int]:
        """The steps over the fields one bitmap announces, whether another bitmap follows, and
        where this one ends. Messages of one kind share their bitmap, so plans are cached."""
        width = self._bitmap_len if key == "p" else self._secondary[1]
        raw = message[pos : pos + width]
        cache = self._plans[offset]
        plan = cache.get(raw)
        if plan is None:
            numbers, _ = self._bitmap(key, message, pos, offset)
            more = offset < 128 and bool(numbers) and numbers[0] == offset + 1
            plan = (tuple(self._table[n] for n in (numbers[1:] if more else numbers)), more)
            if len(cache) >= _PLAN_CACHE_SIZE:
                cache.clear()  # a flood of odd bitmaps must not grow memory
            cache[raw] = plan
        return plan[0], plan[1], pos + width

    def _bitmap(self, key: str, message: bytes, pos: int, offset: int) -> tuple[list[int], int]:
        """Field numbers (offset + 1..64) set in the bitmap at ``pos``, and where it ends."""
        enc, width = (self._bitmap_enc, self._bitmap_len) if key == "p" else self._secondary
        raw = message[pos : pos + width]
        if len(raw) != width:
            raise _error(key, pos, f"bitmap is {len(raw)} bytes, expecting {width}")
        bitmap = raw if enc == "b" else _hex_bytes(raw, enc)
        if bitmap is None:
            raise _error(key, pos, "bitmap is not hex text")
        numbers: list[int] = []
        for index, byte in enumerate(bitmap):
            if byte:
                base = offset + index * 8
                numbers += [base + bit for bit in _BITS[byte]]
        return numbers, pos + width
