"""The dialects against messages written by other people (tests/vectors, a copy of
../shared/vectors: its README gives sources and licences).

A valid vector must decode to the values the README lists and encode back to the identical
bytes; the scanner must agree with the decoder on every field. A broken one must be a
CodecError that names the broken field.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.wire.codec import Codec, CodecError, Message
from gateway.wire.dialect import get_dialect

MOOV = "moov-1987-ascii"
CUP = "cup-pos"


def roundtrip(codec: Codec, message: bytes) -> Message:
    """Decode, check scan agrees field by field, check encode gives the same bytes back."""
    decoded = codec.decode(message)
    view = codec.scan(message)
    assert view.mti == decoded.mti
    assert view.present == tuple(decoded.fields)
    assert {name: view.get(name) for name in view.present} == dict(decoded.fields)
    assert codec.encode(decoded.mti, decoded.fields) == message
    return decoded


# --- moov-io, ISO 8583:1987 in ASCII with a hex bitmap, no framing (the file is the message) ---


@pytest.fixture(scope="module")
def iso87_ascii() -> Codec:
    return Codec(get_dialect("iso87-ascii"))


MOOV_VALID = {
    "financial_transaction_message.dat": (
        "0200",
        {"3": "380000", "4": "000000000000", "11": "011392", "32": "2000001", "49": "360"},
    ),
    "financial_transaction_message_response.dat": (
        "0210",
        {"3": "380000", "11": "011392", "39": "00", "37": "000000115604"},
    ),
    "iso_reversal_message.dat": (
        "0400",
        {
            "2": "1111111110000000000",
            "11": "100331",
            "32": "",  # a zero-length LLVAR: pyiso8583 (and we) accept it
            "55": "003317000394809080646510000000",
            "90": "020000331609080645190000000020000000000000",
        },
    ),
    "iso_reversal_message_response.dat": ("0410", {"11": "100331", "39": "00"}),
    "iso_reversal_repeat_message.dat": ("0401", {"11": "200331"}),
    "iso_reversal_repeat_message_response.dat": ("0410", {"11": "200331", "39": "00"}),
    "iso_reversal_message_advice.dat": ("0420", {"2": "", "25": "33", "32": "00011122233"}),
    "network_management_message.dat": ("0800", {"11": "900001", "70": "001"}),
    "network_management_message_response.dat": ("0810", {"39": "00", "70": "001"}),
}


@pytest.mark.parametrize("name", sorted(MOOV_VALID))
def test_moov_valid_vectors(vectors: Path, iso87_ascii: Codec, name: str) -> None:
    mti, expected = MOOV_VALID[name]
    message = roundtrip(iso87_ascii, (vectors / MOOV / name).read_bytes())
    assert message.mti == mti
    assert {k: message.get(k) for k in expected} == expected


def test_moov_reversal_de90_is_the_original_data(vectors: Path, iso87_ascii: Codec) -> None:
    message = iso87_ascii.decode((vectors / MOOV / "iso_reversal_message.dat").read_bytes())
    de90 = message.get("90")
    assert de90 == "020000331609080645190000000020000000000000"
    assert de90 is not None
    # original MTI, STAN, DE 7, acquirer id, forwarding id (reversal-rules.md)
    parts = (de90[:4], de90[4:10], de90[10:20], de90[20:31], de90[31:42])
    assert parts == ("0200", "003316", "0908064519", "00000000200", "00000000000")


def test_moov_decode_matches_moovs_own_decode(vectors: Path, iso87_ascii: Codec) -> None:
    """moov's .json is its decode of the same 0400: every element but the bitmaps agrees."""
    import json

    theirs = json.loads((vectors / MOOV / "iso_reversal_message.json").read_text())
    ours = iso87_ascii.decode((vectors / MOOV / "iso_reversal_message.dat").read_bytes())
    assert ours.mti == theirs["mti"]
    assert dict(ours.fields) == {k: v for k, v in theirs["elements"].items() if k != "1"}


