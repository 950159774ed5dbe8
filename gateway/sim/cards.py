"""Test card data for the terminal simulator: Luhn-valid PANs, track 2, PIN blocks, EMV DE 55.

Nothing here is a real card: the BINs are the schemes' published test ranges and every other
digit is random. The data still counts as card data for the rest of the code (masked in output),
so the simulators exercise the same masking paths real traffic would.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from gateway.wire.masking import mask_pan

# Test BINs: Visa, Mastercard, UnionPay (from scheme and processor test-card lists).
TEST_BINS: tuple[str, ...] = ("476173", "541333", "622424")


def luhn_check_digit(partial: str) -> str:
    """The digit that makes ``partial + digit`` pass the Luhn check."""
    total = 0
    # Walking right to left over the partial number, every first digit is the one doubled
    # (it becomes the second from the right once the check digit is appended).
    for index, char in enumerate(reversed(partial)):
        digit = int(char)
        if index % 2 == 0:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return str((10 - total % 10) % 10)


@dataclass(frozen=True, slots=True, repr=False)
class SimCard:
    """One simulated card. ``repr`` is masked: the PAN is card data even when it is fake."""

    pan: str
    expiry: str  # YYMM (DE 14)
    service_code: str = "201"  # chip card, normal authorization

    @property
    def track2(self) -> str:
        """Track 2 equivalent data as DE 35 carries it: PAN '=' YYMM service code discretionary."""
        return f"{self.pan}={self.expiry}{self.service_code}0000000000"

    def __repr__(self) -> str:
        return f"SimCard(pan={mask_pan(self.pan)!r}, expiry='****')"


def make_card(rng: random.Random, bin_: str | None = None, length: int = 16) -> SimCard:
    prefix = bin_ or rng.choice(TEST_BINS)
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    expiry = f"{rng.randint(27, 32):02d}{rng.randint(1, 12):02d}"
    return SimCard(pan=body + luhn_check_digit(body), expiry=expiry)


def pin_block(rng: random.Random) -> str:
    """An 8-byte encrypted PIN block, as DE 52 text (upper hex). Random: nobody decrypts it."""
    return rng.randbytes(8).hex().upper()


def _tlv(tag: str, value_hex: str) -> str:
    return f"{tag}{len(value_hex) // 2:02X}{value_hex}"


# The tags that do not change from one transaction to the next, encoded once.
_EMV_FIXED = "".join(
    (
        _tlv("9F27", "80"),  # cryptogram information data: ARQC
        _tlv("9F10", "07010103A00000010A0100000000000000"),  # issuer application data
        _tlv("95", "0000000000"),  # terminal verification results
        _tlv("9C", "00"),  # transaction type: goods and services
        _tlv("82", "7C00"),  # application interchange profile
        _tlv("9F03", "000000000000"),  # amount, other
        _tlv("9F33", "E0E1C8"),  # terminal capabilities
        _tlv("9F34", "420300"),  # CVM results: online PIN
        _tlv("9F35", "22"),  # terminal type: attended, merchant
    )
)


def emv_data(rng: random.Random, amount: str, currency: str, date_yymmdd: str) -> str:
    """DE 55 (ICC data) as upper hex: the TLVs a chip terminal sends with an ARQC."""
    country = currency.rjust(4, "0")  # terminal country: the currency's country here
    return (
        _tlv("9F26", rng.randbytes(8).hex().upper())  # application cryptogram (ARQC)
        + _tlv("9F37", rng.randbytes(4).hex().upper())  # unpredictable number
        + _tlv("9F36", f"{rng.randint(1, 0xFFFF):04X}")  # application transaction counter
        + _tlv("9A", date_yymmdd)
        + _tlv("9F02", amount[-12:].rjust(12, "0"))
        + _tlv("5F2A", country)
        + _tlv("9F1A", country)
        + _EMV_FIXED
    )
