"""Fields the gateway does not need never cost a transaction (real sockets).

Found by review: a terminal's reversal, or an acquirer's answer, carrying one field the codec
cannot read (a Latin-1 merchant name, a corrupt RRN) was dropped whole as malformed.
"""

from __future__ import annotations

from typing import Any

from gateway.wire.codec import Codec, Message
from gateway.wire.framing import Frame

from .harness import StackFactory, auth, events
from .test_terminal_side import terminal_reversal

# A merchant name with a Latin-1 letter: "CAFÉ DE LA GARE". The dialect's DE 43 is ASCII, so
# the codec cannot decode it; a gateway that never needs DE 43 must not care.
PLACEHOLDER = "CAF#"
LATIN1 = b"CAF\xc9"
MERCHANT_NAME = f"{PLACEHOLDER} DE LA GARE".ljust(40)


def _with_latin1_merchant(codec: Codec, mti: str, fields: dict[str, str]) -> bytes:
    message = codec.encode(mti, {**fields, "43": MERCHANT_NAME})
    assert message.count(PLACEHOLDER.encode()) == 1
    return message.replace(PLACEHOLDER.encode(), LATIN1)


async def _exchange(terminal: Any, message: bytes, timeout: float = 3.0) -> Message | None:
    terminal.send_frame(Frame(message, terminal.tpdu, terminal.header))
    frame = await terminal.receive(timeout=timeout)
    return None if frame is None else terminal.codec.decode(frame.message)


async def test_terminal_reversal_with_an_undecodable_field_it_does_not_need_still_releases_the_hold(
    make_stack: StackFactory,
) -> None:
    """A sale with a Latin-1 merchant name (DE 43) is approved and delivered: the gateway never
    decodes DE 43 of a sale. The card is pulled, the terminal sends its 0400, a copy of the
    sale's fields. Had the shell decoded every field of a reversal (426dfad did), DE 43 would
    fail and the whole 0400 be dropped as malformed: nothing upstream, no answer, the
    cardholder's funds held."""
    stack = await make_stack()
    await stack.links_up()
    terminal = await stack.terminal()
    codec = terminal.codec
    original = auth(40, amount=4200)
    approval = await _exchange(terminal, _with_latin1_merchant(codec, "0200", original))
    assert approval is not None and approval.mti == "0210" and approval.get("39") == "00"
    assert len(stack.holds()) == 1 and not stack.holds()[0].released

    reversal = terminal_reversal(original, 41)
    answer = await _exchange(terminal, _with_latin1_merchant(codec, "0400", reversal))
    errors = stack.service.counters.terminal_format_errors
    assert answer is not None and answer.mti == "0410", (
        f"the terminal's reversal got no answer (format errors: {errors}, "
        f"0400s at the acquirer: {stack.requests_seen('0400')})"
    )
    assert stack.holds()[0].released, "the hold the terminal asked to release is still there"


async def test_an_approval_with_an_undecodable_rrn_still_reaches_its_terminal(
    make_stack: StackFactory,
) -> None:
    """The acquirer approves; its 0210 carries a DE 37 the ASCII codec cannot decode (a byte
    >= 0x80). DE 37 is only a tie-breaker for the core: read when needed (LazyFields), an
    unreadable one is absent. Decoded with the key (as bd91c6c did), the whole response was
    dropped as malformed: the terminal declined (91) for a sale the issuer approved."""
    stack = await make_stack(**{"acquirer.timeout": 1.0})
    await stack.links_up()
    simulator = stack.simulator
    deliver = simulator._deliver
    sim_codec = simulator._codec

    def corrupt_rrn(connection: Any, decision: Any, frame: Frame) -> None:
        view = sim_codec.scan(frame.message)
        if view.mti == "0210" and view.has("37"):
            _, start, end, _ = view._spans["37"]
            message = frame.message[:start] + b"\xff" * (end - start) + frame.message[end:]
            frame = Frame(message, frame.tpdu, frame.header)
        deliver(connection, decision, frame)

    simulator._deliver = corrupt_rrn  # type: ignore[method-assign]
    terminal = await stack.terminal()
    # Raw frames: the terminal reads DE 39 only (its own decoder would trip on DE 37 too).
    terminal.send_frame(Frame(terminal.codec.encode("0200", auth(50)), b"", b""))
    frame = await terminal.receive(timeout=3.0)
    assert frame is not None, "no answer at all"
    code = terminal.codec.scan(frame.message).get("39")
    format_errors = stack.service.counters.acquirer_format_errors
    assert code == "00", (
        f"the terminal got {code} for an approved sale "
        f"(acquirer format errors: {format_errors}, events: {events(stack).kinds()})"
    )
