"""Framing: length headers, TPDU and fixed headers; the stream decoder and its errors."""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.wire.framing import (
    LENGTH_HEADERS,
    BadLengthHeader,
    Frame,
    FrameDecoder,
    Framing,
    FramingError,
    OversizedFrame,
    ShortTPDU,
    TrailingData,
    TruncatedFrame,
    encode_frame,
    read_frame,
    split_frame,
    swap_tpdu,
)

STREAM_HEADERS = [h for h in LENGTH_HEADERS if h != "none"]
HEADER_SIZE = {
    "binary2": 2,
    "binary2_inclusive": 2,
    "ascii4": 4,
    "hex4": 4,
    "bcd2": 2,
    "binary4": 4,
}
CUP = Framing("binary2", tpdu=True, header_length=6)
CUP_TPDU = bytes.fromhex("6000060000")
CUP_HEADER = bytes.fromhex("603100311003")
PAN = b"4111111111111111"


def cup_frame(message: bytes) -> Frame:
    return Frame(message, CUP_TPDU, CUP_HEADER)


# --- known byte layouts -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "body_size", "header"),
    [
        ("binary2", 5, b"\x00\x05"),
        ("binary2", 426, b"\x01\xaa"),
        ("binary2_inclusive", 5, b"\x00\x07"),
        ("ascii4", 5, b"0005"),
        ("ascii4", 426, b"0426"),
        ("hex4", 426, b"01AA"),
        ("bcd2", 5, b"\x00\x05"),
        ("bcd2", 123, b"\x01\x23"),
        ("binary4", 5, b"\x00\x00\x00\x05"),
        ("binary4", 426, b"\x00\x00\x01\xaa"),
    ],
)
def test_known_length_header_layouts(length: str, body_size: int, header: bytes) -> None:
    framing = Framing(length)  # type: ignore[arg-type]
    body = bytes(range(body_size % 256)) + b"x" * (body_size - body_size % 256)
    assert len(body) == body_size
    wire = encode_frame(framing, Frame(body))
    assert wire == header + body
    assert read_frame(framing, wire) == Frame(body)
    assert FrameDecoder(framing).feed(wire) == [Frame(body)]


def test_hex4_reads_lower_case_and_writes_upper_case() -> None:
    framing = Framing("hex4", max_frame=1000)
    assert read_frame(framing, b"01aa" + bytes(426)) == Frame(bytes(426))
    assert encode_frame(framing, Frame(bytes(426)))[:4] == b"01AA"


def test_none_framing_is_the_whole_body() -> None:
    framing = Framing("none", tpdu=True, header_length=6)
    data = CUP_TPDU + CUP_HEADER + b"\x08\x00rest"
    assert read_frame(framing, data) == Frame(b"\x08\x00rest", CUP_TPDU, CUP_HEADER)
    assert encode_frame(framing, Frame(b"\x08\x00rest", CUP_TPDU, CUP_HEADER)) == data


def test_none_framing_has_no_stream_decoder() -> None:
    with pytest.raises(ValueError, match="read_frame"):
        FrameDecoder(Framing("none"))


def test_tpdu_and_header_are_split_off() -> None:
    wire = encode_frame(CUP, cup_frame(b"\x02\x00MSG"))
    assert wire == b"\x00\x10" + CUP_TPDU + CUP_HEADER + b"\x02\x00MSG"
    frame = read_frame(CUP, wire)
    assert (frame.tpdu, frame.header, frame.message) == (CUP_TPDU, CUP_HEADER, b"\x02\x00MSG")
    assert split_frame(CUP, wire[2:]) == frame


@pytest.mark.parametrize("length", STREAM_HEADERS)
def test_round_trip_every_variant_through_the_decoder(length: str) -> None:
    framing = Framing(length, tpdu=True, header_length=3)  # type: ignore[arg-type]
    frames = [
        Frame(b"\x02\x00first", CUP_TPDU, b"HDR"),
        Frame(b""),
        Frame(b"\x08\x10" + bytes(300), swap_tpdu(CUP_TPDU), b"hdr"),
    ]
    stream = b"".join(encode_frame(framing, f) for f in frames)
    decoder = FrameDecoder(framing)
    assert decoder.feed(stream) == frames
    assert decoder.buffered == 0
    decoder.close()


# --- keep-alive -------------------------------------------------------------------------------


