"""What the simulated acquirer answers, and which faults it injects.

Rules are tried in order; the first that matches a request decides its response code and/or
its fault. Requests no rule decides get the default answer (approve, ``00``) and the global
fault rates (a seeded draw, so a run can be repeated). Network management (08xx) is exempt from
the global rates, so the gateway's echo and sign-on keep working unless a rule says otherwise.

Faults act after the host decided: an approval that is dropped, late, cut off by a close or
replaced by garbage still holds its funds on the ledger.

A rules file is TOML or JSON (by extension)::

    seed = 7
    duplicate_reversal_code = "00"

    [faults]              # global rates, each 0..1, summing to at most 1
    drop_rate = 0.05
    delay_rate = 0.1
    delay = 2.0           # seconds for "delay"
    late = 30.0           # seconds for "late"

    [[rule]]              # JSON: "rules": [ {...}, ... ]
    name = "big amounts declined"
    mti = ["0100", "0200"]
    amount_min = 100000   # DE 4, minor units, inclusive
    response_code = "51"

    [[rule]]
    terminal_id = "TERM0003"
    mti = "0400"
    fault = "drop"        # delay | drop | late | close | garbage | none
    times = 1             # only the first matching request
"""

from __future__ import annotations

import json
import random
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

FaultKind = Literal["delay", "drop", "late", "close", "garbage", "none"]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)

DEFAULT_DELAY = 1.0
DEFAULT_LATE = 30.0


class RulesError(ValueError):
    """A rule or fault setting that cannot be used. Names where (file, rule) and what."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


@dataclass(frozen=True, slots=True, repr=False)
class RequestFacts:
    """What rules can match on, taken from one request. ``repr`` never shows the PAN."""

    mti: str
    amount: int | None = None  # DE 4, minor units
    pan: str | None = None  # DE 2 (or from DE 35)
    terminal_id: str | None = None  # DE 41
    processing_code: str | None = None  # DE 3

    def __repr__(self) -> str:
        return (
            f"RequestFacts(mti={self.mti!r}, amount={self.amount!r}, "
            f"terminal_id={self.terminal_id!r}, processing_code={self.processing_code!r})"
        )


@dataclass(frozen=True, slots=True)
class Rule:
    """One line of the acquirer's behaviour. Empty criteria match anything."""

    name: str = ""
    mti: frozenset[str] = frozenset()  # exact MTIs; list repeats (0401) explicitly
    amount_min: int | None = None
    amount_max: int | None = None
    pan_prefix: tuple[str, ...] = ()
    terminal_id: frozenset[str] = frozenset()
    processing_code: tuple[str, ...] = ()  # prefixes of DE 3 ("31", "000000")
    response_code: str | None = None
    fault: FaultKind | None = None
    seconds: float | None = None  # for delay/late; default: the global delay/late
    times: int | None = None  # apply to the first N matching requests only
    probability: float = 1.0  # apply to this share of the matching requests

    def matches(self, request: RequestFacts) -> bool:
        if self.mti and request.mti not in self.mti:
            return False
        if self.amount_min is not None and (
            request.amount is None or request.amount < self.amount_min
        ):
            return False
        if self.amount_max is not None and (
            request.amount is None or request.amount > self.amount_max
        ):
            return False
        if self.pan_prefix and not (
            request.pan and any(request.pan.startswith(p) for p in self.pan_prefix)
        ):
            return False
        if self.terminal_id and request.terminal_id not in self.terminal_id:
            return False
        return not self.processing_code or bool(
            request.processing_code
            and any(request.processing_code.startswith(p) for p in self.processing_code)
        )


