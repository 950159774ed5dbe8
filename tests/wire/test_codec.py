"""Codec: decode/encode round trips, the fast scanner against pyiso8583, field replacement."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.wire.codec import Codec, CodecError, FieldView, LazyFields
from gateway.wire.dialect import get_dialect

DIALECTS = ("iso87-binary", "iso87-ascii", "iso87-ebcdic", "cup-pos", "visa-base1")
CODECS = {name: Codec(get_dialect(name)) for name in DIALECTS}
HEX = "0123456789ABCDEF"
UNREADABLE = "<unreadable>"
LONGEST = 40  # generated variable fields: up to this, or exactly their maximum

settings.register_profile("codec", deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- generating valid messages ----------------------------------------------------------------


def _alphabet(encoding: str) -> str:
    """Characters that are one byte each way in this encoding (so lengths count alike)."""
    chars = []
    for code in range(256):
        ch = chr(code)
        try:
            raw = ch.encode(encoding)
        except UnicodeError:
            continue
        if len(raw) == 1 and raw.decode(encoding) == ch:
            chars.append(ch)
    return "".join(chars)


def _length(spec: Mapping[str, Any]) -> st.SearchStrategy[int]:
    top = spec["max_len"]
    if spec["len_type"] == 0:
        return st.just(top)
    return st.one_of(st.integers(0, min(top, LONGEST)), st.just(top))


def field_value(spec: Mapping[str, Any]) -> st.SearchStrategy[str]:
    """A value that the field spec can carry, in the form decode gives it back."""
    nibbles = spec.get("len_count", "bytes") == "nibbles"
    padded = "left_pad" in spec or "right_pad" in spec
    if spec["data_enc"] == "b":

        def hex_text(n: int) -> st.SearchStrategy[str]:
            # nibbles: an odd count needs a pad nibble; bytes: two hex digits each
            size = (n if padded or n % 2 == 0 else n - 1) if nibbles else 2 * n
            return st.text(HEX, min_size=size, max_size=size)

        return _length(spec).flatmap(hex_text)
    alphabet = _alphabet(spec["data_enc"])

    def text(n: int) -> st.SearchStrategy[str]:
        size = n // 2 if nibbles else n
        return st.text(alphabet, min_size=size, max_size=size)

    return _length(spec).flatmap(text)


def data_elements(codec: Codec) -> list[str]:
    return [k for k in codec.dialect.spec if k.isdigit() and k not in ("1", "65")]


@st.composite
def messages(draw: st.DrawFn, codec: Codec) -> tuple[str, dict[str, str]]:
    """An MTI and a set of valid fields for the codec's dialect."""
    spec = codec.dialect.spec
    names = draw(st.sets(st.sampled_from(data_elements(codec)), max_size=14))
    fields = {name: draw(field_value(spec[name])) for name in sorted(names, key=int)}
    mti = draw(st.sampled_from(["0100", "0110", "0200", "0210", "0400", "0410", "0800"]))
    return mti, fields


def codec_and_message() -> st.SearchStrategy[tuple[Codec, str, dict[str, str]]]:
    return st.sampled_from(DIALECTS).flatmap(
        lambda name: messages(CODECS[name]).map(lambda m: (CODECS[name], *m))
    )


# --- properties -------------------------------------------------------------------------------


@settings(settings.get_profile("codec"), max_examples=150)
@given(codec_and_message())
def test_encode_decode_encode_is_identity(case: tuple[Codec, str, dict[str, str]]) -> None:
    codec, mti, fields = case
    message = codec.encode(mti, fields)
    decoded = codec.decode(message)
    assert decoded.mti == mti
    assert dict(decoded.fields) == fields
    assert decoded.raw == message
    assert codec.encode(decoded.mti, decoded.fields) == message


