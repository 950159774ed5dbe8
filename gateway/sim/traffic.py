"""What a simulated POS terminal sends: realistic 0100/0200 requests, and its own reversals.

Two styles of terminal traffic:
- ``iso87``: ISO 8583:1987 as most acquirers take it (DE 7 transmission time, DE 12/13 local
  time, DE 37 RRN made by the terminal, reversals with a new STAN and DE 90);
- ``cup``: China UnionPay POS (no DE 7/12/13/37 in requests, DE 60 with message type and
  batch, DE 26/53 with a PIN, TPDU and 6-byte header, reversals with the original's STAN).

Entry modes are mixed: chip (DE 35 + DE 52 PIN block + DE 55 ICC data), swipe (DE 35, some
without DE 2) and manual key entry (DE 2 + DE 14). All data comes from a seeded
``random.Random``, so a run can be repeated; the cards are test cards (cards.py).
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from gateway.core.clock import transmission_time
from gateway.sim.cards import SimCard, emv_data, make_card, pin_block
from gateway.sim.ledger import pan_of
from gateway.wire.dialect import Dialect

Style = Literal["iso87", "cup"]

CUP_TPDU = bytes.fromhex("6000060000")  # id 60, destination 0006, source 0000
CUP_HEADER = bytes.fromhex("603100311003")  # application 60, version 31, software 311003
ISO87_TPDU = bytes.fromhex("6000010000")

CARDS_PER_TERMINAL = 8
EntryMode = Literal["chip", "swipe", "manual"]


def dialect_style(dialect: Dialect) -> Style:
    """CUP terminals reverse with the original's STAN; that and the name tell the style."""
    if dialect.name.lower().startswith("cup") or dialect.reversal.stan == "original":
        return "cup"
    return "iso87"


def default_envelope(dialect: Dialect) -> tuple[bytes, bytes]:
    """TPDU and fixed header a terminal puts in front of its messages for this dialect."""
    cup = dialect_style(dialect) == "cup"
    tpdu = (CUP_TPDU if cup else ISO87_TPDU) if dialect.framing.tpdu else b""
    length = dialect.framing.header_length
    header = CUP_HEADER if length == len(CUP_HEADER) else bytes(length)
    return tpdu, header


@dataclass(frozen=True, slots=True)
class _Clock:
    """Date and time fields of one second, as a terminal formats them."""

    second: int
    transmission: str  # DE 7, UTC MMDDhhmmss
    local_time: str  # DE 12, hhmmss
    local_date: str  # DE 13, MMDD
    rrn_prefix: str  # DE 37 start: julian date (yddd) + hour
    emv_date: str  # tag 9A, YYMMDD

    @classmethod
    def at(cls, now: float) -> _Clock:
        utc = time.gmtime(now)
        local = time.localtime(now)
        return cls(
            second=int(now),
            transmission=time.strftime("%m%d%H%M%S", utc),
            local_time=time.strftime("%H%M%S", local),
            local_date=time.strftime("%m%d", local),
            rrn_prefix=f"{utc.tm_year % 10}{utc.tm_yday:03d}{utc.tm_hour:02d}",
            emv_date=time.strftime("%y%m%d", utc),
        )


@dataclass(frozen=True, slots=True)
class TrafficMix:
    """Shares and ranges of the generated traffic."""

    authorization_share: float = 0.3  # 0100 (pre-authorization); the rest 0200 (sale)
    amount_min: int = 100  # DE 4, minor units
    amount_max: int = 50_000
    chip_share: float = 0.5
    swipe_share: float = 0.3  # the rest is manual key entry
    track_only_share: float = 0.2  # swipes that carry DE 35 without DE 2
    currency: str | None = None  # DE 49; default 840 (iso87) or 156 (cup)


