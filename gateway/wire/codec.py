"""Codec: ISO 8583 message bytes <-> Message, wrapping pyiso8583, plus a fast field scanner.

API CONTRACT (implementation pending):

    class CodecError(ValueError): field: str, position: int, reason: str   # no card data in str()

    @dataclass(frozen=True, slots=True, repr=False)
    class Message:
        mti: str
        fields: Mapping[str, str]       # "2".."128" -> decoded text (binary as upper hex)
        raw: bytes = b""                # the bytes it was decoded from (forwarded unchanged)
        def get(self, field: str) -> str | None
        def masked(self) -> dict[str, str]   # PAN first6/last4, sensitive fields dropped
        __repr__ / __str__ -> masked

    class FieldView:                    # result of Codec.scan: positions only, decode on demand
        mti: str
        message: bytes
        def get(self, field: str) -> str | None
        def has(self, field: str) -> bool
        def fields(self, names: Iterable[str]) -> dict[str, str]      # present ones only
        def replace(self, field: str, value: str) -> bytes            # re-encode one field

    class Codec:
        def __init__(self, dialect: Dialect) -> None
        def decode(self, message: bytes) -> Message
        def encode(self, mti: str, fields: Mapping[str, str]) -> bytes
        def scan(self, message: bytes) -> FieldView     # >= 5x faster than decode
"""