@settings(settings.get_profile("codec"), max_examples=150)
@given(codec_and_message())
def test_scan_sees_what_decode_sees(case: tuple[Codec, str, dict[str, str]]) -> None:
    codec, mti, fields = case
    message = codec.encode(mti, fields)
    view = codec.scan(message)
    assert view.mti == mti
    assert view.present == tuple(fields)
    for name in data_elements(codec):
        assert view.get(name) == fields.get(name)
        assert view.has(name) == (name in fields)
    assert view.fields(["11", "41", "2", "39"]) == {
        k: fields[k] for k in ("11", "41", "2", "39") if k in fields
    }


def _outcome(call: Any) -> Any:
    try:
        return call()
    except CodecError as exc:
        return exc


def assert_same_verdict(codec: Codec, data: bytes) -> None:
    """decode and scan agree on any input, and fail only with CodecError."""
    decoded = _outcome(lambda: codec.decode(data))
    view = _outcome(lambda: codec.scan(data))
    if isinstance(view, CodecError):
        # the scanner checks structure only; a structure error is a decode error too
        assert isinstance(decoded, CodecError), f"scan rejected what decode took: {view}"
        return
    assert isinstance(view, FieldView)
    values = {name: _outcome(lambda name=name: view.get(name)) for name in view.present}
    if isinstance(decoded, CodecError):
        # decode failed on content the scanner only reads on demand: reading it must fail too
        assert any(isinstance(v, CodecError) for v in values.values()), f"decode: {decoded}"
    else:
        assert view.mti == decoded.mti
        assert values == dict(decoded.fields)


@settings(settings.get_profile("codec"), max_examples=300)
@given(st.sampled_from(DIALECTS), st.binary(max_size=200))
def test_random_bytes_raise_only_codec_errors(name: str, data: bytes) -> None:
    assert_same_verdict(CODECS[name], data)


@settings(settings.get_profile("codec"), max_examples=250)
@given(codec_and_message(), st.data())
def test_damaged_messages_raise_only_codec_errors(
    case: tuple[Codec, str, dict[str, str]], data: st.DataObject
) -> None:
    """Truncated, extended and bit-flipped real messages: the garbage a line actually sends."""
    codec, mti, fields = case
    message = bytearray(codec.encode(mti, fields))
    damage = data.draw(st.sampled_from(["truncate", "extend", "flip", "overwrite"]))
    if damage == "truncate":
        del message[data.draw(st.integers(0, len(message) - 1)) :]
    elif damage == "extend":
        message += data.draw(st.binary(min_size=1, max_size=5))
    else:
        at = data.draw(st.integers(0, len(message) - 1))
        if damage == "flip":
            message[at] ^= 1 << data.draw(st.integers(0, 7))
        else:
            message[at] = data.draw(st.integers(0, 255))
    assert_same_verdict(codec, bytes(message))


@settings(settings.get_profile("codec"), max_examples=100)
@given(codec_and_message(), st.data())
def test_replace_is_encode_with_the_new_value(
    case: tuple[Codec, str, dict[str, str]], data: st.DataObject
) -> None:
    codec, mti, fields = case
    assume(fields)
    name = data.draw(st.sampled_from(sorted(fields)))
    value = data.draw(field_value(codec.dialect.spec[name]))
    replaced = codec.scan(codec.encode(mti, fields)).replace(name, value)
    assert replaced == codec.encode(mti, {**fields, name: value})


# --- examples ---------------------------------------------------------------------------------

SALE = {
    "2": "6224242900000113",
    "3": "000000",
    "4": "000000001000",
    "11": "000403",
    "22": "051",
    "41": "10000019",
    "42": "850100082410002",
    "49": "156",
}


def test_stan_rewrite_touches_only_de_11() -> None:
    codec = CODECS["cup-pos"]
    message = codec.encode("0200", SALE)
    rewritten = codec.scan(message).replace("11", "123456")
    assert len(rewritten) == len(message)
    assert dict(codec.decode(rewritten).fields) == {**SALE, "11": "123456"}