@dataclass(frozen=True, slots=True)
class FaultRates:
    """Global fault rates (shares of requests, 0..1) and the delays they use."""

    drop_rate: float = 0.0
    delay_rate: float = 0.0
    late_rate: float = 0.0
    close_rate: float = 0.0
    garbage_rate: float = 0.0
    delay: float = DEFAULT_DELAY  # seconds for "delay": meant to stay within the timeouts
    late: float = DEFAULT_LATE  # seconds for "late": meant to be past the gateway's timeout

    def __post_init__(self) -> None:
        rates = self._rates()
        for kind, rate in rates:
            if not 0.0 <= rate <= 1.0:
                raise RulesError("faults", f"{kind}_rate {rate} is not between 0 and 1")
        if sum(rate for _, rate in rates) > 1.0 + 1e-9:
            raise RulesError("faults", "the fault rates add up to more than 1")
        if self.delay < 0 or self.late < 0:
            raise RulesError("faults", "delay and late must not be negative")

    def _rates(self) -> tuple[tuple[FaultKind, float], ...]:
        return (
            ("drop", self.drop_rate),
            ("close", self.close_rate),
            ("garbage", self.garbage_rate),
            ("late", self.late_rate),
            ("delay", self.delay_rate),
        )

    @property
    def any(self) -> bool:
        return any(rate > 0 for _, rate in self._rates())

    def draw(self, rng: random.Random) -> FaultKind | None:
        """One seeded draw: which fault (if any) hits the next request."""
        if not self.any:
            return None
        point = rng.random()
        for kind, rate in self._rates():
            if point < rate:
                return kind
            point -= rate
        return None


@dataclass(frozen=True, slots=True)
class Decision:
    """What the simulator does with one request."""

    response_code: str | None = None  # None: the default for the message class
    fault: FaultKind | None = None
    seconds: float = 0.0  # delay before answering (delay/late)
    rule: str | None = None  # name (or position) of the rule that decided, if any


@dataclass(frozen=True, slots=True)
class SimSettings:
    """Everything a rules file can set."""

    rules: tuple[Rule, ...] = ()
    faults: FaultRates = field(default_factory=FaultRates)
    seed: int | None = None
    duplicate_reversal_code: str | None = None


class RuleSet:
    """Rules in order, global fault rates and the seeded randomness both draw from."""

    def __init__(
        self,
        rules: Iterable[Rule] = (),
        faults: FaultRates | None = None,
        seed: int | None = None,
    ) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.faults = faults or FaultRates()
        self.rng = random.Random(seed)
        self._applied: list[int] = [0] * len(self.rules)

    def decide(self, request: RequestFacts) -> Decision:
        for position, rule in enumerate(self.rules):
            if not rule.matches(request):
                continue
            if rule.times is not None and self._applied[position] >= rule.times:
                continue
            if rule.probability < 1.0 and self.rng.random() >= rule.probability:
                continue
            self._applied[position] += 1
            name = rule.name or f"rule {position + 1}"
            fault = rule.fault
            if fault is None:
                fault = self._global_fault(request)
            elif fault == "none":
                fault = None
            return Decision(rule.response_code, fault, self._seconds(fault, rule.seconds), name)
        fault = self._global_fault(request)
        return Decision(None, fault, self._seconds(fault, None))

    def applied(self) -> dict[str, int]:
        """How many requests each rule decided (by name or position)."""
        return {
            rule.name or f"rule {position + 1}": self._applied[position]
            for position, rule in enumerate(self.rules)
        }

    def _global_fault(self, request: RequestFacts) -> FaultKind | None:
        if request.mti.startswith("08"):
            return None
        return self.faults.draw(self.rng)

    def _seconds(self, fault: FaultKind | None, seconds: float | None) -> float:
        if seconds is not None:
            return seconds
        if fault == "delay":
            return self.faults.delay
        if fault == "late":
            return self.faults.late
        return 0.0


# Loading --------------------------------------------------------------------------------

_RULE_KEYS = {
    "name", "mti", "amount_min", "amount_max", "pan_prefix", "terminal_id",
    "processing_code", "response_code", "fault", "seconds", "times", "probability",
}  # fmt: skip
_FAULT_KEYS = {
    "drop_rate", "delay_rate", "late_rate", "close_rate", "garbage_rate", "delay", "late",
}  # fmt: skip
_TOP_KEYS = {"rule", "rules", "faults", "seed", "duplicate_reversal_code"}


