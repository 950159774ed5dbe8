"""Card data never shows: masking helpers, Message repr/str/masked, codec error text."""

from __future__ import annotations

import traceback

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.wire.codec import Codec, CodecError, Message
from gateway.wire.dialect import get_dialect
from gateway.wire.masking import luhn_ok, mask_pan, masked_fields, redact_text

PAN = "6224242900000113"  # Luhn-valid, from the CUP vectors
TRACK2 = "6224242900000113D28062013949031013"
PIN_BLOCK = "D1EEF419D0AE2609"
CVV_TRACK = "6224242900000113=28062013949031013"


@pytest.mark.parametrize(
    ("pan", "shown"),
    [
        ("6224242900000113", "622424******0113"),
        ("6217973910000725090", "621797*********5090"),
        ("4111111111111", "411111***1111"),
        ("411111111111", "************"),  # shorter than any PAN: all hidden
        ("1234", "****"),
        ("", ""),
    ],
)
def test_mask_pan(pan: str, shown: str) -> None:
    assert mask_pan(pan) == shown


def test_luhn() -> None:
    assert luhn_ok(PAN)
    assert luhn_ok("4111111111111111")
    assert not luhn_ok("4111111111111112")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"pan={PAN} ok", "pan=622424******0113 ok"),
        (f"track {CVV_TRACK}.", "track 622424******0113=<track data removed>."),
        (f"de35:{TRACK2}", "de35:622424******0113=<track data removed>"),
        ("stan 000403 amount 000000001000", "stan 000403 amount 000000001000"),
        ("4111111111111112 fails Luhn", "4111111111111112 fails Luhn"),
        # a longer run of digits is not a PAN (DE 90, original data elements)
        (
            "020000331609080645190000000020000000000000",
            "020000331609080645190000000020000000000000",
        ),
    ],
)
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


@given(st.text(alphabet="0123456789 =D", max_size=60), st.sampled_from([PAN, CVV_TRACK, TRACK2]))
def test_redact_text_never_lets_a_pan_through(noise: str, secret: str) -> None:
    cut = len(noise) // 2
    text = noise[:cut] + " " + secret + " " + noise[cut:]
    assert PAN not in redact_text(text)


def test_masked_fields() -> None:
    fields = {"2": PAN, "11": "000403", "35": TRACK2, "52": PIN_BLOCK, "48": f"x{PAN}x"}
    shown = masked_fields(fields, {"35", "52"})
    assert shown == {
        "2": "622424******0113",
        "11": "000403",
        "35": "<34 chars removed>",
        "52": "<16 chars removed>",
        "48": "x622424******0113x",  # a PAN where none belongs is still masked
    }


def test_track_and_pin_are_removed_even_if_the_dialect_forgets_them() -> None:
    shown = masked_fields({"35": TRACK2, "52": PIN_BLOCK}, sensitive=())
    assert shown == {"35": "<34 chars removed>", "52": "<16 chars removed>"}


# --- Message ----------------------------------------------------------------------------------

SECRETS = (PAN, TRACK2, PIN_BLOCK, "D28062013949031013")


def cup_sale() -> tuple[Codec, bytes]:
    codec = Codec(get_dialect("cup-pos"))
    fields = {
        "2": PAN,
        "3": "000000",
        "4": "000000000001",
        "11": "000403",
        "22": "071",
        "35": TRACK2,
        "41": "10000019",
        "42": "850100082410002",
        "49": "156",
        "52": PIN_BLOCK,
    }
    return codec, codec.encode("0200", fields)


def test_message_text_never_shows_card_data() -> None:
    codec, raw = cup_sale()
    message = codec.decode(raw)
    assert message.get("2") == PAN  # the data is there for the gateway to use
    for text in (repr(message), str(message), str(message.masked()), f"{message}"):
        for secret in SECRETS:
            assert secret not in text
    assert "622424******0113" in repr(message)
    assert message.masked()["35"] == "<34 chars removed>"


def test_a_message_made_by_hand_masks_by_default() -> None:
    message = Message("0200", {"2": PAN, "35": TRACK2, "52": PIN_BLOCK})
    for secret in SECRETS:
        assert secret not in repr(message)


def test_scan_repr_shows_field_numbers_only() -> None:
    codec, raw = cup_sale()
    text = repr(codec.scan(raw))
    assert "'2'" in text
    for secret in SECRETS:
        assert secret not in text


# --- errors -----------------------------------------------------------------------------------


def all_text(error: BaseException) -> str:
    """Everything a log line or traceback could show of an exception."""
    return "".join([str(error), repr(error), *traceback.format_exception(error), str(vars(error))])


def test_a_broken_pan_field_does_not_leak_the_pan() -> None:
    """iso87-ascii: DE 2 says 19 digits, 16 follow and the message ends."""
    codec = Codec(get_dialect("iso87-ascii"))
    raw = codec.encode("0200", {"2": PAN, "11": "000403"}).replace(b"16" + PAN.encode(), b"")
    raw = raw[: raw.index(b"000403")] + b"19" + PAN.encode()  # DE 11 gone, DE 2 cut short
    for call in (codec.decode, codec.scan):
        with pytest.raises(CodecError) as caught:
            call(raw)
        assert caught.value.field == "2"
        assert PAN not in all_text(caught.value)
        assert caught.value.__context__ is None  # pyiso8583's error (holding the PAN) is gone
        assert caught.value.__cause__ is None


def test_undecodable_pan_bytes_do_not_leak() -> None:
    """A PAN field whose bytes are not ASCII: the decode error holds them; ours must not."""
    codec = Codec(get_dialect("iso87-binary"))
    raw = codec.encode("0200", {"2": PAN, "11": "000403"}).replace(
        PAN.encode(), b"\xff" + PAN[1:].encode()
    )
    with pytest.raises(CodecError) as caught:
        codec.decode(raw)
    view = codec.scan(raw)
    with pytest.raises(CodecError) as caught_get:
        view.get("2")
    for error in (caught.value, caught_get.value):
        assert error.field == "2"
        assert PAN[1:] not in all_text(error)
        assert error.__context__ is None


def test_encode_errors_do_not_leak_the_pan() -> None:
    codec = Codec(get_dialect("cup-pos"))
    for bad in (PAN + "0000", PAN[:-1] + "X"):
        with pytest.raises(CodecError) as caught:
            codec.encode("0200", {"2": bad, "11": "000403"})
        assert caught.value.field == "2"
        assert PAN[:12] not in all_text(caught.value)
        assert caught.value.__context__ is None
    view = codec.scan(codec.encode("0200", {"2": PAN, "11": "000403"}))
    with pytest.raises(CodecError) as caught:
        view.replace("2", PAN + "0000")
    assert PAN not in all_text(caught.value)