def test_moov_broken_de55_length(vectors: Path, iso87_ascii: Codec) -> None:
    """error_message.dat: DE 55 says 30 characters, 21 follow."""
    data = (vectors / MOOV / "error_message.dat").read_bytes()
    for call in (iso87_ascii.decode, iso87_ascii.scan):
        with pytest.raises(CodecError) as caught:
            call(data)
        assert caught.value.field == "55"


# moov's other test specifications used other encodings for these fields (EBCDIC text, BCD
# numbers, a hex length, a sign-prefixed amount of 8 characters, EBCDIC track data). They are
# not iso87-ascii messages, and the codec must say which field does not fit rather than guess.
MOOV_OTHER_ENCODINGS = {
    "message_with_character_ebcdic_encoding.dat": "42",
    "message_with_number_bcd_encoding.dat": "7",
    "message_with_hex_length.dat": "32",
    "message_with_hex_bcd.dat": "48",
    "message_with_hex_rbcd.dat": "48",
    "message_with_indicate_numeric.dat": "28",
    "message_with_error_indicate_numeric.dat": "28",
    "network_management_message_with_track.dat": "35",
    "network_management_message_with_error_track.dat": "35",
}


@pytest.mark.parametrize("name", sorted(MOOV_OTHER_ENCODINGS))
def test_moov_other_encodings_name_the_field(vectors: Path, iso87_ascii: Codec, name: str) -> None:
    data = (vectors / MOOV / name).read_bytes()
    with pytest.raises(CodecError) as caught:
        iso87_ascii.decode(data)
    assert caught.value.field == MOOV_OTHER_ENCODINGS[name]
    # The scanner rejects it too: where the structure breaks (which may be a later field, as
    # it does not read values it is not asked for), or when the broken field is read.
    try:
        view = iso87_ascii.scan(data)
    except CodecError:
        return
    with pytest.raises(CodecError) as caught:
        view.get(MOOV_OTHER_ENCODINGS[name])
    assert caught.value.field == MOOV_OTHER_ENCODINGS[name]


def test_moov_semantically_broken_advices_are_well_formed(
    vectors: Path, iso87_ascii: Codec
) -> None:
    """`_missing_field` leaves out DE 32, `_unexpected_field` adds DE 13/14 to the 0420.

    Both are well-formed ISO 8583: each bitmap bit has its field and nothing is left over.
    What they break is moov's per-MTI list of required fields, which is a rule of the
    acquirer, not of the wire format. The gateway forwards them unchanged and lets the
    acquirer answer (30, format error); the codec must decode them exactly.
    """
    good = iso87_ascii.decode((vectors / MOOV / "iso_reversal_message_advice.dat").read_bytes())
    missing = roundtrip(
        iso87_ascii, (vectors / MOOV / "iso_reversal_message_advice_missing_field.dat").read_bytes()
    )
    extra = roundtrip(
        iso87_ascii,
        (vectors / MOOV / "iso_reversal_message_advice_unexpected_field.dat").read_bytes(),
    )
    assert set(good.fields) - set(missing.fields) == {"32"}
    assert set(extra.fields) - set(good.fields) == {"13", "14"}


def test_moov_error_date_is_well_formed(vectors: Path, iso87_ascii: Codec) -> None:
    """DE 13 is "9099" (month 90): a valid n4 on the wire. Dates are the acquirer's to judge
    (the gateway never rewrites or rejects them), so the codec decodes it as it is."""
    message = roundtrip(
        iso87_ascii, (vectors / MOOV / "iso_reversal_message_error_date.dat").read_bytes()
    )
    assert message.get("13") == "9099"


# --- China UnionPay POS: hex text, [length][TPDU][header] then the message --------------------


@pytest.fixture(scope="module")
def cup() -> Codec:
    return Codec(get_dialect("cup-pos"))