@pytest.mark.parametrize("length", STREAM_HEADERS)
def test_zero_length_is_a_keepalive_even_with_tpdu_and_header(length: str) -> None:
    framing = Framing(length, tpdu=True, header_length=6)  # type: ignore[arg-type]
    wire = encode_frame(framing, Frame(b""))
    assert len(wire) == HEADER_SIZE[length]
    [frame] = FrameDecoder(framing).feed(wire)
    assert frame.is_keepalive
    assert frame == Frame(b"")
    assert read_frame(framing, wire).is_keepalive


def test_keepalive_layouts() -> None:
    assert encode_frame(CUP, Frame(b"")) == b"\x00\x00"
    assert encode_frame(Framing("binary2_inclusive"), Frame(b"")) == b"\x00\x02"
    assert encode_frame(Framing("ascii4"), Frame(b"")) == b"0000"


def test_a_frame_with_only_tpdu_and_header_is_not_a_keepalive() -> None:
    frame = read_frame(CUP, b"\x00\x0b" + CUP_TPDU + CUP_HEADER)
    assert not frame.is_keepalive
    assert frame == Frame(b"", CUP_TPDU, CUP_HEADER)


# --- TPDU -------------------------------------------------------------------------------------


def test_swap_tpdu_swaps_destination_and_source() -> None:
    assert swap_tpdu(bytes.fromhex("6000060000")) == bytes.fromhex("6000000006")
    assert swap_tpdu(bytes.fromhex("6012343456")) == bytes.fromhex("6034561234")
    assert swap_tpdu(swap_tpdu(b"\x60abcd")) == b"\x60abcd"


@pytest.mark.parametrize("tpdu", [b"", b"\x60\x00\x06\x00", b"\x60\x00\x06\x00\x00\x00"])
def test_swap_tpdu_needs_five_bytes(tpdu: bytes) -> None:
    with pytest.raises(ValueError, match="5 bytes"):
        swap_tpdu(tpdu)


# --- errors -----------------------------------------------------------------------------------


def test_oversized_length_raises_before_the_body_arrives() -> None:
    framing = Framing("binary2", max_frame=100)
    good = encode_frame(framing, Frame(b"ok"))
    decoder = FrameDecoder(framing)
    assert decoder.feed(good) == [Frame(b"ok")]
    with pytest.raises(OversizedFrame) as info:
        decoder.feed(b"\xff\xff")  # only the header: the body is never awaited
    err = info.value
    assert (err.length, err.limit, err.offset) == (0xFFFF, 100, len(good))
    assert "65535" in str(err) and "100" in str(err) and f"offset {len(good)}" in str(err)


def test_oversized_on_first_byte_of_a_split_header() -> None:
    decoder = FrameDecoder(Framing("binary4", max_frame=8192))
    assert decoder.feed(b"\x7f\xff") == []
    with pytest.raises(OversizedFrame) as info:
        decoder.feed(b"\xff\xff")
    assert info.value.length == 0x7FFF_FFFF


def test_max_frame_counts_the_body_with_tpdu_and_header() -> None:
    framing = Framing("binary2", tpdu=True, header_length=6, max_frame=20)
    assert read_frame(framing, b"\x00\x14" + bytes(20)).message == bytes(9)
    with pytest.raises(OversizedFrame):
        read_frame(framing, b"\x00\x15" + bytes(21))
    with pytest.raises(OversizedFrame):
        split_frame(framing, bytes(21))
    inclusive = Framing("binary2_inclusive", max_frame=20)
    assert read_frame(inclusive, b"\x00\x16" + bytes(20)) == Frame(bytes(20))
    with pytest.raises(OversizedFrame) as info:
        read_frame(inclusive, b"\x00\x17" + bytes(21))
    assert info.value.length == 21


@pytest.mark.parametrize(
    ("length", "header"),
    [
        ("ascii4", b"00A5"),
        ("ascii4", b" 123"),
        ("ascii4", b"+123"),
        ("ascii4", b"1_23"),
        ("ascii4", b"\x00\x00\x00\x05"),
        ("hex4", b"0x1A"),
        ("hex4", b"01G0"),
        ("hex4", b" 1a "),
        ("hex4", b"1_2A"),
        ("bcd2", b"\x00\x0a"),
        ("bcd2", b"\xa0\x00"),
        ("bcd2", b"\x0f\x00"),
        ("binary2_inclusive", b"\x00\x00"),
        ("binary2_inclusive", b"\x00\x01"),
    ],
)
def test_bad_length_header(length: str, header: bytes) -> None:
    framing = Framing(length)  # type: ignore[arg-type]
    with pytest.raises(BadLengthHeader) as info:
        FrameDecoder(framing).feed(header + b"\x02\x00")
    assert info.value.header == header
    assert length in str(info.value)
    with pytest.raises(BadLengthHeader):
        read_frame(framing, header)


