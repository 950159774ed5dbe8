"""The core fed exactly what the service extracts (FieldsRead) from messages the real codec
encodes, and what the journal then keeps of a terminal's reversal."""

from __future__ import annotations

from gateway.core.commands import ForwardToAcquirer
from gateway.core.events import FieldsRead
from gateway.journal.rows import REVERSAL_COLUMNS, reversal_row
from gateway.wire.codec import Codec
from gateway.wire.dialect import get_dialect

from .helpers import Harness, answer, of_type, reversal_records, to_terminal

PAN = "5432109876543212"
CVC2 = "123"
# Mastercard DE 48: transaction category code, then TLV sub-elements (tag 2, length 2, value);
# sub-element 92 is the CVC 2 the cardholder typed in.
DE48_WITH_CVC2 = f"R92{len(CVC2):02d}{CVC2}"


def _extracted(codec: Codec, fields_read: FieldsRead, mti: str, fields: dict[str, str]):
    """What GatewayService.on_terminal_frame hands the core for this message."""
    view = codec.scan(codec.encode(mti, fields))
    if mti[1] == "4":
        return view.fields(fields_read.terminal_reversal)
    return view.fields(fields_read.request)


def test_a_terminal_reversal_never_journals_the_cvc2_its_private_data_carries() -> None:
    """iso87-ebcdic is "ISO 8583:1987 in EBCDIC as Mastercard sends it", where DE 48
    sub-element 92 carries CVC 2. A terminal builds its 0400 from the sale's fields, DE 48
    included. Had the shell handed the core every field of a terminal's reversal but the
    dialect's sensitive ones (426dfad did; found by review), the core would journal the CVC 2
    with the reversal, on disk while it is open. reversal-rules.md: card verification values
    are "never stored after the response"."""
    dialect = get_dialect("iso87-ebcdic")
    codec = Codec(dialect)
    fields_read = FieldsRead.of(dialect)
    sale = {
        "2": PAN, "3": "000000", "4": "000000001000", "7": "0908064519", "11": "003316",
        "12": "064519", "13": "0908", "14": "2512", "22": "012", "37": "325106000001",
        "41": "TERM0001", "42": "MERCHANT0000001", "48": DE48_WITH_CVC2, "49": "978",
    }  # fmt: skip
    h = Harness(dialect=dialect)
    h.request(_extracted(codec, fields_read, "0200", sale))
    got = h.respond(answer(sale))
    h.delivered(to_terminal(got)[0].delivery_ref)

    reversal = {k: v for k, v in sale.items() if k not in ("7", "12", "13")}
    reversal.update({"7": "0908064601", "11": "003317", "39": "17"})
    reversal["90"] = "0200" + sale["11"] + sale["7"] + "0" * 22
    out = h.request(_extracted(codec, fields_read, "0400", reversal), mti="0400")
    assert of_type(out, ForwardToAcquirer), "the terminal's reversal was not tied and forwarded"
    [record] = reversal_records(out)[:1]
    row = dict(zip(REVERSAL_COLUMNS, reversal_row(record), strict=True))
    journaled = sorted(record.fields, key=int)
    assert DE48_WITH_CVC2 not in row["fields"], f"journaled with the reversal: {journaled}"