def cup_frame(vectors: Path, name: str) -> tuple[int | None, bytes, bytes, bytes]:
    """(length prefix or None, TPDU, 6-byte header, message) of a CUP vector, split by hand."""
    data = bytes.fromhex((vectors / CUP / name).read_text())
    length = None
    if "nolen" not in name:
        length, data = int.from_bytes(data[:2], "big"), data[2:]
    return length, data[:5], data[5:11], data[11:]


CUP_VALID = {
    "0200_sale_emv_len_tpdu_hdr.hex": (
        "6000060000",
        "603100311003",
        "0200",
        {
            "2": "6224242900000113",
            "3": "000000",
            "4": "000000000001",
            "11": "000403",
            "22": "071",
            "35": "6224242900000113D28062013949031013",
            "41": "10000019",
            "42": "850100082410002",
            "49": "156",
            "52": "D1EEF419D0AE2609",
            "60": "22000024000600",
        },
    ),
    "0200_sale_emv_nolen.hex": (
        "6000030000",
        "60310031FFF1",
        "0200",
        {"2": "6217973910000725090", "4": "000000005588", "11": "000023", "41": "29800013"},
    ),
    "0210_sale_resp_A0_len.hex": (
        "6000030000",
        "60310031FFF1",
        "0210",
        {"2": "6217973910000725090", "11": "000023", "39": "A0", "41": "29800013"},
    ),
    "0800_nolen_hdr6022.hex": (
        "6000030000",
        "602200000000",
        "0800",
        {"11": "000452", "41": "80879888", "42": "086057780879888", "60": "00002199001"},
    ),
    "0800_signin_len005B.hex": (
        "6000030000",
        "603100311312",
        "0800",
        {"11": "000001", "41": "10000159", "60": "00000001003", "63": "01 "},
    ),
    "0800_signin_len0063.hex": (
        "6000490000",
        "603200320501",
        "0800",
        {"11": "000074", "41": "12345678", "42": "123456789123456", "63": "123"},
    ),
}


@pytest.mark.parametrize("name", sorted(CUP_VALID))
def test_cup_valid_vectors(vectors: Path, cup: Codec, name: str) -> None:
    tpdu, header, mti, expected = CUP_VALID[name]
    length, got_tpdu, got_header, body = cup_frame(vectors, name)
    if length is not None:
        assert length == 5 + 6 + len(body)
    assert (got_tpdu.hex().upper(), got_header.hex().upper()) == (tpdu, header)
    message = roundtrip(cup, body)
    assert message.mti == mti
    assert {k: message.get(k) for k in expected} == expected


def test_cup_sign_in_de62_passes_through_as_binary(vectors: Path, cup: Codec) -> None:
    """DE 62 is text in a sign-in request, keys in its response: binary keeps both intact."""
    *_, body = cup_frame(vectors, "0800_signin_len005B.hex")
    de62 = cup.decode(body).get("62")
    assert de62 is not None
    assert bytes.fromhex(de62).startswith(b"Sequence No")


def test_cup_bad_length_vector_body_decodes(vectors: Path, cup: Codec) -> None:
    """The length says 170 but 142 bytes follow: a framing error (truncated frame), which
    framing reports. The 142 bytes themselves are a whole, valid 0210."""
    length, _, _, body = cup_frame(vectors, "0210_sale_resp_00_badlen.hex")
    assert (length, 5 + 6 + len(body)) == (170, 142)
    message = roundtrip(cup, body)
    assert (message.mti, message.get("39"), message.get("63")) == ("0210", "00", "CUP")


def test_cup_response_matches_its_request(vectors: Path, cup: Codec) -> None:
    """The A0 response answers the no-length sale: the dialect's match fields agree."""
    *_, request = cup_frame(vectors, "0200_sale_emv_nolen.hex")
    *_, response = cup_frame(vectors, "0210_sale_resp_A0_len.hex")
    fields = cup.dialect.match_fields
    assert cup.scan(request).fields(fields) == cup.scan(response).fields(fields)
    assert cup.scan(request).fields(fields) == {
        "41": "29800013",
        "42": "848290441116000",
        "11": "000023",
    }


