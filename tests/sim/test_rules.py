"""Rules and fault rates: matching, order, limits, seeded draws, and the rules file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.sim.rules import (
    FaultRates,
    RequestFacts,
    Rule,
    RulesError,
    RuleSet,
    load_settings,
    parse_rule,
)

PAN = "4761739001010010"


def facts(**overrides: object) -> RequestFacts:
    base: dict[str, object] = {
        "mti": "0200",
        "amount": 1500,
        "pan": PAN,
        "terminal_id": "TERM0001",
        "processing_code": "000000",
    }
    base.update(overrides)
    return RequestFacts(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("rule", "matching", "not_matching"),
    [
        (Rule(mti=frozenset({"0100"})), {"mti": "0100"}, {"mti": "0200"}),
        (Rule(amount_min=1000), {"amount": 1000}, {"amount": 999}),
        (Rule(amount_max=1000), {"amount": 1000}, {"amount": 1001}),
        (Rule(amount_min=1), {"amount": 1}, {"amount": None}),
        (
            Rule(pan_prefix=("4761", "5413")),
            {"pan": "5413330000000001"},
            {"pan": "6224240000000001"},
        ),
        (Rule(pan_prefix=("4761",)), {"pan": PAN}, {"pan": None}),
        (Rule(terminal_id=frozenset({"TERM0002"})), {"terminal_id": "TERM0002"}, {}),
        (Rule(processing_code=("31",)), {"processing_code": "310000"}, {}),
    ],
)
def test_each_criterion_matches_and_rejects(
    rule: Rule, matching: dict[str, object], not_matching: dict[str, object]
) -> None:
    assert rule.matches(facts(**matching))
    assert not rule.matches(facts(**not_matching))


def test_an_empty_rule_matches_everything() -> None:
    assert Rule().matches(facts())
    assert Rule().matches(RequestFacts(mti="0800"))


def test_the_first_matching_rule_decides() -> None:
    rules = RuleSet(
        [
            Rule(name="big", amount_min=10_000, response_code="51"),
            Rule(name="term2", terminal_id=frozenset({"TERM0002"}), response_code="05"),
            Rule(name="all", fault="drop"),
        ]
    )
    big = rules.decide(facts(amount=20_000, terminal_id="TERM0002"))
    assert (big.response_code, big.fault, big.rule) == ("51", None, "big")
    term2 = rules.decide(facts(terminal_id="TERM0002"))
    assert (term2.response_code, term2.fault, term2.rule) == ("05", None, "term2")
    other = rules.decide(facts())
    assert (other.response_code, other.fault, other.rule) == (None, "drop", "all")
    assert rules.applied() == {"big": 1, "term2": 1, "all": 1}


def test_no_rule_means_approve_with_no_fault() -> None:
    decision = RuleSet().decide(facts())
    assert decision.response_code is None
    assert decision.fault is None
    assert decision.rule is None


def test_times_limits_a_rule_to_its_first_matches() -> None:
    rules = RuleSet([Rule(mti=frozenset({"0400"}), fault="drop", times=2)])
    faults = [rules.decide(facts(mti="0400")).fault for _ in range(4)]
    assert faults == ["drop", "drop", None, None]


def test_delay_and_late_use_the_rule_seconds_or_the_global_ones() -> None:
    rules = RuleSet(
        [
            Rule(terminal_id=frozenset({"A"}), fault="late", seconds=7.5),
            Rule(terminal_id=frozenset({"B"}), fault="late"),
            Rule(terminal_id=frozenset({"C"}), fault="delay"),
        ],
        FaultRates(delay=0.25, late=40.0),
    )
    assert rules.decide(facts(terminal_id="A")).seconds == 7.5
    assert rules.decide(facts(terminal_id="B")).seconds == 40.0
    assert rules.decide(facts(terminal_id="C")).seconds == 0.25


def test_a_rule_can_exempt_requests_from_the_global_faults() -> None:
    rules = RuleSet(
        [Rule(terminal_id=frozenset({"SAFE"}), fault="none")], FaultRates(drop_rate=1.0)
    )
    assert rules.decide(facts(terminal_id="SAFE")).fault is None
    assert rules.decide(facts()).fault == "drop"


def test_a_rule_without_a_fault_still_gets_the_global_faults() -> None:
    rules = RuleSet([Rule(response_code="51")], FaultRates(close_rate=1.0))
    decision = rules.decide(facts())
    assert (decision.response_code, decision.fault) == ("51", "close")


def test_global_faults_spare_network_management() -> None:
    rules = RuleSet(faults=FaultRates(drop_rate=1.0))
    assert rules.decide(facts(mti="0800")).fault is None
    assert rules.decide(facts(mti="0400")).fault == "drop"


def test_seeded_draws_repeat_and_follow_the_rates() -> None:
    rates = FaultRates(drop_rate=0.1, delay_rate=0.2, close_rate=0.05, garbage_rate=0.05)
    first = RuleSet(faults=rates, seed=42)
    second = RuleSet(faults=rates, seed=42)
    draws = [first.decide(facts()).fault for _ in range(2000)]
    assert draws == [second.decide(facts()).fault for _ in range(2000)]
    counts = {kind: draws.count(kind) for kind in ("drop", "delay", "close", "garbage", "late")}
    # 2000 draws: each count is within a wide band around its expected value.
    assert 140 <= counts["drop"] <= 260
    assert 320 <= counts["delay"] <= 480
    assert 50 <= counts["close"] <= 150
    assert 50 <= counts["garbage"] <= 150
    assert counts["late"] == 0
    assert draws.count(None) == 2000 - sum(counts.values())


def test_probability_applies_a_rule_to_a_share_of_requests() -> None:
    rules = RuleSet([Rule(fault="drop", probability=0.5)], seed=3)
    drops = sum(rules.decide(facts()).fault == "drop" for _ in range(1000))
    assert 400 <= drops <= 600


@pytest.mark.parametrize(
    "rates",
    [{"drop_rate": 1.5}, {"drop_rate": -0.1}, {"drop_rate": 0.6, "close_rate": 0.6}, {"late": -1}],
)
def test_impossible_fault_rates_are_refused(rates: dict[str, float]) -> None:
    with pytest.raises(RulesError):
        FaultRates(**rates)


TOML_RULES = """
seed = 7
duplicate_reversal_code = "94"

