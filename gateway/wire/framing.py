"""Sans-IO framing: length headers, TPDU and fixed headers around an ISO 8583 message.

API CONTRACT (implementation pending):

    LengthHeader = Literal["binary2", "binary2_inclusive", "ascii4", "hex4", "bcd2", "binary4", "none"]

    @dataclass(frozen=True, slots=True)
    class Framing:
        length: LengthHeader = "binary2"
        tpdu: bool = False          # 5-byte TPDU after the length
        header_length: int = 0      # fixed message header after the TPDU (CUP: 6)
        max_frame: int = 8192       # largest accepted frame body (bytes after the length)

    @dataclass(frozen=True, slots=True)
    class Frame:
        message: bytes              # the ISO 8583 message: MTI onwards
        tpdu: bytes = b""           # 5 bytes or empty
        header: bytes = b""         # header_length bytes or empty
        is_keepalive -> bool        # a zero-length frame

    class FrameDecoder:             # one per connection
        def __init__(self, framing: Framing) -> None
        def feed(self, data: bytes) -> list[Frame]   # any chunking; raises FramingError
        def close(self) -> None     # end of stream; raises TruncatedFrame if bytes are buffered
        buffered: int               # bytes held for an incomplete frame

    def encode_frame(framing: Framing, frame: Frame) -> bytes
    def split_frame(framing: Framing, body: bytes) -> Frame   # body = after the length header
    def read_frame(framing: Framing, data: bytes) -> Frame    # one whole frame incl. length
    def swap_tpdu(tpdu: bytes) -> bytes                       # response TPDU

    class FramingError(ValueError): offset: int              # where in the stream
    class OversizedFrame(FramingError): length: int, limit: int
    class BadLengthHeader(FramingError): header: bytes        # non-digit ASCII, bad BCD/hex
    class TruncatedFrame(FramingError): expected: int, received: int
    class ShortTPDU(FramingError)                             # body too short for TPDU/header
"""
