"""Make a message safe to keep in a capture file that people share: PAN tokens, no track or PIN.

What the gateway records (``[capture]``) passes through here first:

- DE 2 and DE 34 (PAN, extended PAN) are replaced by a **token**: the same length, the same
  first six digits (the BIN: routing and scheme rules still see the right card range) and last
  four (what receipts and support staff see), the middle digits derived from the PAN with a
  keyed hash, and a Luhn check that passes (systems that validate the PAN still accept it).
  The same PAN gets the same token within one file, so the requests, responses and reversals
  of one card still line up; two PANs never share a token in a file. The key is random per
  file and never written anywhere, so a token cannot be turned back into its PAN, nor linked
  to the same card in another file.
- DE 35 (track 2) keeps its shape: the token for the PAN, the separator, expiry and service
  code; the discretionary data (PVV, CVV, counters) becomes zeros.
- DE 52 (PIN block), DE 36 and DE 45 (track 3, track 1), DE 55 (ICC data, which can hold the
  PAN, track 2 equivalent data and cryptograms) and any other field the dialect lists as
  sensitive become zeros of the same length: the message keeps its shape (a PIN was entered,
  the card was read by chip), and nothing of the card is left in it.
- In every other text field, a run of 13-19 digits that passes the Luhn check is replaced by
  its token (a PAN where a PAN should not be).

Each changed field is encoded again with the dialect's codec, in place: lengths and the bitmap
stay right.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping

from gateway.wire.codec import Codec, CodecError
from gateway.wire.dialect import Dialect
from gateway.wire.framing import Frame
from gateway.wire.masking import luhn_ok

PAN_FIELDS = ("2", "34")
TRACK2_FIELD = "35"
# Zeros of the same length: PIN block, track 3, track 1, ICC data (zero bytes are the padding
# EMV allows between TLV objects, so DE 55 still parses, as nothing).
ZEROED_FIELDS = frozenset({"36", "45", "52", "55"})
_KEEP_HEAD = 6
_KEEP_TAIL = 4
_SHORTEST_PAN = 12  # ISO/IEC 7812 card numbers have 12 to 19 digits
_CLASHES_BEFORE_TAIL = 50
_TRACK2 = re.compile(r"^(\d{1,19})([=Dd])(\d{0,4})(\d{0,3})(.*)$")
_PAN_RUN = re.compile(r"(?<!\d)\d{13,19}(?!\d)")
_DIGIT = re.compile(r"[0-9]")


class PanTokenizer:
    """PAN -> token, consistent within one instance (one capture file)."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)
        self._tokens: dict[str, str] = {}
        self._taken: set[str] = set()

    def token(self, pan: str) -> str:
        known = self._tokens.get(pan)
        if known is not None:
            return known
        if not pan.isdigit() or len(pan) < _SHORTEST_PAN:
            # Not a card number: every character replaced by a digit of the keyed hash.
            token = self._digits(pan, 0)[: len(pan)]
        else:
            attempt = 0
            token = self._derive(pan, attempt)
            while token == pan or token in self._taken:
                attempt += 1  # a clash with another card's token (or the PAN itself): next
                token = self._derive(pan, attempt)
            self._taken.add(token)
        self._tokens[pan] = token
        return token

    def _digits(self, pan: str, attempt: int) -> str:
        digest = hmac.new(self._key, f"{attempt}:{pan}".encode(), hashlib.sha256).digest()
        return "".join(str(byte % 10) for byte in digest * 2)

    def _derive(self, pan: str, attempt: int) -> str:
        """First 6 and last 4 kept, the middle from the hash, one digit fixing the Luhn check.
        (Short PANs have few middles: after many clashes the last four are replaced too.)"""
        head = pan[:_KEEP_HEAD]
        tail = pan[-_KEEP_TAIL:] if attempt < _CLASHES_BEFORE_TAIL else ""
        middle = self._digits(pan, attempt)[: len(pan) - len(head) - len(tail) - 1]
        for digit in "0123456789":
            candidate = head + middle + digit + tail if tail else head + middle + digit
            if luhn_ok(candidate):
                return candidate
        raise AssertionError("unreachable: one digit always completes a Luhn check")

    def __repr__(self) -> str:
        return f"PanTokenizer({len(self._tokens)} PANs)"


class MessageScrubber:
    """Frame -> the same frame with card data replaced; None if the message does not decode
    (it cannot be made safe, so it must not be written).

    Every replacement keeps the field's length, so the message keeps its shape (bitmap,
    lengths): the fields are found with ``Codec.scan`` and re-encoded in place with
    ``FieldView.replace``, which is much cheaper than decoding and encoding the whole message
    (the recorder does this for every frame, on a thread beside the gateway).
    """

    def __init__(self, dialect: Dialect, tokenizer: PanTokenizer) -> None:
        self.codec = Codec(dialect)
        self.tokenizer = tokenizer
        self._zeroed = (frozenset(dialect.sensitive_fields) | ZEROED_FIELDS) - {TRACK2_FIELD}
        # Text fields that can hold a PAN: variable length, or fixed and long enough.
        self._text_fields = frozenset(
            name
            for name, entry in dialect.spec.items()
            if name.isdigit()
            and name not in PAN_FIELDS
            and entry.get("data_enc") != "b"
            and (int(entry.get("len_type", 0)) > 0 or int(entry.get("max_len", 0)) >= 13)
        )
        self._watched = self._zeroed | self._text_fields | {TRACK2_FIELD, *PAN_FIELDS}

    def scrub(self, frame: Frame) -> Frame | None:
        if frame.is_keepalive:
            return frame
        try:
            view = self.codec.scan(frame.message)
            present = [name for name in view.present if name in self._watched]
            changes = self.scrub_fields(view.fields(present))
            message = frame.message
            for name, value in changes.items():
                message = view.replace(name, value)
                view = self.codec.scan(message)  # the next replacement starts from this one
        except CodecError:
            return None
        return Frame(message, frame.tpdu, frame.header)

    def scrub_fields(self, fields: Mapping[str, str]) -> dict[str, str]:
        """The values to put in place of card data (only the fields that change)."""
        token = self.tokenizer.token
        out: dict[str, str] = {}
        for name, value in fields.items():
            if name in PAN_FIELDS:
                new = token(value)
            elif name == TRACK2_FIELD:
                new = self._track2(value)
            elif name in self._zeroed:
                new = "0" * len(value)  # binary fields are hex text: zero bytes
            elif name in self._text_fields and len(value) >= _SHORTEST_PAN:
                new = _PAN_RUN.sub(
                    lambda m: token(m.group(0)) if luhn_ok(m.group(0)) else m.group(0), value
                )
            else:
                continue
            if new != value:
                out[name] = new
        return out

    def _track2(self, value: str) -> str:
        """Token PAN, separator, expiry and service code kept; discretionary data zeroed."""
        match = _TRACK2.match(value)
        if match is None:
            return _zeroed(value)
        pan, separator, expiry, service, rest = match.groups()
        return self.tokenizer.token(pan) + separator + expiry + service + _zeroed(rest)


def _zeroed(text: str) -> str:
    """Digits to zeros; pad nibbles (F) and other characters kept, so lengths do not change."""
    return _DIGIT.sub("0", text)
