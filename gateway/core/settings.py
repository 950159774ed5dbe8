"""The core's settings: every timing and policy knob of reversal-rules.md, with its default."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

StanMode = Literal["passthrough", "rewrite"]
LinkStrategy = Literal["primary", "round_robin"]


class SettingsError(ValueError):
    """A core setting that cannot work. Names the setting and the problem."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"core setting {setting}: {problem}")
        self.setting = setting
        self.problem = problem


@dataclass(frozen=True, slots=True)
class CoreSettings:
    # Seconds to wait for the acquirer's answer. Shorter than the terminal's own timeout, so
    # the terminal still receives the gateway's decline instead of timing out blind.
    acquirer_timeout: float = 15.0
    # Seconds to wait for the 0410/0430 of one reversal attempt.
    reversal_timeout: float = 10.0
    # Pause before repeat n+1 after attempt n failed; the last value repeats.
    retry_delays: tuple[float, ...] = (5.0, 10.0, 30.0, 60.0, 300.0)
    # A reversal answered by nothing (or by non-resolving codes) this many times is FAILED.
    max_attempts: int = 20
    # A reversal not acknowledged this long after it became owed is FAILED.
    reversal_expiry: float = 86_400.0
    # After its answer a request is remembered this long: a duplicate gets the cached answer
    # and a late response is recognised as late.
    duplicate_window: float = 60.0
    # A late decline cancels its reversal when that was not sent yet (nothing is held).
    late_decline_cancels: bool = True
    # "rewrite": DE 11 towards the acquirer is a gateway-unique STAN, restored in the answer.
    stan_mode: StanMode = "passthrough"
    # Which link up a message goes on: "primary", the lowest-numbered (the others stand by);
    # "round_robin", each in turn (the load spread over every connection).
    link_strategy: LinkStrategy = "primary"
    # Owed reversals waiting for a link leave at most this many per second once one is up.
    reversal_drain_rate: float = 50.0
    # Requests awaiting the acquirer beyond this are declined at once (never forwarded).
    max_in_flight: int = 10_000
    # DE 39 values of a 0110/0210 that mean "approved" (funds may be held):
    # 00 approved, 08 honour with identification, 10 partial approval, 11 VIP approval.
    approval_codes: frozenset[str] = frozenset({"00", "08", "10", "11"})
    # How long an original whose reversal closed is remembered, so that the terminal's own
    # reversal of it is answered by the gateway instead of reversing the original twice.
    history_window: float = 3_600.0

    def __post_init__(self) -> None:
        for name in ("acquirer_timeout", "reversal_timeout", "reversal_drain_rate"):
            if not getattr(self, name) > 0:
                raise SettingsError(name, f"must be > 0, not {getattr(self, name)!r}")
        for name in ("reversal_expiry", "duplicate_window", "history_window"):
            if not getattr(self, name) >= 0:
                raise SettingsError(name, f"must be >= 0, not {getattr(self, name)!r}")
        if not self.retry_delays:
            raise SettingsError("retry_delays", "needs at least one delay")
        if any(not delay >= 0 for delay in self.retry_delays):
            raise SettingsError("retry_delays", f"delays must be >= 0: {self.retry_delays!r}")
        if self.max_attempts < 1:
            raise SettingsError("max_attempts", f"must be >= 1, not {self.max_attempts!r}")
        if self.max_in_flight < 1:
            raise SettingsError("max_in_flight", f"must be >= 1, not {self.max_in_flight!r}")
        if self.stan_mode not in ("passthrough", "rewrite"):
            raise SettingsError("stan_mode", f"must be passthrough or rewrite: {self.stan_mode!r}")