def test_replace_changes_the_length_prefix_of_a_variable_field() -> None:
    codec = CODECS["iso87-binary"]
    message = codec.encode("0200", SALE)
    shorter = codec.scan(message).replace("2", "4111111111111")
    assert len(shorter) == len(message) - 3
    assert codec.decode(shorter).get("2") == "4111111111111"
    assert codec.decode(shorter).get("41") == "10000019"


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("11", "1234567", "expecting 6"),  # fixed n6
        ("11", "12345", "expecting 6"),
        ("2", "1" * 20, "larger than 19"),
        ("41", "TÉRMINAL", "not valid ascii"),
        ("39", "00", "not present"),
    ],
)
def test_replace_rejects_what_does_not_fit(field: str, value: str, reason: str) -> None:
    view = CODECS["iso87-binary"].scan(CODECS["iso87-binary"].encode("0200", SALE))
    with pytest.raises(CodecError) as caught:
        view.replace(field, value)
    assert caught.value.field == field
    assert reason in str(caught.value)


def test_replace_rejects_non_hex_in_a_bcd_field() -> None:
    codec = CODECS["cup-pos"]
    view = codec.scan(codec.encode("0200", SALE))
    with pytest.raises(CodecError, match="hex digits") as caught:
        view.replace("11", "00040X")
    assert caught.value.field == "11"


def test_get_is_cached_and_absent_fields_are_none() -> None:
    codec = CODECS["cup-pos"]
    view = codec.scan(codec.encode("0200", SALE))
    first = view.get("42")
    assert first == "850100082410002"
    assert view.get("42") is first
    assert view.get("39") is None
    assert not view.has("39")
    assert view.fields(["39", "41", "11"]) == {"41": "10000019", "11": "000403"}


@pytest.mark.parametrize("name", DIALECTS)
def test_encode_rejects_unknown_and_structural_keys(name: str) -> None:
    codec = CODECS[name]
    for key in ("t", "p", "1", "65", "129", "pan", "0"):
        with pytest.raises(CodecError) as caught:
            codec.encode("0200", {key: "00", "11": SALE["11"]})
        assert caught.value.field == key


def test_encode_errors_name_the_field() -> None:
    with pytest.raises(CodecError) as caught:
        CODECS["iso87-binary"].encode("0200", {**SALE, "4": "1000"})
    assert caught.value.field == "4"
    assert "expecting 12" in caught.value.reason


@pytest.mark.parametrize("name", DIALECTS)
def test_truncation_anywhere_is_a_codec_error(name: str) -> None:
    codec = CODECS[name]
    sale = {**SALE, "22": "0510"} if name == "visa-base1" else SALE  # Visa's DE 22 is n4
    message = codec.encode("0200", {**sale, "55": "9F2701809F3602" + "0157" * 10})
    for cut in range(len(message)):
        for call in (codec.decode, codec.scan):
            with pytest.raises(CodecError):
                call(message[:cut])


def test_extra_bytes_after_the_last_field() -> None:
    codec = CODECS["iso87-binary"]
    message = codec.encode("0200", SALE)
    for call in (codec.decode, codec.scan):
        with pytest.raises(CodecError, match=r"after the last field|Extra data") as caught:
            call(message + b"00")
        assert caught.value.field == "49"


def test_a_field_the_dialect_does_not_define() -> None:
    """Bit 65 announces a third bitmap; fields 129+ are in no dialect."""
    codec = CODECS["iso87-binary"]
    message = bytearray(codec.encode("0200", {**SALE, "70": "301"}))
    secondary = 4 + 8  # MTI, primary bitmap
    message[secondary] |= 0x80  # bit 65
    message[secondary + 8 : secondary + 8] = b"\x80" + b"\x00" * 7  # third bitmap: field 129
    for call in (codec.decode, codec.scan):
        with pytest.raises(CodecError, match="not defined") as caught:
            call(bytes(message))
        assert caught.value.field == "129"


