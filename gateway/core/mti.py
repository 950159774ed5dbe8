"""Message type indicators: class, function, repeats, and the response MTI of a request.

An MTI is four digits: version, class (1 authorization, 2 financial, 4 reversal, 8 network
management), function (0 request, 1 response, 2 advice, 3 advice response, ...) and origin
(0 acquirer, 1 acquirer repeat, 2 issuer, 3 issuer repeat, ...). An odd origin digit marks a
repeat: the same message sent again because no answer came.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

REVERSAL_CLASS = "4"


def is_valid_mti(mti: str) -> bool:
    return len(mti) == 4 and mti.isascii() and mti.isdigit()


def is_response(mti: str) -> bool:
    """Responses and advice acknowledgements have an odd function digit (0110, 0410, 0430)."""
    return int(mti[2]) % 2 == 1


def is_repeat(mti: str) -> bool:
    """0101, 0201, 0401, 0421: the sender repeats a message that got no answer."""
    return int(mti[3]) % 2 == 1


def base_mti(mti: str) -> str:
    """The MTI with the repeat flag cleared: 0201 -> 0200, 0421 -> 0420."""
    return mti[:3] + str(int(mti[3]) & ~1)


def response_mti(mti: str) -> str:
    """The MTI that answers a request: function digit + 1, repeat flag cleared (0201 -> 0210)."""
    function = int(mti[2])
    if function % 2:
        raise ValueError(f"MTI {mti} is a response, it has no response MTI")
    return mti[:2] + str(function + 1) + str(int(mti[3]) & ~1)


def request_mti(mti: str) -> str:
    """The MTI a response answers: function digit - 1 (0110 -> 0100, 0430 -> 0420)."""
    function = int(mti[2])
    if not function % 2:
        raise ValueError(f"MTI {mti} is a request, it answers nothing")
    return mti[:2] + str(function - 1) + mti[3]


def repeat_mti(mti: str) -> str:
    """The MTI of a repeat of this message: 0400 -> 0401, 0420 -> 0421."""
    return mti[:3] + str(int(mti[3]) | 1)


def is_reversal(mti: str) -> bool:
    """0400/0401/0420/0421: a reversal request or reversal advice (not their responses)."""
    return mti[1] == REVERSAL_CLASS and not is_response(mti)


def attempt_mti(mti: str, attempt: int) -> str:
    """Attempt 1 goes out as the base MTI, every later attempt as a repeat (0400, 0401, ...)."""
    return base_mti(mti) if attempt <= 1 else repeat_mti(mti)


@dataclass(frozen=True, slots=True)
class MtiInfo:
    """Everything the core asks about one MTI, worked out once per distinct MTI."""

    mti: str
    valid: bool
    response: bool = False
    repeat: bool = False
    reversal: bool = False
    base: str = ""
    response_mti: str = ""  # empty for responses


@cache
def classify(mti: str) -> MtiInfo:
    if not is_valid_mti(mti):
        return MtiInfo(mti, valid=False)
    response = is_response(mti)
    return MtiInfo(
        mti,
        valid=True,
        response=response,
        repeat=is_repeat(mti),
        reversal=is_reversal(mti),
        base=base_mti(mti),
        response_mti="" if response else response_mti(mti),
    )