class RequestBuilder:
    """Builds one terminal's requests (fields as codec text: binary fields as upper hex)."""

    def __init__(
        self,
        dialect: Dialect,
        terminal_id: str,
        merchant_id: str,
        rng: random.Random,
        *,
        mix: TrafficMix | None = None,
        style: Style | None = None,
    ) -> None:
        self.dialect = dialect
        self.terminal_id = terminal_id
        self.merchant_id = merchant_id
        self.style: Style = style or dialect_style(dialect)
        self.mix = mix or TrafficMix()
        self.rng = rng
        self.currency = self.mix.currency or ("156" if self.style == "cup" else "840")
        self.cards: tuple[SimCard, ...] = tuple(make_card(rng) for _ in range(CARDS_PER_TERMINAL))
        track_spec = dialect.spec.get("35", {})
        # BCD track 2 (CUP) separates with the nibble D; text track 2 with '='.
        self._track_separator = "D" if track_spec.get("data_enc") == "b" else "="
        self.batch = rng.randint(1, 999)
        self._clock_cache = _Clock.at(0.0)

    def _clock(self, now: float) -> _Clock:
        """The time fields of this second (formatting them is a good share of a build)."""
        if int(now) != self._clock_cache.second:
            self._clock_cache = _Clock.at(now)
        return self._clock_cache

    def build(self, stan: str, now: float) -> tuple[str, dict[str, str]]:
        """The next request: (MTI, fields)."""
        rng = self.rng
        mix = self.mix
        authorization = rng.random() < mix.authorization_share
        mti = "0100" if authorization else "0200"
        card = rng.choice(self.cards)
        point = rng.random()
        entry: EntryMode = (
            "chip"
            if point < mix.chip_share
            else "swipe"
            if point < mix.chip_share + mix.swipe_share
            else "manual"
        )
        amount = f"{rng.randint(mix.amount_min, mix.amount_max):012d}"
        with_pin = entry == "chip" or (entry == "swipe" and rng.random() < 0.5)
        fields: dict[str, str] = {}
        if not (entry == "swipe" and rng.random() < mix.track_only_share):
            fields["2"] = card.pan
        fields["3"] = "030000" if authorization and self.style == "cup" else "000000"
        fields["4"] = amount
        clock = self._clock(now)
        if self.style == "iso87":
            fields["7"] = clock.transmission
        fields["11"] = stan
        if self.style == "iso87":
            fields["12"] = clock.local_time
            fields["13"] = clock.local_date
        if entry != "swipe":
            fields["14"] = card.expiry
        fields["22"] = {"chip": "051", "swipe": "021", "manual": "012"}[entry]
        if entry == "chip":
            fields["23"] = "001"
        fields["25"] = "06" if authorization and self.style == "cup" else "00"
        if self.style == "cup" and with_pin:
            fields["26"] = "12"  # PIN capture code: up to 12 digits
        if entry != "manual":
            fields["35"] = card.track2.replace("=", self._track_separator)
        if self.style == "iso87":
            # Julian date + hour + STAN: how terminals commonly make a unique RRN.
            fields["37"] = clock.rrn_prefix + stan
        fields["41"] = self.terminal_id
        fields["42"] = self.merchant_id
        fields["49"] = self.currency
        if with_pin:
            fields["52"] = pin_block(rng)
            if self.style == "cup":
                fields["53"] = "2600000000000000"  # security control: PIN format, key index
        if entry == "chip":
            fields["55"] = emv_data(rng, amount, self.currency, clock.emv_date)
        if self.style == "cup":
            message_type = "10" if authorization else "22"
            fields["60"] = f"{message_type}{self.batch:06d}000600"
        return mti, fields

    def reversal(
        self, original_mti: str, original: Mapping[str, str], stan: str, now: float
    ) -> tuple[str, dict[str, str]]:
        """The terminal's own reversal of a request it got no answer to (dialect rules).

        ``stan`` is used when the dialect reverses with a new STAN; CUP keeps the original's.
        Track data, PIN block and ICC data are never copied; a track-only original gives its
        PAN from DE 35.
        """
        rules = self.dialect.reversal
        copy = set(rules.copy_fields) | ({"60"} if self.style == "cup" else set())
        fields = {name: value for name, value in original.items() if name in copy}
        if "2" not in fields and "2" in copy:
            pan = pan_of(original)
            if pan:
                fields["2"] = pan
        fields["11"] = original["11"] if rules.stan == "original" else stan
        if "7" in original or self.style == "iso87":
            fields["7"] = transmission_time(now)
        fields["39"] = rules.reason_codes.get("timeout", "68")
        if rules.original_data == "de90":
            original_time = original.get("7", "0" * 10)
            fields["90"] = (
                original_mti
                + original["11"]
                + original_time
                + original.get("32", "").rjust(11, "0")
                + original.get("33", "").rjust(11, "0")
            )
        return rules.mti, fields
