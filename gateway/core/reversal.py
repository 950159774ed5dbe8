"""What a reversal carries: the fields kept from the original, DE 90, the reversal message.

Pure functions over field dicts (ISO 8583:1987 usage, reversal-rules.md "Building the
reversal"). Track data, PIN blocks, CVVs and ICC data are never copied, whatever a dialect's
``copy_fields`` say: only the PAN is taken from track 2 when the original had no DE 2.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from gateway.wire.dialect import Dialect, ReversalRules
from gateway.wire.masking import DEFAULT_SENSITIVE_FIELDS

# Never kept for a reversal nor journaled, on top of the dialect's own sensitive fields: the
# fields never shown (track 2, track 3, track 1, PIN block, ICC data; DE 55 named tags are not
# supported), one set for masking, reversals and the journal.
NEVER_COPIED = DEFAULT_SENSITIVE_FIELDS

# Kept from the original besides the dialect's copy_fields: its STAN and transmission time
# and the institution ids, all needed for DE 90.
ORIGINAL_DATA_FIELDS = ("7", "11", "32", "33")

_TRACK2_SEPARATORS = ("=", "D", "d")
_SHORTEST_PAN = 12
_LONGEST_PAN = 19


def pan_from_track2(track2: str) -> str | None:
    """The PAN at the start of track 2 data (``;PAN=YYMM...`` or BCD ``PANDYYMM...``).

    None when what precedes the separator is not a plausible PAN. Never returns track data.
    """
    text = track2.lstrip(";")
    end = len(text)
    for separator in _TRACK2_SEPARATORS:
        at = text.find(separator)
        if at != -1 and at < end:
            end = at
    pan = text[:end]
    if _SHORTEST_PAN <= len(pan) <= _LONGEST_PAN and pan.isascii() and pan.isdigit():
        return pan
    return None


def source_field_names(dialect: Dialect) -> tuple[str, ...]:
    """The fields an authorization keeps for its reversal: the dialect's copy fields and
    DE 7/11/32/33 of the original (for DE 90), never anything sensitive. Also the fields that
    match its answer, its duplicates and their decline: after a restart the request is
    rebuilt from them, so that its late answer and its resends are still recognised."""
    never = NEVER_COPIED | dialect.sensitive_fields
    names = dict.fromkeys(
        (
            *dialect.reversal.copy_fields,
            *ORIGINAL_DATA_FIELDS,
            *dialect.match_fields,
            *dialect.duplicate_fields,
            *dialect.response_echo_fields,
        )
    )
    return tuple(name for name in names if name not in never)


def reversal_source_fields(
    fields: Mapping[str, str],
    dialect: Dialect,
    acquirer_stan: str | None,
    names: tuple[str, ...] | None = None,
) -> dict[str, str]:
    """What an authorization keeps (and journals) so that it can be reversed later.

    The fields of ``source_field_names`` that are present (pass ``names`` precomputed on a
    hot path), DE 11 as the acquirer saw it (``acquirer_stan`` under STAN rewrite), and DE 2
    taken from track 2 when only track 2 came. Nothing sensitive.
    """
    if names is None:
        names = source_field_names(dialect)
    kept = {name: fields[name] for name in names if name in fields}
    if acquirer_stan is not None:
        kept["11"] = acquirer_stan
    _add_pan_from_track2(kept, fields, names)
    return kept


def _add_pan_from_track2(
    message: dict[str, str], fields: Mapping[str, str], wanted: Collection[str]
) -> None:
    """DE 2 from track 2 (DE 35) when the message wants DE 2 and only track 2 came."""
    if "2" not in message and "2" in wanted and "35" in fields:
        pan = pan_from_track2(fields["35"])
        if pan is not None:
            message["2"] = pan


def _right_justified(value: str | None, width: int) -> str:
    """Zero-filled to ``width``; a longer value keeps its rightmost digits (n-fixed field)."""
    text = value or ""
    return text.rjust(width, "0")[-width:]


def original_data_elements(
    mti: str,
    stan: str | None,
    transmission_time: str | None,
    acquirer_id: str | None,
    forwarding_id: str | None,
) -> str:
    """DE 90 (n42): original MTI 4, DE 11 6, DE 7 10 (zeros if absent), DE 32 11, DE 33 11."""
    return (
        _right_justified(mti, 4)
        + _right_justified(stan, 6)
        + _right_justified(transmission_time, 10)
        + _right_justified(acquirer_id, 11)
        + _right_justified(forwarding_id, 11)
    )


def reversal_message_fields(
    original_mti: str,
    source: Mapping[str, str],
    rules: ReversalRules,
    *,
    stan: str,
    reason_code: str,
    approval_code: str | None,
) -> dict[str, str]:
    """The reversal's data elements except DE 7, which each attempt sets to its send time.

    ``source`` is what ``reversal_source_fields`` kept from the original.
    """
    message = {name: source[name] for name in rules.copy_fields if name in source}
    message["11"] = stan
    message["39"] = reason_code
    if approval_code and rules.include_approval_code:
        message["38"] = approval_code
    if rules.original_data == "de90":
        message["90"] = original_data_elements(
            original_mti, source.get("11"), source.get("7"), source.get("32"), source.get("33")
        )
    for name in NEVER_COPIED.intersection(message):
        del message[name]
    return message


def terminal_reversal_fields(
    fields: Mapping[str, str],
    dialect: Dialect,
    *,
    stan: str,
    reason_code: str,
    original_data: str | None,
) -> dict[str, str]:
    """The data elements of a terminal's own reversal, kept so the gateway can repeat it.

    The terminal's fields minus card secrets and DE 7 (each attempt sets its own), DE 11 as
    sent to the acquirer, DE 90 as rewritten for the acquirer (``original_data``) if given.
    """
    never = NEVER_COPIED | dialect.sensitive_fields
    message = {name: value for name, value in fields.items() if name not in never}
    message.pop("7", None)
    _add_pan_from_track2(message, fields, dialect.reversal.copy_fields)
    message["11"] = stan
    message.setdefault("39", reason_code)
    if original_data is not None:
        message["90"] = original_data
    return message
