"""`iso-gateway dialects` and `iso-gateway decode`: real vectors in, masked fields out.

Every output is checked for the card data of the message it decoded: the full PAN, the track 2
value and the PIN block (DE 52) must never be printed, whether the decode succeeds or fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from gateway.cli import cli
from gateway.wire.codec import Codec
from gateway.wire.dialect import find_dialects, get_dialect
from gateway.wire.framing import Framing, read_frame
from gateway.wire.masking import mask_pan
from tests.conftest import REPO

CUP_SALE = "cup-pos/0200_sale_emv_len_tpdu_hdr.hex"
CUP_SALE_NO_LENGTH = "cup-pos/0200_sale_emv_nolen.hex"
CUP_BAD_LENGTH = "cup-pos/0210_sale_resp_00_badlen.hex"
MOOV_REVERSAL = "moov-1987-ascii/iso_reversal_message.dat"

# A test card (Visa test range, Luhn-valid) for messages the tests build themselves.
TEST_PAN = "4761739001010119"
TEST_TRACK2 = "4761739001010119=25122011143804400000"
TEST_PIN_BLOCK = "0123456789ABCDEF"


def run(*args: str, stdin: str | bytes | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=stdin)


def secrets_of(fields: dict[str, str]) -> list[str]:
    """The values no output may contain: PAN, track data, PIN block, in any letter case."""
    values = [fields[name] for name in ("2", "35", "52") if fields.get(name)]
    return [v for value in values for v in (value, value.lower())]


def expect(condition: bool, what: str) -> None:
    """An assert for values that hold card data: pytest's assert shows the values compared,
    this shows only ``what``."""
    if not condition:
        pytest.fail(what, pytrace=False)


def assert_no_card_data(result: Result, secrets: list[str]) -> None:
    assert secrets, "the test message must carry card data for this check to mean anything"
    text = result.stdout + result.stderr
    leaked = [index for index, secret in enumerate(secrets) if secret in text]
    expect(not leaked, f"card data (secret #{leaked}) in the command's output")


def vector_hex_bytes(vectors: Path, name: str) -> bytes:
    return bytes.fromhex((vectors / name).read_text())


def cup_sale_fields(vectors: Path) -> dict[str, str]:
    dialect = get_dialect("cup-pos")
    frame = read_frame(dialect.framing, vector_hex_bytes(vectors, CUP_SALE))
    return dict(Codec(dialect).decode(frame.message).fields)


def built_message(*, track2: bool = True) -> tuple[bytes, dict[str, str]]:
    """An iso87-binary 0200 with PAN, track 2 and PIN block, framed with its 2-byte length."""
    fields = {
        "2": TEST_PAN, "3": "000000", "4": "000000001500", "11": "000123",
        "22": "051", "41": "TERM0001", "42": "MERCHANT0000001", "49": "840",
        "52": TEST_PIN_BLOCK,
    }  # fmt: skip
    if track2:
        fields["35"] = TEST_TRACK2
    message = Codec(get_dialect("iso87-binary")).encode("0200", fields)
    return len(message).to_bytes(2, "big") + message, fields


# --- dialects ---------------------------------------------------------------------------------


def test_dialects_lists_every_builtin_with_its_framing() -> None:
    result = run("dialects")
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert set(lines) == set(find_dialects())
    assert "binary2 +tpdu +header6" in lines["cup-pos"]
    assert "binary2 +header24" in lines["visa-base1"]
    assert "+tpdu" not in lines["iso87-binary"]
    assert "BROKEN" not in result.stdout


def test_dialects_shows_a_broken_file_and_still_lists_the_others(tmp_path: Path) -> None:
    (tmp_path / "acme.toml").write_text('name = "acme"\nextends = "iso87-binary"\nbogus = 1\n')
    result = run("dialects", "--specs-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    acme = next(line for line in result.stdout.splitlines() if line.startswith("acme"))
    assert "BROKEN" in acme and "bogus" in acme
    assert any(line.startswith("cup-pos ") for line in result.stdout.splitlines())


def test_dialects_with_a_missing_specs_dir_is_one_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    result = run("dialects", "--specs-dir", str(missing))
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert "not found" in result.stderr and str(missing) in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


# --- decode: vectors --------------------------------------------------------------------------


def test_decode_cup_vector_from_hex_file(vectors: Path) -> None:
    fields = cup_sale_fields(vectors)
    result = run("decode", "--dialect", "cup-pos", "--file", str(vectors / CUP_SALE))
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "tpdu      6000060000" in out
    assert "header    603100311003" in out
    assert "MTI       0200" in out
    expect(mask_pan(fields["2"]) in out, "masked PAN not shown")
    for name, value in (("11", "000403"), ("41", "10000019"), ("42", "850100082410002")):
        line = next(line for line in out.splitlines() if line.startswith(f"DE {name:>3} "))
        assert line.endswith(value)
    assert_no_card_data(result, secrets_of(fields))
    assert all(name in fields for name in ("35", "52")), "the vector carries track 2 and a PIN"


def test_decode_cup_vector_without_length_header(vectors: Path) -> None:
    result = run(
        "decode", "--dialect", "cup-pos", "--framing", "none", "--json",
        "--file", str(vectors / CUP_SALE_NO_LENGTH),
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["framing"]["length_header"] == "none"
    assert shown["framing"]["tpdu"] == "6000030000"
    assert shown["framing"]["header"] == "60310031FFF1"
    assert shown["fields"]["4"] == "000000005588"
    # 19 digits: first 6 and last 4 shown
    expect(shown["fields"]["2"] == "621797*********5090", "DE 2 not masked as 6 + 4")


def test_decode_moov_dat_as_bare_ascii_message(vectors: Path) -> None:
    path = vectors / MOOV_REVERSAL
    dialect = get_dialect("iso87-ascii")
    fields = dict(Codec(dialect).decode(path.read_bytes()).fields)
    result = run("decode", "--dialect", "iso87-ascii", "--framing", "none", "--file", str(path))
    assert result.exit_code == 0, result.stderr
    assert "framing   none, 263 bytes" in result.stdout
    assert "MTI       0400" in result.stdout
    de90 = next(line for line in result.stdout.splitlines() if line.startswith("DE  90 "))
    assert de90.endswith("020000331609080645190000000020000000000000")
    de55 = next(line for line in result.stdout.splitlines() if line.startswith("DE  55 "))
    assert de55.endswith(f"<{len(fields['55'])} chars removed>")
    assert_no_card_data(result, secrets_of(fields))


def test_decode_raw_ascii_message_from_stdin(vectors: Path) -> None:
    """Most ASCII messages are all hex digits: stdin is read as bytes only when told so."""
    data = (vectors / MOOV_REVERSAL).read_bytes()
    raw = run("decode", "--dialect", "iso87-ascii", "--framing", "none", "--input", "raw", "-",
              stdin=data)  # fmt: skip
    assert raw.exit_code == 0, raw.stderr
    assert "MTI       0400" in raw.stdout
    as_hex = run("decode", "--dialect", "iso87-ascii", "--framing", "none", "-", stdin=data)
    assert as_hex.exit_code == 1
    assert "--input raw" in as_hex.stderr
    assert "Traceback" not in as_hex.output


# --- decode: input forms ----------------------------------------------------------------------


def test_decode_hex_argument_with_spaces_and_colons() -> None:
    frame, fields = built_message()
    spaced = " ".join(f"{b:02x}" for b in frame)
    coloned = ":".join(f"{b:02X}" for b in frame)
    for text in (frame.hex(), spaced, coloned):
        result = run("decode", "--dialect", "iso87-binary", text)
        assert result.exit_code == 0, result.stderr
        assert "MTI       0200" in result.stdout
        expect(mask_pan(TEST_PAN) in result.stdout, "masked PAN not shown")
        assert f"<{len(TEST_TRACK2)} chars removed>" in result.stdout
        assert_no_card_data(result, secrets_of(fields))


def test_decode_hex_from_stdin() -> None:
    frame, fields = built_message()
    result = run("decode", "--dialect", "iso87-binary", "-", stdin=frame.hex() + "\n")
    assert result.exit_code == 0, result.stderr
    assert "DE  41" in result.stdout and "TERM0001" in result.stdout
    assert_no_card_data(result, secrets_of(fields))


def test_decode_json_shape(vectors: Path) -> None:
    fields = cup_sale_fields(vectors)
    data = vector_hex_bytes(vectors, CUP_SALE)
    result = run("decode", "--dialect", "cup-pos", "--json", data.hex())
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert set(shown) == {"dialect", "framing", "mti", "fields"}
    assert shown["dialect"] == "cup-pos"
    assert shown["framing"] == {
        "length_header": "binary2",
        "frame_bytes": len(data),
        "tpdu": "6000060000",
        "header": "603100311003",
        "message_bytes": len(data) - 2 - 5 - 6,
    }
    assert shown["mti"] == "0200"
    assert set(shown["fields"]) == set(fields)
    expect(shown["fields"]["2"] == mask_pan(fields["2"]), "DE 2 not masked as 6 + 4")
    for name in ("35", "52", "55"):
        assert shown["fields"][name] == f"<{len(fields[name])} chars removed>"
    assert shown["fields"]["11"] == "000403"
    assert_no_card_data(result, secrets_of(fields))


def test_decode_escapes_control_characters_in_text_output() -> None:
    message = Codec(get_dialect("iso87-binary")).encode(
        "0800", {"11": "000001", "41": "TERM\x1b[2J", "70": "301"}
    )
    result = run("decode", "--dialect", "iso87-binary", "--framing", "none", message.hex())
    assert result.exit_code == 0, result.stderr
    assert "\x1b" not in result.stdout
    assert "TERM\\x1b[2J" in result.stdout


# --- decode: errors ---------------------------------------------------------------------------


def test_decode_truncated_cup_frame_is_a_clear_error(vectors: Path) -> None:
    data = vector_hex_bytes(vectors, CUP_BAD_LENGTH)
    # Its body is a whole message (only the length header lies): decode it to know its PAN.
    body = read_frame(Framing(length="none", tpdu=True, header_length=6), data[2:])
    fields = dict(Codec(get_dialect("cup-pos")).decode(body.message).fields)
    result = run("decode", "--dialect", "cup-pos", "--file", str(vectors / CUP_BAD_LENGTH))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: cannot decode: ")
    assert "truncated" in result.stderr
    assert "170" in result.stderr and "142" in result.stderr
    assert "Traceback" not in result.output
    assert_no_card_data(result, secrets_of(fields))


def test_decode_a_message_the_codec_rejects_shows_no_card_data() -> None:
    frame, fields = built_message()
    # DE 52 is the last field: cut 3 of its 8 bytes and fix the length header, so that the
    # frame is whole and the codec is the one to complain.
    message = frame[2:-3]
    broken = len(message).to_bytes(2, "big") + message
    result = run("decode", "--dialect", "iso87-binary", broken.hex())
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot decode: field 52")
    assert_no_card_data(result, secrets_of(fields))


def test_decode_unknown_dialect_lists_the_known_ones() -> None:
    result = run("decode", "--dialect", "no-such-acquirer", "00")
    assert result.exit_code == 1
    assert "unknown dialect 'no-such-acquirer'" in result.stderr
    for name in find_dialects():
        assert name in result.stderr


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        (TEST_TRACK2, "HEX is not hexadecimal text"),  # '=' is not hex: and it is not echoed
        ("0x0102", "HEX is not hexadecimal text"),
        ("01020", "odd number of hex digits (5)"),
    ],
)
def test_decode_non_hex_argument(text: str, complaint: str) -> None:
    result = run("decode", "--dialect", "iso87-binary", text)
    assert result.exit_code == 1
    assert complaint in result.stderr
    assert_no_card_data(result, [TEST_PAN, TEST_TRACK2])


def test_decode_keepalive_frame_says_so() -> None:
    result = run("decode", "--dialect", "iso87-binary", "0000")
    assert result.exit_code == 1
    assert "keep-alive" in result.stderr


def test_decode_needs_exactly_one_input(tmp_path: Path) -> None:
    assert run("decode", "--dialect", "iso87-binary").exit_code == 2
    path = tmp_path / "m.hex"
    path.write_text("0000")
    both = run("decode", "--dialect", "iso87-binary", "--file", str(path), "0000")
    assert both.exit_code == 2
    assert "not both" in both.stderr


def test_decode_hex_file_that_is_not_hex(tmp_path: Path) -> None:
    path = tmp_path / "card.txt"
    path.write_text(f"PAN {TEST_PAN}\n")
    result = run("decode", "--dialect", "iso87-binary", "--file", str(path))
    assert result.exit_code == 1
    assert f"{path} is not hexadecimal text" in result.stderr
    assert_no_card_data(result, [TEST_PAN])


# --- the real command line --------------------------------------------------------------------


def test_decode_through_python_m_gateway(vectors: Path) -> None:
    fields = cup_sale_fields(vectors)
    ok = subprocess.run(
        [sys.executable, "-m", "gateway", "decode", "--dialect", "cup-pos", "--json",
         "--file", str(vectors / CUP_SALE)],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    shown = json.loads(ok.stdout)
    assert shown["mti"] == "0200"
    expect(shown["fields"]["2"] == mask_pan(fields["2"]), "DE 2 not masked as 6 + 4")
    broken = subprocess.run(
        [sys.executable, "-m", "gateway", "decode", "--dialect", "cup-pos",
         "--file", str(vectors / CUP_BAD_LENGTH)],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
    )  # fmt: skip
    assert broken.returncode == 1
    assert broken.stderr.startswith("error: cannot decode: truncated frame")
    assert "Traceback" not in broken.stderr
    for output in (ok.stdout + ok.stderr, broken.stdout + broken.stderr):
        expect(not any(s in output for s in secrets_of(fields)), "card data in the output")