def test_bad_length_header_offset_is_where_the_frame_starts() -> None:
    framing = Framing("ascii4")
    first = encode_frame(framing, Frame(b"abc"))
    decoder = FrameDecoder(framing)
    assert decoder.feed(first + b"00") == [Frame(b"abc")]
    with pytest.raises(BadLengthHeader) as info:
        decoder.feed(b"x1")
    assert info.value.offset == len(first) == 7
    assert info.value.header == b"00x1"


def test_truncated_frame_on_close() -> None:
    decoder = FrameDecoder(CUP)
    good = encode_frame(CUP, cup_frame(b"\x02\x00" + PAN))
    assert decoder.feed(good + good[:20]) == [cup_frame(b"\x02\x00" + PAN)]
    assert decoder.buffered == 20
    with pytest.raises(TruncatedFrame) as info:
        decoder.close()
    err = info.value
    assert (err.expected, err.received, err.offset) == (len(good) - 2, 18, len(good))
    assert not err.in_header
    assert PAN.decode() not in str(err)


def test_truncated_length_header_on_close() -> None:
    decoder = FrameDecoder(Framing("ascii4"))
    decoder.feed(b"01")
    with pytest.raises(TruncatedFrame) as info:
        decoder.close()
    assert (info.value.expected, info.value.received, info.value.in_header) == (4, 2, True)
    assert "length header" in str(info.value)


def test_read_frame_truncated_and_trailing() -> None:
    framing = Framing("binary2")
    with pytest.raises(TruncatedFrame) as info:
        read_frame(framing, b"\x00\x05abc")
    assert (info.value.expected, info.value.received, info.value.offset) == (5, 3, 0)
    with pytest.raises(TruncatedFrame) as info:
        read_frame(framing, b"\x00")
    assert info.value.in_header
    with pytest.raises(TrailingData) as trailing:
        read_frame(framing, b"\x00\x02abc")
    assert (trailing.value.expected, trailing.value.received) == (2, 3)
    assert isinstance(trailing.value, FramingError)


def test_short_tpdu() -> None:
    with pytest.raises(ShortTPDU) as info:
        FrameDecoder(CUP).feed(b"\x00\x03")  # raised on the header: the body is not awaited
    assert (info.value.needed, info.value.received, info.value.offset) == (11, 3, 0)
    with pytest.raises(ShortTPDU):
        read_frame(CUP, b"\x00\x0a" + bytes(10))
    with pytest.raises(ShortTPDU) as info:
        split_frame(CUP, bytes(10), offset=42)
    assert info.value.offset == 42


def test_frames_before_a_bad_spot_are_delivered_then_the_error_is_raised() -> None:
    decoder = FrameDecoder(CUP)
    good = encode_frame(CUP, cup_frame(b"\x02\x10ok"))
    assert decoder.pending_error is None
    assert decoder.feed(good + b"\xff\xff") == [cup_frame(b"\x02\x10ok")]
    pending = decoder.pending_error
    assert isinstance(pending, OversizedFrame)
    with pytest.raises(OversizedFrame) as info:
        decoder.feed(b"")
    assert info.value is pending
    assert info.value.offset == len(good)
    assert decoder.pending_error is None
    with pytest.raises(RuntimeError, match="failed earlier"):
        decoder.feed(good)


def test_pending_error_is_raised_by_close() -> None:
    decoder = FrameDecoder(CUP)
    good = encode_frame(CUP, cup_frame(b"\x02\x10ok"))
    assert decoder.feed(good + b"\x00\x01") == [cup_frame(b"\x02\x10ok")]
    with pytest.raises(ShortTPDU):
        decoder.close()


def test_decoder_is_unusable_after_an_error() -> None:
    decoder = FrameDecoder(Framing("ascii4"))
    with pytest.raises(BadLengthHeader):
        decoder.feed(b"abcd")
    with pytest.raises(RuntimeError):
        decoder.feed(b"0000")
    with pytest.raises(RuntimeError):
        decoder.close()


def test_close_is_idempotent_and_feed_after_close_is_a_bug() -> None:
    decoder = FrameDecoder(CUP)
    decoder.close()
    decoder.close()
    with pytest.raises(RuntimeError, match="closed"):
        decoder.feed(b"\x00\x00")


