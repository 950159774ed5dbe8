"""Cost of GatewayCore per authorization (request, approval, delivery result, timers).

    .venv/bin/python -m tests.core.bench_core [passthrough|rewrite] [default|tuned|off]

The gc argument: "default" thresholds, "tuned" (gc.set_threshold(100_000, 50, 100), what a
high-rate service would set) or "off". Not a test (no timing asserts): a measurement.
"""

from __future__ import annotations

import gc
import sys
import timeit

from gateway.core.commands import ForwardToAcquirer, ForwardToTerminal
from gateway.core.engine import GatewayCore
from gateway.core.events import AcquirerResponse, DeliveryResult, LinkUp, TerminalRequest
from gateway.core.settings import CoreSettings
from gateway.wire.dialect import Dialect
from gateway.wire.framing import Frame

AUTHORIZATIONS = 100_000
RATE = 10_000.0  # per second of simulated time: 60 s of duplicate window = 600k lingering


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "passthrough"
    collector = sys.argv[2] if len(sys.argv) > 2 else "default"
    if collector == "tuned":
        gc.set_threshold(100_000, 50, 100)
    elif collector == "off":
        gc.disable()
    dialect = Dialect(name="bench", description="", source="", spec={})
    settings = CoreSettings(stan_mode=mode, max_in_flight=10**9)  # type: ignore[arg-type]
    core = GatewayCore(dialect, settings, now=0.0)
    core.handle(LinkUp(1), 0.0)
    frame = Frame(b"x" * 200)
    template = {
        "2": "4761739001010119", "3": "000000", "4": "000000001000", "7": "0908064519",
        "12": "064519", "13": "0908", "22": "051", "32": "200", "37": "325106000001",
        "41": "TERM0001", "42": "MERCHANT0000001", "49": "978",
    }  # fmt: skip
    requests = [
        TerminalRequest(1, "0200", {**template, "11": f"{n % 999_999 + 1:06d}"}, frame)
        for n in range(AUTHORIZATIONS)
    ]
    clock = iter(n / RATE for n in range(1, AUTHORIZATIONS + 1))
    work = iter(requests)

    def one_authorization() -> None:
        now = next(clock)
        request = next(work)
        sent = core.handle(request, now)
        forward = next(c for c in sent if isinstance(c, ForwardToAcquirer))
        stan = forward.replace.get("11", request.fields["11"])
        answer = {"11": stan, "41": "TERM0001", "39": "00", "38": "A1B2C3"}
        got = core.handle(AcquirerResponse(1, "0210", answer, frame), now)
        delivery = next(c for c in got if isinstance(c, ForwardToTerminal))
        assert delivery.delivery_ref is not None
        core.handle(DeliveryResult(delivery.delivery_ref, True), now)
        core.on_timer(now)

    seconds = timeit.timeit(one_authorization, number=AUTHORIZATIONS)
    per = seconds / AUTHORIZATIONS
    print(
        f"{mode}, gc {collector}: {per * 1e6:.1f} us per authorization "
        f"({1 / per:,.0f}/s on one core); {core.stats()}"
    )


if __name__ == "__main__":
    main()