def load_settings(path: Path) -> SimSettings:
    """Read a rules file (.toml or .json). Raises RulesError naming the file and the rule."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise RulesError(source, f"cannot read: {error.strerror}") from error
    try:
        data: Any = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
        raise RulesError(source, f"not valid {kind}: {error}") from error
    return settings_from_mapping(data, source)


def _refuse_unknown_keys(raw: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = set(raw) - known
    if unknown:
        raise RulesError(where, f"unknown key(s) {sorted(unknown)}; expected {sorted(known)}")


def settings_from_mapping(data: Any, source: str = "rules") -> SimSettings:
    if not isinstance(data, Mapping):
        raise RulesError(source, "expected a table/object at the top level")
    _refuse_unknown_keys(data, _TOP_KEYS, source)
    raw_rules = data.get("rule", data.get("rules", []))
    if not isinstance(raw_rules, Sequence) or isinstance(raw_rules, str):
        raise RulesError(source, "'rule'/'rules' must be a list of tables")
    rules = tuple(
        parse_rule(raw, f"{source}: rule {position + 1}") for position, raw in enumerate(raw_rules)
    )
    faults = parse_faults(data.get("faults", {}), f"{source}: faults")
    seed = data.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise RulesError(source, "seed must be an integer")
    code = data.get("duplicate_reversal_code")
    if code is not None:
        code = _response_code(code, f"{source}: duplicate_reversal_code")
    return SimSettings(rules=rules, faults=faults, seed=seed, duplicate_reversal_code=code)


def parse_faults(raw: Any, where: str = "faults") -> FaultRates:
    if not isinstance(raw, Mapping):
        raise RulesError(where, "expected a table/object")
    _refuse_unknown_keys(raw, _FAULT_KEYS, where)
    values = {key: _number(value, f"{where}: {key}") for key, value in raw.items()}
    try:
        return FaultRates(**values)
    except RulesError as error:
        raise RulesError(where, error.problem) from None


def parse_rule(raw: Any, where: str = "rule") -> Rule:
    """One rule from a mapping (a TOML table or JSON object)."""
    if not isinstance(raw, Mapping):
        raise RulesError(where, "expected a table/object")
    _refuse_unknown_keys(raw, _RULE_KEYS, where)
    mtis = _strings(raw.get("mti"), f"{where}: mti")
    for mti in mtis:
        if len(mti) != 4 or not mti.isdigit():
            raise RulesError(f"{where}: mti", f"{mti!r} is not a 4-digit MTI")
    pan_prefixes = _strings(raw.get("pan_prefix"), f"{where}: pan_prefix")
    processing_codes = _strings(raw.get("processing_code"), f"{where}: processing_code")
    for value, key in [(p, "pan_prefix") for p in pan_prefixes] + [
        (p, "processing_code") for p in processing_codes
    ]:
        if not value.isdigit():
            # Never echo the value: a PAN prefix typed by mistake could be a whole PAN.
            raise RulesError(f"{where}: {key}", "must contain digits only")
    fault = raw.get("fault")
    if fault is not None and fault not in FAULT_KINDS:
        raise RulesError(f"{where}: fault", f"{fault!r} is not one of {list(FAULT_KINDS)}")
    response_code = raw.get("response_code")
    if response_code is not None:
        response_code = _response_code(response_code, f"{where}: response_code")
    times = raw.get("times")
    if times is not None and (not isinstance(times, int) or isinstance(times, bool) or times < 1):
        raise RulesError(f"{where}: times", "must be a whole number of at least 1")
    probability = _number(raw.get("probability", 1.0), f"{where}: probability")
    if not 0.0 <= probability <= 1.0:
        raise RulesError(f"{where}: probability", "must be between 0 and 1")
    seconds = raw.get("seconds")
    name = raw.get("name", "")
    if not isinstance(name, str):
        raise RulesError(f"{where}: name", "must be a string")
    return Rule(
        name=name,
        mti=frozenset(mtis),
        amount_min=_amount(raw.get("amount_min"), f"{where}: amount_min"),
        amount_max=_amount(raw.get("amount_max"), f"{where}: amount_max"),
        pan_prefix=tuple(pan_prefixes),
        terminal_id=frozenset(_strings(raw.get("terminal_id"), f"{where}: terminal_id")),
        processing_code=tuple(processing_codes),
        response_code=response_code,
        fault=fault,
        seconds=None if seconds is None else _number(seconds, f"{where}: seconds"),
        times=times,
        probability=probability,
    )


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and all(isinstance(item, str) for item in value):
        return list(value)
    raise RulesError(where, "must be a string or a list of strings")


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RulesError(where, "must be a number")
    if value < 0:
        raise RulesError(where, "must not be negative")
    return float(value)


def _amount(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RulesError(where, "must be a whole amount in minor units (DE 4), at least 0")
    return value


def _response_code(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) != 2 or not value.isalnum():
        raise RulesError(where, "must be a 2-character response code such as '00' or '51'")
    return value
