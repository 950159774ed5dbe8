"""An answer whose echoed fields cannot be read, while two requests share its key.

The core fed exactly what GatewayService.on_link_message hands it: a LazyFields over a message
the real codec encoded, a field the shell cannot decode handed as UNREADABLE (found by review:
read as absent, it agreed with the request in flight, whose terminal got another sale's answer).
"""

from __future__ import annotations

from gateway.core.commands import ForwardToTerminal
from gateway.core.events import UNREADABLE, AcquirerResponse, FieldsRead
from gateway.wire.codec import Codec, LazyFields
from gateway.wire.dialect import get_dialect
from gateway.wire.framing import Frame

from .helpers import Harness, forwards, of_type, sale

DIALECT = get_dialect("iso87-binary")
CODEC = Codec(DIALECT)
READ = FieldsRead.of(DIALECT)


def _as_the_shell_hands_it(
    h: Harness, fields: dict[str, str], corrupt: str | None = None
) -> tuple[Frame, list[ForwardToTerminal]]:
    """An 0210 from the acquirer; ``corrupt``: a value whose last byte becomes 0xFF on the wire
    (not ASCII: the codec cannot decode that field, so LazyFields reads it as absent)."""
    message = CODEC.encode("0210", fields)
    if corrupt is not None:
        assert message.count(corrupt.encode()) == 1
        message = message.replace(corrupt.encode(), corrupt[:-1].encode() + b"\xff")
    frame = Frame(message)
    lazy = LazyFields(CODEC.scan(message), READ.response, READ.response_later, UNREADABLE)
    out = h.core.handle(AcquirerResponse(1, "0210", lazy, frame), h.now)
    return frame, of_type(out, ForwardToTerminal)


def test_a_late_answer_whose_echoed_rrn_cannot_be_read_is_not_given_to_the_stans_next_user() -> (
    None
):
    """Sale A times out (declined to its terminal, reversed); the terminal reuses the STAN for
    sale B (another amount, time and RRN), which now waits. A's late approval arrives echoing
    A's RRN (DE 37), the only thing that tells the two apart by more than the key; on the wire
    DE 37 has one byte that is not ASCII.

    With DE 37 readable the core sees the contradiction and treats the answer as A's late one
    (tests/core/test_engine_duplicates.py). Unreadable, it must still not go to B: taken as A's
    late answer, a wrong guess costs B a timeout and a reversal; given to B, B's terminal would
    hold A's approval, and B's own answer would find B already answered (if the issuer
    declined B, goods handed over on another sale's approval)."""
    h = Harness(dialect=DIALECT)
    first = sale("003316", de37="325106000001", de52=None, de55=None)
    h.request(first, conn=1)
    h.advance(15.0)  # A timed out: declined, its reversal sent
    second = sale(
        "003316", de4="000000005000", de7="0908064600", de12="064600",
        de37="325106000002", de52=None, de55=None,
    )  # fmt: skip
    assert forwards(h.request(second, conn=2))

    late = {"11": "003316", "41": "TERM0001", "37": first["37"], "38": "A1B2C3", "39": "00"}
    # Control: readable, it is A's late answer and B's terminal gets nothing.
    h2 = Harness(dialect=DIALECT)
    h2.request(first, conn=1)
    h2.advance(15.0)
    h2.request(second, conn=2)
    _, delivered = _as_the_shell_hands_it(h2, late)
    assert not delivered, "control: a readable DE 37 already goes to B's terminal"

    _, delivered = _as_the_shell_hands_it(h, late, corrupt=first["37"])
    to_b = [c for c in delivered if c.conn_id == 2]
    assert not to_b, (
        "sale B's terminal was handed sale A's late approval (A's RRN unreadable, so it "
        f"contradicted nothing): {to_b}"
    )