# --- Visa BASE I and Mastercard (EBCDIC), binary files ----------------------------------------

VISA = "visa-mastercard"
VISA_HEADER = 22


def visa_frame(vectors: Path, name: str) -> tuple[int, bytes, bytes]:
    """(length prefix, 22-byte Visa header, message): [2-byte length][00 00][header][message]."""
    data = (vectors / VISA / name).read_bytes()
    assert data[2:4] == b"\x00\x00"
    return int.from_bytes(data[:2], "big"), data[4 : 4 + VISA_HEADER], data[4 + VISA_HEADER :]


@pytest.fixture(scope="module")
def visa() -> Codec:
    return Codec(get_dialect("visa-base1"))


VISA_VALID = {
    "visa_aft_sms.bin": ("0200", {"2": "4567890123456783", "3": "100000", "11": "411299"}),
    "visa_aft_sms_rev.bin": (
        "0420",
        {"11": "411295", "38": "031975", "90": "020041129503260704270000043210900000000000"},
    ),
    "visa_aft_sms_rev_resp.bin": ("0430", {"11": "411295", "39": "00", "44": "1"}),
    "visa_cash_sms_rev.bin": (
        "0420",
        {
            "2": "4321098765432107",
            "41": "112     ",
            "43": "TELDENIYA BRANCH         TELDENIYA    LK",
        },
    ),
    "visa_ecomm.bin": ("0100", {"4": "000000002500", "42": "300014000000000", "49": "840"}),
    "visa_f55.bin": (
        "0100",
        {"35": "4034567890123456D030912312345000", "32": "12345678901", "136": "0123456789ABCDEF"},
    ),
    "visa_f55_unordered.bin": ("0100", {"23": "001", "145": "840", "147": "000000012300"}),
}


@pytest.mark.parametrize("name", sorted(VISA_VALID))
def test_visa_valid_vectors(vectors: Path, visa: Codec, name: str) -> None:
    mti, expected = VISA_VALID[name]
    length, header, body = visa_frame(vectors, name)
    # the length counts what follows the 4-byte prefix; the header repeats it in bytes 3-4
    assert length == VISA_HEADER + len(body)
    assert header[0] == VISA_HEADER
    assert int.from_bytes(header[3:5], "big") == length
    message = roundtrip(visa, body)
    assert message.mti == mti
    assert {k: message.get(k) for k in expected} == expected


def test_visa_reversal_keeps_the_original_stan(vectors: Path, visa: Codec) -> None:
    """Why visa-base1 says reversal.stan = "original": DE 11 of the 0420 is DE 90's STAN."""
    *_, body = visa_frame(vectors, "visa_aft_sms_rev.bin")
    message = visa.decode(body)
    de90 = message.get("90")
    assert de90 is not None
    assert de90[:4] == "0200"
    assert de90[4:10] == message.get("11")
    assert visa.dialect.reversal.stan == "original"


def test_visa_reversal_response_matches_the_reversal(vectors: Path, visa: Codec) -> None:
    *_, request = visa_frame(vectors, "visa_aft_sms_rev.bin")
    *_, response = visa_frame(vectors, "visa_aft_sms_rev_resp.bin")
    fields = visa.dialect.match_fields
    assert visa.scan(request).fields(fields) == visa.scan(response).fields(fields)


def test_mastercard_ebcdic_vector(vectors: Path) -> None:
    codec = Codec(get_dialect("iso87-ebcdic"))
    message = roundtrip(codec, (vectors / VISA / "mast_moneysend.bin").read_bytes())
    assert message.mti == "0100"
    expected = {"2": "5432109876543212", "3": "280000", "4": "000000031200", "11": "410442"}
    assert {k: message.get(k) for k in expected} == expected