def test_offsets_stay_right_across_partial_feeds() -> None:
    framing = Framing("binary2")
    frame = encode_frame(framing, Frame(b"0123456789"))
    decoder = FrameDecoder(framing)
    stream = frame * 50 + b"\x00"
    delivered = []
    for i in range(0, len(stream), 7):
        delivered += decoder.feed(stream[i : i + 7])
    assert len(delivered) == 50
    with pytest.raises(TruncatedFrame) as info:
        decoder.close()
    assert info.value.offset == len(frame) * 50


# --- encode errors and config -----------------------------------------------------------------


def test_encode_refuses_what_the_framing_cannot_carry() -> None:
    with pytest.raises(ValueError, match="TPDU"):
        encode_frame(CUP, Frame(b"\x02\x00", b"", CUP_HEADER))
    with pytest.raises(ValueError, match="header"):
        encode_frame(CUP, Frame(b"\x02\x00", CUP_TPDU, b"\x60"))
    with pytest.raises(ValueError, match="TPDU"):
        encode_frame(Framing("binary2"), Frame(b"\x02\x00", CUP_TPDU))
    with pytest.raises(ValueError, match="max_frame"):
        encode_frame(Framing("binary2", max_frame=4), Frame(b"12345"))
    with pytest.raises(ValueError, match="does not fit"):
        encode_frame(Framing("ascii4", max_frame=20000), Frame(bytes(10000)))
    with pytest.raises(ValueError, match="does not fit"):
        encode_frame(Framing("binary2_inclusive", max_frame=70000), Frame(bytes(65534)))


