"""Keys that tie messages together: duplicates, repeats and response matching.

All keys are plain tuples so that every lookup is one dict access. Absent fields are part of a
key as ``None``: two requests are duplicates when they carry the same duplicate fields with the
same values ("on the fields present").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

FieldValues = tuple[str | None, ...]
DuplicateKey = tuple[str | None, ...]  # (base MTI, *duplicate field values)
RepeatKey = tuple[str, str | None, str | None]  # (base MTI, DE 41, DE 11)


def values_of(fields: Mapping[str, str], names: Sequence[str]) -> FieldValues:
    return tuple(map(fields.get, names))


def duplicate_key(base: str, fields: Mapping[str, str], names: Sequence[str]) -> DuplicateKey:
    """Same request sent twice: same request class (``base``: the MTI without its repeat
    flag) and the same duplicate fields."""
    return (base, *map(fields.get, names))


def repeat_key(base: str, fields: Mapping[str, str]) -> RepeatKey:
    """A repeat (0101/0201) names its original by terminal id and STAN; DE 7 may be new."""
    return (base, fields.get("41"), fields.get("11"))


def values_agree(ours: FieldValues, theirs: FieldValues) -> bool:
    """Equal on every field both sides carry: an untidy message without DE 41 still matches."""
    for mine, other in zip(ours, theirs, strict=True):
        if mine is not None and other is not None and mine != other:
            return False
    return True
