from __future__ import annotations

import pytest

from gateway.core.settings import CoreSettings, SettingsError


def test_defaults_follow_the_rules() -> None:
    s = CoreSettings()
    assert (s.acquirer_timeout, s.reversal_timeout) == (15.0, 10.0)
    assert s.retry_delays == (5.0, 10.0, 30.0, 60.0, 300.0)
    assert (s.max_attempts, s.reversal_expiry, s.duplicate_window) == (20, 86_400.0, 60.0)
    assert s.late_decline_cancels and s.stan_mode == "passthrough"
    assert (s.reversal_drain_rate, s.max_in_flight) == (50.0, 10_000)
    assert "00" in s.approval_codes and "05" not in s.approval_codes


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"acquirer_timeout": 0}, "acquirer_timeout"),
        ({"retry_delays": ()}, "retry_delays"),
        ({"retry_delays": (5.0, -1.0)}, "retry_delays"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"stan_mode": "sometimes"}, "stan_mode"),
        ({"reversal_drain_rate": 0}, "reversal_drain_rate"),
    ],
)
def test_bad_settings_name_the_setting(overrides: dict[str, object], name: str) -> None:
    with pytest.raises(SettingsError, match=name) as caught:
        CoreSettings(**overrides)  # type: ignore[arg-type]
    assert caught.value.setting == name