def test_framing_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="unknown length header"):
        Framing("binary_2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="header_length"):
        Framing(header_length=-1)
    with pytest.raises(ValueError, match="max_frame"):
        Framing(max_frame=-1)


def test_frame_repr_shows_no_card_data() -> None:
    frame = Frame(b"0200" + PAN + b"=2512101", CUP_TPDU, CUP_HEADER)
    text = repr(frame)
    assert PAN.decode() not in text
    assert "4111" not in text
    assert "<28 bytes>" in text and "6000060000" in text and "603100311003" in text


def test_large_frame_in_one_byte_chunks_and_buffer_stays_bounded() -> None:
    # Not a timing test: checks the decoder does not keep consumed bytes around, which is what
    # would make a long-lived connection slow down (or grow) as its stream gets longer.
    framing = Framing("binary2", max_frame=60000)
    big = encode_frame(framing, Frame(bytes(range(256)) * 234))
    decoder = FrameDecoder(framing)
    frames = []
    for i in range(len(big)):
        frames += decoder.feed(big[i : i + 1])
    assert frames == [Frame(bytes(range(256)) * 234)]
    small = encode_frame(framing, Frame(b"x" * 97))
    stream = small * 5000
    largest = 0
    for i in range(0, len(stream), 1460):
        decoder.feed(stream[i : i + 1460])
        largest = max(largest, len(decoder._buf))  # private on purpose: the memory held
    assert decoder.buffered == 0
    assert largest < FrameDecoder._COMPACT_AT + 2 * 1460


# --- the real CUP vectors ---------------------------------------------------------------------

GOOD_CUP_VECTORS = {
    # file: (TPDU, fixed header, MTI)
    "0200_sale_emv_len_tpdu_hdr.hex": ("6000060000", "603100311003", "0200"),
    "0210_sale_resp_A0_len.hex": ("6000030000", "60310031fff1", "0210"),
    "0800_signin_len005B.hex": ("6000030000", "603100311312", "0800"),
    "0800_signin_len0063.hex": ("6000490000", "603200320501", "0800"),
}
NOLEN_CUP_VECTORS = {
    "0200_sale_emv_nolen.hex": ("6000030000", "60310031fff1", "0200"),
    "0800_nolen_hdr6022.hex": ("6000030000", "602200000000", "0800"),
}


def load_hex(vectors: Path, name: str) -> bytes:
    return bytes.fromhex((vectors / "cup-pos" / name).read_text())


@pytest.mark.parametrize("name", sorted(GOOD_CUP_VECTORS))
def test_cup_vectors_with_length_read_cleanly(vectors: Path, name: str) -> None:
    data = load_hex(vectors, name)
    frame = read_frame(CUP, data)
    tpdu, header, mti = GOOD_CUP_VECTORS[name]
    assert (frame.tpdu.hex(), frame.header.hex(), frame.message[:2].hex()) == (tpdu, header, mti)
    assert len(frame.message) == len(data) - 2 - 11
    assert encode_frame(CUP, frame) == data
    [again] = FrameDecoder(CUP).feed(data)
    assert again == frame


@pytest.mark.parametrize("name", sorted(NOLEN_CUP_VECTORS))
def test_cup_vectors_without_length_read_as_datagrams(vectors: Path, name: str) -> None:
    frame = read_frame(Framing("none", tpdu=True, header_length=6), load_hex(vectors, name))
    tpdu, header, mti = NOLEN_CUP_VECTORS[name]
    assert (frame.tpdu.hex(), frame.header.hex(), frame.message[:2].hex()) == (tpdu, header, mti)


def test_cup_vectors_as_one_stream_in_odd_chunks(vectors: Path) -> None:
    blobs = [load_hex(vectors, name) for name in sorted(GOOD_CUP_VECTORS)]
    stream = b"".join(blobs)
    decoder = FrameDecoder(CUP)
    frames = []
    for i in range(0, len(stream), 13):
        frames += decoder.feed(stream[i : i + 13])
    decoder.close()
    assert frames == [read_frame(CUP, blob) for blob in blobs]


def test_cup_vector_with_a_bad_length_is_a_truncated_frame(vectors: Path) -> None:
    data = load_hex(vectors, "0210_sale_resp_00_badlen.hex")
    with pytest.raises(TruncatedFrame) as info:
        read_frame(CUP, data)
    assert (info.value.expected, info.value.received, info.value.offset) == (170, 142, 0)

    decoder = FrameDecoder(CUP)
    assert decoder.feed(data) == []
    assert decoder.buffered == len(data)
    with pytest.raises(TruncatedFrame) as info:
        decoder.close()
    assert (info.value.expected, info.value.received, info.value.offset) == (170, 142, 0)


# --- properties -------------------------------------------------------------------------------

PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def framings(draw: st.DrawFn, lengths: list[str] = STREAM_HEADERS) -> Framing:
    return Framing(
        length=draw(st.sampled_from(lengths)),  # type: ignore[arg-type]
        tpdu=draw(st.booleans()),
        header_length=draw(st.integers(0, 8)),
        max_frame=draw(st.integers(0, 600)),
    )


@st.composite
def frames_for(draw: st.DrawFn, framing: Framing) -> Frame:
    if framing.max_frame < framing.overhead or draw(st.integers(0, 9)) == 0:
        return Frame(b"")  # keep-alive
    tpdu = draw(st.binary(min_size=5, max_size=5)) if framing.tpdu else b""
    header = draw(st.binary(min_size=framing.header_length, max_size=framing.header_length))
    message = draw(st.binary(max_size=framing.max_frame - framing.overhead))
    return Frame(message, tpdu, header)


@st.composite
def framed_streams(draw: st.DrawFn) -> tuple[Framing, list[Frame], list[bytes]]:
    framing = draw(framings())
    frames = draw(st.lists(frames_for(framing), max_size=8))
    stream = b"".join(encode_frame(framing, f) for f in frames)
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    bounds = [0, *cuts, len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    return framing, frames, chunks


@PROPERTY_SETTINGS
@given(framed_streams())
def test_any_chunking_yields_the_same_frames(case: tuple[Framing, list[Frame], list[bytes]]):
    framing, frames, chunks = case
    decoder = FrameDecoder(framing)
    decoded = []
    for chunk in chunks:
        decoded += decoder.feed(chunk)
    decoder.close()
    assert decoded == frames


@PROPERTY_SETTINGS
@given(framings(), st.lists(st.binary(max_size=40), max_size=10))
def test_random_bytes_raise_only_framing_errors(framing: Framing, chunks: list[bytes]):
    decoder = FrameDecoder(framing)
    try:
        for chunk in chunks:
            for frame in decoder.feed(chunk):
                assert isinstance(frame, Frame)
        decoder.close()
    except FramingError as exc:
        assert exc.offset >= 0
    for chunk in chunks:  # one-shot reads of the same bytes must behave as well
        with contextlib.suppress(FramingError):
            read_frame(framing, chunk)


@st.composite
def framing_and_frame(draw: st.DrawFn) -> tuple[Framing, Frame]:
    framing = draw(framings(lengths=list(LENGTH_HEADERS)))
    return framing, draw(frames_for(framing))


@PROPERTY_SETTINGS
@given(framing_and_frame())
def test_encode_then_read_round_trip(case: tuple[Framing, Frame]):
    framing, frame = case
    wire = encode_frame(framing, frame)
    assert read_frame(framing, wire) == frame
    if framing.length != "none":
        assert len(wire) == HEADER_SIZE[framing.length] + len(frame.tpdu + frame.header) + len(
            frame.message
        )