[faults]
drop_rate = 0.05
late = 12

[[rule]]
name = "big amounts declined"
mti = ["0100", "0200"]
amount_min = 100000
response_code = "51"

[[rule]]
terminal_id = "TERM0003"
mti = "0400"
fault = "drop"
times = 1
"""


def test_a_toml_rules_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(TOML_RULES)
    settings = load_settings(path)
    assert settings.seed == 7
    assert settings.duplicate_reversal_code == "94"
    assert settings.faults == FaultRates(drop_rate=0.05, late=12.0)
    big, drop = settings.rules
    assert big == Rule(
        name="big amounts declined",
        mti=frozenset({"0100", "0200"}),
        amount_min=100000,
        response_code="51",
    )
    assert drop == Rule(
        terminal_id=frozenset({"TERM0003"}), mti=frozenset({"0400"}), fault="drop", times=1
    )


def test_a_json_rules_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text(
        json.dumps(
            {
                "faults": {"delay_rate": 0.5, "delay": 0.2},
                "rules": [{"pan_prefix": ["4761"], "processing_code": "31", "response_code": "57"}],
            }
        )
    )
    settings = load_settings(path)
    assert settings.faults == FaultRates(delay_rate=0.5, delay=0.2)
    assert settings.rules == (
        Rule(pan_prefix=("4761",), processing_code=("31",), response_code="57"),
    )


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ("[[rule]]\nmti = '200'\n", "rule 1: mti", "not a 4-digit MTI"),
        ("[[rule]]\nfault = 'explode'\n", "rule 1: fault", "'explode' is not one of"),
        ("[[rule]]\nresponse_code = '5'\n", "rule 1: response_code", "2-character"),
        ("[[rule]]\ncolour = 'red'\n", "rule 1", "unknown key(s) ['colour']"),
        ("[[rule]]\ntimes = 0\n", "rule 1: times", "at least 1"),
        ("[[rule]]\namount_min = 'ten'\n", "rule 1: amount_min", "whole amount"),
        ("[faults]\ndrop_rate = 2\n", "faults", "not between 0 and 1"),
        ("[faults]\nspeed = 2\n", "faults", "unknown key(s) ['speed']"),
        ("colour = 1\n", "rules.toml", "unknown key(s) ['colour']"),
        ("[[rule]\n", "rules.toml", "not valid TOML"),
    ],
)
def test_a_bad_rules_file_says_where_and_what(
    tmp_path: Path, text: str, where: str, problem: str
) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(RulesError) as caught:
        load_settings(path)
    assert where in caught.value.where
    assert problem in caught.value.problem
    assert str(path) in str(caught.value)


def test_a_missing_rules_file_is_a_rules_error(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read"):
        load_settings(tmp_path / "absent.toml")


def test_errors_and_reprs_never_show_a_pan() -> None:
    with pytest.raises(RulesError) as caught:
        parse_rule({"pan_prefix": PAN + "X"})
    assert PAN not in str(caught.value)
    assert PAN not in repr(facts())
