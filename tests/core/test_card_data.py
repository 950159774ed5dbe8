"""Card secrets never reach the journal or notifications, on any path that persists."""

from __future__ import annotations

from gateway.core.commands import Notify
from gateway.core.records import AuthorizationRecord
from gateway.core.reversal import original_data_elements

from .helpers import (
    ICC,
    PAN,
    PIN_BLOCK,
    TRACK2,
    Harness,
    answer,
    records,
    sale,
    sent_reversals,
    to_terminal,
)

SECRET_FIELDS = ("35", "36", "45", "52", "55")


def card_present_sale(stan: str) -> dict[str, str]:
    """Track 2 only (no DE 2), with PIN block and ICC data, as a chip-and-PIN sale arrives."""
    fields = sale(stan, de2=None)
    fields["35"] = TRACK2
    return fields


def test_no_path_journals_track_pin_or_icc_data() -> None:
    h = Harness()
    timed_out = card_present_sale("000001")
    h.request(timed_out)
    h.advance(15)  # timeout reversal
    undeliverable = card_present_sale("000002")
    h.request(undeliverable, conn=2)
    h.closed(2)
    h.respond(answer(undeliverable))
    delivered = card_present_sale("000003")
    h.request(delivered, conn=3)
    ref = to_terminal(h.respond(answer(delivered)))[0].delivery_ref
    h.delivered(ref)
    reversal = {k: delivered[k] for k in ("3", "4", "35", "41", "42", "49", "52", "55")}
    reversal.update(
        {"11": "000004", "90": original_data_elements("0200", "000003", "0908064519", "200", "")}
    )
    h.request(reversal, conn=3, mti="0400")  # the terminal's own reversal, track data and all
    h.link_down(1)
    in_flight = card_present_sale("000005")
    h.link_up(1)
    h.request(in_flight, conn=5)
    h.link_down(1)  # link lost
    h.link_up(1)
    h.run_until(h.now + 60)
    persisted = records(h.log)
    assert len(persisted) > 10
    for record in persisted:
        mapping = (
            record.reversal_fields if isinstance(record, AuthorizationRecord) else record.fields
        )
        assert not set(mapping) & set(SECRET_FIELDS), record
        text = repr(record)
        for secret in (TRACK2, "=2512", PIN_BLOCK, ICC):
            assert secret not in text, (secret, type(record).__name__)
    # the PAN was kept where a reversal needs it, taken from track 2
    assert any(PAN in s.fields.get("2", "") for s in sent_reversals(h.log))
    for notice in (c for c in h.log if isinstance(c, Notify)):
        text = repr(notice.data)
        assert PAN not in text and TRACK2 not in text and PIN_BLOCK not in text, notice.kind
