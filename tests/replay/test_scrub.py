"""Card data in recordings: PAN tokens, track data and PIN blocks made safe, messages re-encode."""

from __future__ import annotations

import random

import pytest

from gateway.replay.scrub import MessageScrubber, PanTokenizer
from gateway.sim.traffic import RequestBuilder, TrafficMix, default_envelope
from gateway.wire.codec import Codec
from gateway.wire.dialect import get_dialect
from gateway.wire.framing import Frame
from gateway.wire.masking import luhn_ok

PANS = ["4761739001010119", "5413330089020011", "6224242900000113", "6217973910000725090",
        "4111111111111"]  # fmt: skip


def test_token_keeps_bin_and_last_four_and_passes_luhn() -> None:
    tokenizer = PanTokenizer()
    for pan in PANS:
        token = tokenizer.token(pan)
        assert token != pan
        assert len(token) == len(pan)
        assert token[:6] == pan[:6] and token[-4:] == pan[-4:]
        assert token.isdigit() and luhn_ok(token)


def test_same_pan_same_token_within_a_file_only() -> None:
    first, second = PanTokenizer(), PanTokenizer()
    assert first.token(PANS[0]) == first.token(PANS[0])
    # Another file has another key: its tokens do not link to this one's.
    assert first.token(PANS[0]) != second.token(PANS[0])
    keyed = PanTokenizer(b"k" * 32)
    assert keyed.token(PANS[1]) == PanTokenizer(b"k" * 32).token(PANS[1])


def test_distinct_pans_never_share_a_token() -> None:
    """3000 cards with the same BIN and last four digits (16 digits: 10**5 possible middles)."""
    tokenizer = PanTokenizer(b"fixed key" * 4)
    rng = random.Random(3)
    pans: set[str] = set()
    while len(pans) < 3000:
        middle = "".join(rng.choice("0123456789") for _ in range(5))
        pans |= {pan for digit in "0123456789" if luhn_ok(pan := f"476173{middle}{digit}0119")}
    tokens = {pan: tokenizer.token(pan) for pan in pans}
    assert len(set(tokens.values())) == len(pans)
    assert all(token != pan for pan, token in tokens.items())


def test_twelve_digit_cards_sharing_bin_and_last_four_still_get_distinct_tokens() -> None:
    """Only 10 middles exist for 12 digits: after that the last four digits give way."""
    tokenizer = PanTokenizer(b"another key" * 3)
    pans = {pan for n in range(100) if luhn_ok(pan := f"476173{n:02d}0119")}
    tokens = {tokenizer.token(pan) for pan in pans}
    assert len(tokens) == len(pans) and all(luhn_ok(t) and t[:6] == "476173" for t in tokens)


def test_short_or_odd_values_are_replaced_whole() -> None:
    tokenizer = PanTokenizer()
    assert tokenizer.token("123456789") != "123456789"
    assert len(tokenizer.token("123456789")) == 9
    assert tokenizer.token("") == ""


@pytest.mark.parametrize("dialect_name", ["iso87-binary", "cup-pos", "iso87-ascii"])
def test_scrubbed_messages_re_encode_without_card_data(dialect_name: str) -> None:
    dialect = get_dialect(dialect_name)
    codec = Codec(dialect)
    scrubber = MessageScrubber(dialect, PanTokenizer())
    builder = RequestBuilder(
        dialect, "TERM0001", "MERCHANT0000001", random.Random(7),
        mix=TrafficMix(chip_share=0.5, swipe_share=0.4),
    )  # fmt: skip
    tpdu, header = default_envelope(dialect)
    seen_track, seen_pin, seen_icc = 0, 0, 0
    for stan in range(1, 60):
        mti, fields = builder.build(f"{stan:06d}", 1_700_000_000.0)
        frame = Frame(codec.encode(mti, fields), tpdu, header)
        safe = scrubber.scrub(frame)
        assert safe is not None
        assert (safe.tpdu, safe.header) == (tpdu, header)
        out = codec.decode(safe.message).fields
        pan = fields.get("2") or fields["35"].replace("D", "=").split("=")[0]
        for value in out.values():
            assert pan not in value  # nowhere, not even inside another field
        assert pan not in safe.message.hex().upper()  # not as BCD either
        assert pan.encode() not in safe.message
        if "2" in fields:
            assert out["2"][:6] == pan[:6] and out["2"][-4:] == pan[-4:] and luhn_ok(out["2"])
        if "35" in fields:
            seen_track += 1
            separator = "D" if "D" in fields["35"] else "="
            token, rest = out["35"].split(separator)
            original_rest = fields["35"].split(separator)[1]
            assert token == scrubber.tokenizer.token(pan)
            assert rest[:7] == original_rest[:7]  # expiry and service code kept
            assert set(rest[7:]) <= {"0"}  # discretionary data zeroed
            assert len(out["35"]) == len(fields["35"])
        if "52" in fields:
            seen_pin += 1
            assert out["52"] == "0" * len(fields["52"])
        if "55" in fields:
            seen_icc += 1
            assert out["55"] == "0" * len(fields["55"])
        # Everything else is untouched.
        for name in set(fields) - {"2", "35", "52", "55"}:
            assert out[name] == fields[name]
    assert seen_track and seen_pin and seen_icc


def test_undecodable_message_is_not_recorded() -> None:
    dialect = get_dialect("iso87-binary")
    scrubber = MessageScrubber(dialect, PanTokenizer())
    assert scrubber.scrub(Frame(b"\x02\x00garbage")) is None
    assert scrubber.scrub(Frame(b"")) == Frame(b"")  # a keep-alive stays one


def test_pan_in_free_text_is_tokenized() -> None:
    dialect = get_dialect("iso87-binary")
    scrubber = MessageScrubber(dialect, PanTokenizer())
    fields = scrubber.scrub_fields({"44": f"card {PANS[0]} refused", "41": "TERM0001"})
    assert PANS[0] not in fields["44"]
    assert fields["44"].startswith("card 476173") and fields["44"].endswith("0119 refused")
    assert repr(scrubber.tokenizer) == "PanTokenizer(1 PANs)"