def test_scan_checks_content_only_when_a_field_is_read() -> None:
    """An invalid byte in DE 43 (text): decode fails, scan passes, reading DE 43 fails."""
    codec = CODECS["iso87-binary"]
    fields = {**SALE, "43": "A" * 40}
    message = codec.encode("0200", fields).replace(b"A" * 40, b"A" * 39 + b"\xff")
    with pytest.raises(CodecError) as caught:
        codec.decode(message)
    assert caught.value.field == "43"
    view = codec.scan(message)
    assert view.get("41") == "10000019"
    with pytest.raises(CodecError) as caught:
        view.get("43")
    assert caught.value.field == "43"


def test_lazy_fields_decode_some_now_and_the_rest_when_read() -> None:
    """What the gateway hands its core of a response: the key now (a malformed one is a
    CodecError here, where the shell handles it), the rarer fields when read, and an
    undecodable one of those reads as UNREADABLE instead of losing the whole answer."""
    codec = CODECS["iso87-binary"]
    fields = {**SALE, "7": "1126103548", "37": "A" * 12}
    message = codec.encode("0210", fields).replace(b"A" * 12, b"A" * 11 + b"\xff")
    view = codec.scan(message)
    lazy = LazyFields(view, ("11", "41"), frozenset({"7", "37"}), UNREADABLE)
    assert lazy["41"] == "10000019" and lazy.get("7") == "1126103548"
    assert lazy.get("37") == UNREADABLE and "37" in lazy  # present, equal to nothing
    assert lazy.get("4") is None  # present, but neither now nor later: not handed over
    assert list(lazy) == ["7", "11", "37", "41"] and len(lazy) == 4
    assert SALE["2"] not in repr(lazy)
    bad_key = codec.encode("0210", fields).replace(b"10000019", b"1000001\xff")
    with pytest.raises(CodecError) as caught:
        LazyFields(codec.scan(bad_key), ("11", "41"), frozenset(), UNREADABLE)
    assert caught.value.field == "41"


def test_binary_fields_are_upper_hex() -> None:
    codec = CODECS["iso87-binary"]
    message = codec.encode("0200", {**SALE, "52": "d1eef419d0ae2609"})
    assert codec.decode(message).get("52") == "D1EEF419D0AE2609"
    assert codec.scan(message).get("52") == "D1EEF419D0AE2609"


def test_cup_odd_numerics_are_padded_as_the_spec_says() -> None:
    codec = CODECS["cup-pos"]
    message = codec.encode("0200", {**SALE, "2": "6217973910000725090", "23": "001"})
    assert b"\x19\x62\x17\x97\x39\x10\x00\x07\x25\x09\x00" in message  # PAN: trailing 0
    assert b"\x05\x10" in message  # DE 22 051, left-aligned
    assert b"\x00\x01" in message  # DE 23 001, right-aligned
    view = codec.scan(message)
    assert (view.get("2"), view.get("22"), view.get("23")) == ("6217973910000725090", "051", "001")


@pytest.mark.parametrize(
    ("field", "value", "good", "bad"),
    [
        ("23", "987", b"\x09\x87", b"\x19\x87"),  # left pad must be 0
        ("22", "051", b"\x05\x10", b"\x05\x1f"),  # right pad must be 0
    ],
)
def test_a_wrong_pad_nibble_is_an_error(field: str, value: str, good: bytes, bad: bytes) -> None:
    codec = CODECS["cup-pos"]
    message = codec.encode("0200", {**SALE, "23": "987", field: value})
    assert message.count(good) == 1
    broken = message.replace(good, bad)
    with pytest.raises(CodecError) as caught:
        codec.decode(broken)
    assert caught.value.field == field
    view = codec.scan(broken)
    with pytest.raises(CodecError) as caught:
        view.get(field)
    assert caught.value.field == field
