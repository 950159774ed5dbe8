"""Masking of card data for anything a person may read: logs, events, errors, CLI output.

PCI DSS allows a PAN to be shown as its first six and last four digits. Track data (DE 35,
DE 36, DE 45), PIN blocks (DE 52), card verification values and ICC data (DE 55) are never
shown at all. ``redact_text`` is the last line of defence for free text: it masks whatever
still looks like a PAN or a track after the structured masking.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

PAN_FIELDS = frozenset({"2", "34"})  # DE 2 PAN, DE 34 extended PAN: shown first 6 / last 4
# Shown nowhere, whatever the dialect says: track 2, track 3, track 1, PIN block, ICC data.
DEFAULT_SENSITIVE_FIELDS = frozenset({"35", "36", "45", "52", "55"})

_SHOWN_HEAD = 6
_SHOWN_TAIL = 4
# Shorter than the shortest PAN: first 6 + last 4 would show too much of it, so hide it all.
_SHORTEST_PAN = 13

# Track 2 as text ("=" separator) or as BCD nibbles ("D" separator): PAN, separator, expiry
# date (4 digits), then service code and discretionary data (digits, hex pad nibbles).
_TRACK2 = re.compile(r"(?<![0-9A-Fa-f])(\d{12,19})[=Dd]\d{4}[0-9A-Fa-f]*")
_DIGIT_RUN = re.compile(r"(?<!\d)\d{13,19}(?!\d)")


def mask_pan(pan: str) -> str:
    """``6224242900000113`` -> ``622424******0113``; values shorter than a PAN are all stars."""
    if len(pan) < _SHORTEST_PAN:
        return "*" * len(pan)
    hidden = len(pan) - _SHOWN_HEAD - _SHOWN_TAIL
    return pan[:_SHOWN_HEAD] + "*" * hidden + pan[-_SHOWN_TAIL:]


def removed(value: str) -> str:
    """What a sensitive field is shown as: its size only, so a reader knows it was there."""
    return f"<{len(value)} chars removed>"


def masked_fields(
    fields: Mapping[str, str], sensitive: Iterable[str] = DEFAULT_SENSITIVE_FIELDS
) -> dict[str, str]:
    """A copy safe to log: PAN fields masked, sensitive fields replaced, the rest redacted."""
    hidden = frozenset(sensitive) | DEFAULT_SENSITIVE_FIELDS
    shown: dict[str, str] = {}
    for name, value in fields.items():
        if name in hidden:
            shown[name] = removed(value)
        elif name in PAN_FIELDS:
            shown[name] = mask_pan(value)
        else:
            shown[name] = redact_text(value)
    return shown


def luhn_ok(digits: str) -> bool:
    """The mod-10 check digit every payment card number carries."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _mask_track(match: re.Match[str]) -> str:
    return mask_pan(match.group(1)) + "=<track data removed>"


def _mask_run(match: re.Match[str]) -> str:
    run = match.group(0)
    return mask_pan(run) if luhn_ok(run) else run


def redact_text(text: str) -> str:
    """Mask anything in free text that looks like track 2 data or a PAN (13-19 digits, Luhn)."""
    text = _TRACK2.sub(_mask_track, text)
    return _DIGIT_RUN.sub(_mask_run, text)
