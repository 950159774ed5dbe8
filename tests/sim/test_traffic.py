"""Generated terminal traffic: test cards, request fields per dialect, terminal reversals, and
the fast encoder against the codec."""

from __future__ import annotations

import random

import pytest

from gateway.sim.cards import SimCard, luhn_check_digit, make_card
from gateway.sim.fast_encode import MessageEncoder
from gateway.sim.traffic import RequestBuilder, TrafficMix, default_envelope, dialect_style
from gateway.wire.codec import Codec, CodecError
from gateway.wire.dialect import get_dialect
from gateway.wire.masking import luhn_ok

DIALECTS = ["iso87-binary", "iso87-ascii", "cup-pos"]
NOW = 1_764_066_600.0  # a fixed moment, so generated fields repeat


def test_luhn_check_digit_matches_known_numbers() -> None:
    assert luhn_check_digit("7992739871") == "3"  # the textbook example 79927398713
    assert luhn_check_digit("622424290000011") == "3"  # DE 2 of a public CUP vector


def test_test_cards_pass_luhn_and_hide_their_pan() -> None:
    rng = random.Random(5)
    cards = [make_card(rng) for _ in range(200)]
    assert all(luhn_ok(card.pan) and len(card.pan) == 16 for card in cards)
    card = SimCard("4761739001010010", "2712")
    assert "4761739001010010" not in repr(card)
    assert card.track2 == "4761739001010010=27122010000000000"


@pytest.mark.parametrize("name", DIALECTS)
def test_requests_encode_and_decode_back_to_the_same_fields(name: str) -> None:
    dialect = get_dialect(name)
    codec = Codec(dialect)
    builder = RequestBuilder(dialect, "TERM0001", "MERCHANT0000001", random.Random(1))
    seen: set[str] = set()
    for number in range(1, 301):
        mti, fields = builder.build(f"{number:06d}", NOW)
        decoded = codec.decode(codec.encode(mti, fields))
        assert decoded.mti == mti
        assert dict(decoded.fields) == fields
        seen.update(fields)
        assert fields["11"] == f"{number:06d}"
        assert fields["41"] == "TERM0001" and fields["42"] == "MERCHANT0000001"
        if "2" in fields:
            assert luhn_ok(fields["2"])
    # Every entry mode shows up: PIN block, ICC data and track 2 on some requests.
    assert {"2", "14", "22", "35", "52", "55"} <= seen


def test_iso87_and_cup_requests_carry_their_style_of_fields() -> None:
    iso = RequestBuilder(get_dialect("iso87-binary"), "T1", "M1", random.Random(2))
    cup = RequestBuilder(get_dialect("cup-pos"), "T1", "M1", random.Random(2))
    iso_fields = [iso.build(f"{n:06d}", NOW)[1] for n in range(1, 51)]
    cup_fields = [cup.build(f"{n:06d}", NOW)[1] for n in range(1, 51)]
    assert all({"7", "12", "13", "37"} <= set(fields) for fields in iso_fields)
    assert all(not {"7", "12", "13", "37"} & set(fields) for fields in cup_fields)
    assert all(fields["49"] == "156" and "60" in fields for fields in cup_fields)
    assert all(fields["49"] == "840" for fields in iso_fields)
    # CUP track 2 is BCD with a D separator.
    assert all("D" in fields["35"] for fields in cup_fields if "35" in fields)
    assert dialect_style(get_dialect("cup-pos")) == "cup"
    assert dialect_style(get_dialect("iso87-ascii")) == "iso87"


def test_the_mix_is_respected() -> None:
    builder = RequestBuilder(
        get_dialect("iso87-binary"),
        "T1",
        "M1",
        random.Random(3),
        mix=TrafficMix(authorization_share=0.0, amount_min=500, amount_max=500, chip_share=1.0),
    )
    for n in range(1, 21):
        mti, fields = builder.build(f"{n:06d}", NOW)
        assert mti == "0200"
        assert fields["4"] == "000000000500"
        assert fields["22"] == "051" and "55" in fields and "52" in fields


def test_envelopes_follow_the_framing() -> None:
    assert default_envelope(get_dialect("iso87-binary")) == (b"", b"")
    tpdu, header = default_envelope(get_dialect("cup-pos"))
    assert tpdu == bytes.fromhex("6000060000")
    assert header == bytes.fromhex("603100311003")


def test_iso87_terminal_reversal_has_a_new_stan_and_de90() -> None:
    dialect = get_dialect("iso87-binary")
    builder = RequestBuilder(dialect, "TERM0001", "MERCHANT0000001", random.Random(4))
    mti, original = builder.build("000123", NOW)
    reversal_mti, reversal = builder.reversal(mti, original, "000124", NOW + 30)
    assert reversal_mti == "0400"
    assert reversal["11"] == "000124"
    assert reversal["90"] == mti + "000123" + original["7"] + "0" * 22
    assert reversal["39"] == dialect.reversal.reason_codes["timeout"]
    assert not {"35", "52", "55"} & set(reversal)
    assert reversal["4"] == original["4"]
    Codec(dialect).encode(reversal_mti, reversal)


def test_cup_terminal_reversal_keeps_the_stan_and_takes_the_pan_from_track2() -> None:
    dialect = get_dialect("cup-pos")
    builder = RequestBuilder(
        dialect,
        "TERM0001",
        "MERCHANT0000001",
        random.Random(4),
        mix=TrafficMix(chip_share=0, swipe_share=1, track_only_share=1),
    )
    mti, original = builder.build("000123", NOW)
    assert "2" not in original and "35" in original
    reversal_mti, reversal = builder.reversal(mti, original, "000999", NOW + 30)
    assert reversal_mti == "0400"
    assert reversal["11"] == "000123"
    assert "90" not in reversal
    assert reversal["2"] == original["35"].split("D")[0]
    assert reversal["39"] == "98"
    assert reversal["60"] == original["60"]
    assert not {"35", "52", "55"} & set(reversal)
    Codec(dialect).encode(reversal_mti, reversal)


@pytest.mark.parametrize("name", DIALECTS)
def test_the_fast_encoder_gives_the_codecs_bytes(name: str) -> None:
    dialect = get_dialect(name)
    codec = Codec(dialect)
    fast = MessageEncoder(codec)
    builder = RequestBuilder(dialect, "TERM0001", "MERCHANT0000001", random.Random(7))
    messages = []
    for number in range(1, 201):
        mti, fields = builder.build(f"{number:06d}", NOW)
        messages.append((mti, fields))
        messages.append(builder.reversal(mti, fields, f"{number + 500:06d}", NOW))
    messages.append(("0800", {"7": "1125103000", "11": "000001", "70": "301"}))  # bitmap 2
    for mti, fields in messages:
        assert fast.encode(mti, fields) == codec.encode(mti, fields)


def test_the_fast_encoder_reports_bad_values_as_the_codec_does() -> None:
    codec = Codec(get_dialect("iso87-binary"))
    fast = MessageEncoder(codec)
    for bad in ({"4": "12"}, {"52": "XYZ"}, {"2": "1" * 20}, {"999": "1"}):
        with pytest.raises(CodecError) as from_fast:
            fast.encode("0200", bad)
        with pytest.raises(CodecError) as from_codec:
            codec.encode("0200", bad)
        assert str(from_fast.value) == str(from_codec.value)
