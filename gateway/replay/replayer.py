"""The terminal side of a replay: send the captured terminal requests to a gateway, collect answers.

One TCP connection to the gateway per captured terminal connection, each sending its messages
in the captured order (the frames exactly as captured: TPDU, header, message bytes):

- pace: at the captured times (scaled by ``speed``), or as fast as possible (``speed=None``);
- cause and effect are kept at any pace: a request the terminal sent after it had its previous
  answer waits for that answer now (lock-step terminals stay lock-step; pipelined stay
  pipelined); one terminal's connections run one after the other;
- a captured link cut is isolated: the gateway has one multiplexed link where each terminal had
  its own connection, so the built-in host closing it would also cut every other request in
  flight. The replayer lets those finish first, sends the cut request alone, and waits until
  the gateway has reconnected before it sends again;
- a request gets ``response_timeout`` seconds for its answer (longer than the gateway's
  acquirer timeout: the gateway must answer with a decline in time).

When every connection is done, ``settle`` waits (at most that long) for the reversals the
gateway owes: until each request the capture shows unanswered has one and the built-in host
has heard nothing for ``quiet`` seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from gateway.core.keys import values_agree, values_of
from gateway.core.mti import base_mti, response_mti
from gateway.io.framed import FramedProtocol
from gateway.replay.host import ReplayHost
from gateway.replay.plan import FrontConnection, ReplayPlan, Step
from gateway.wire.codec import Codec, CodecError
from gateway.wire.dialect import Dialect
from gateway.wire.framing import Frame

Outcome = Literal["answered", "no_answer", "connection_lost", "not_sent"]


class ReplayError(RuntimeError):
    """The replay could not run (the gateway is not there, never connected to the host...)."""


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    speed: float | None = 1.0  # captured pace times this; None: as fast as possible
    response_timeout: float = 30.0  # per request, for the gateway's answer
    link_wait: float = 30.0  # for the gateway to connect to the built-in host
    settle: float = 10.0  # after the last answer: at most this long for owed reversals
    quiet: float = 1.0  # ... and until the built-in host heard nothing for this long
    link_settle: float = 0.2  # after a cut link is back, before sending again (sign-on)


@dataclass(slots=True, repr=False, eq=False)
class Replayed:
    """What became of one step now. ``fields`` hold card data: the report masks them."""

    step: Step
    outcome: Outcome = "not_sent"
    sent_at: float | None = None
    answered_at: float | None = None
    mti: str | None = None  # of the answer
    fields: dict[str, str] | None = None  # of the answer
    done: asyncio.Future[None] | None = None

    @property
    def response_code(self) -> str | None:
        return None if self.fields is None else self.fields.get("39")

    def __repr__(self) -> str:
        return f"Replayed(txn={self.step.number}, outcome={self.outcome}, rc={self.response_code})"


@dataclass(slots=True)
class ReplayRun:
    plan: ReplayPlan
    host: ReplayHost
    replayed: dict[int, Replayed]  # by step (transaction) number
    started: float
    finished: float = 0.0
    unexpected_responses: list[tuple[int, str, dict[str, str]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    options: ReplayOptions = field(default_factory=ReplayOptions)

    @property
    def elapsed(self) -> float:
        return self.finished - self.started


class _Gate:
    """Requests in flight, and the exclusive turn a cut request takes."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.exclusive = False
        self._changed = asyncio.Event()

    async def _until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            self._changed.clear()
            await self._changed.wait()

    async def enter(self) -> None:
        await self._until(lambda: not self.exclusive)
        self.in_flight += 1

    async def enter_alone(self) -> None:
        await self._until(lambda: not self.exclusive)
        self.exclusive = True
        await self._until(lambda: self.in_flight == 0)
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
        self._changed.set()

    def end_turn(self) -> None:
        self.exclusive = False
        self._changed.set()


class _TerminalLink(FramedProtocol):
    def __init__(self, replayer: Replayer, number: int) -> None:
        super().__init__(replayer.dialect.framing)
        self._replayer = replayer
        self.number = number
        self.pending: list[Replayed] = []

    def on_frame(self, frame: Frame) -> None:
        if not frame.is_keepalive:
            self._replayer._on_answer(self, frame)

    def on_disconnected(self, exc: Exception | None) -> None:
        for item in list(self.pending):
            self._replayer._finish(self, item, "connection_lost")


class Replayer:
    def __init__(
        self,
        plan: ReplayPlan,
        dialect: Dialect,
        target: tuple[str, int],
        host: ReplayHost,
        options: ReplayOptions | None = None,
    ) -> None:
        self.plan = plan
        self.dialect = dialect
        self.codec = Codec(dialect)
        self.target = target
        self.host = host
        self.options = options or ReplayOptions()
        self.run_state = ReplayRun(plan, host, {}, time.time(), options=self.options)
        self._gate = _Gate()
        self._match_fields = tuple(dialect.match_fields)
        self._start_monotonic = 0.0
        self._capture_start = plan.capture.start_time

    async def run(self) -> ReplayRun:
        options = self.options
        run = self.run_state
        if not await self.host.wait_link(options.link_wait):
            raise ReplayError(
                f"the gateway did not connect to the built-in host (port {self.host.port}) "
                f"within {options.link_wait:g} s: point its acquirer address there"
            )
        loop = asyncio.get_running_loop()
        run.started = time.time()
        self._start_monotonic = loop.time()
        for step in self.plan.steps:
            run.replayed[step.number] = Replayed(step)
        finished: dict[str, asyncio.Event] = {}  # terminal id -> its previous connection done
        tasks = []
        for front in self.plan.connections:
            terminal = front.terminal_id
            previous = finished.get(terminal) if terminal else None
            done = asyncio.Event()
            if terminal:
                finished[terminal] = done
            number = front.connection.number
            tasks.append(asyncio.create_task(self._connection(number, front, previous, done)))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
        if run.errors and all(r.outcome == "not_sent" for r in run.replayed.values()):
            raise ReplayError(run.errors[0])  # nothing reached the gateway: not a comparison
        await self._settle()
        run.finished = time.time()
        return run

    # one captured connection ---------------------------------------------------------------

    async def _connection(
        self,
        number: int,
        front: FrontConnection,
        previous: asyncio.Event | None,
        done: asyncio.Event,
    ) -> None:
        try:
            if previous is not None:
                await previous.wait()
            await self._at(front.connection.opened_at)
            link = await self._connect(number)
            if link is None:
                return
            try:
                await self._send_all(link, front)
                waits = [item.done for item in link.pending if item.done is not None]
                if waits:
                    await asyncio.gather(*waits)
            finally:
                link.close()
        finally:
            done.set()

    async def _connect(self, number: int) -> _TerminalLink | None:
        loop = asyncio.get_running_loop()
        try:
            _, link = await asyncio.wait_for(
                loop.create_connection(lambda: _TerminalLink(self, number), *self.target), 10.0
            )
        except (OSError, TimeoutError) as error:
            self.run_state.errors.append(
                f"connection {number}: cannot connect to the gateway at "
                f"{self.target[0]}:{self.target[1]}: {error}"
            )
            return None
        return link

    async def _send_all(self, link: _TerminalLink, front: FrontConnection) -> None:
        run = self.run_state
        sent: list[Replayed] = []
        for message in front.messages:
            await self._at(message.time)
            step = self.plan.step_of(message)
            # Cause and effect: what the terminal had been answered before it sent this.
            for earlier in sent:
                response = earlier.step.txn.response
                if response is not None and response.time <= message.time and earlier.done:
                    await earlier.done
            if not link.is_open:
                break
            if step is None:  # did not decode when captured: sent as is, nothing to wait for
                link.write_frame(message.frame)
                continue
            item = run.replayed[step.number]
            alone = step.host_fate == "cut"
            await (self._gate.enter_alone() if alone else self._gate.enter())
            links_before = self.host.counters.links  # the link this request will cut, or older
            item.done = asyncio.get_running_loop().create_future()
            item.sent_at = time.time()
            link.pending.append(item)
            timer = asyncio.get_running_loop().call_later(
                self.options.response_timeout, self._finish, link, item, "no_answer"
            )
            item.done.add_done_callback(_cancel_with(timer))
            if not link.write_frame(message.frame):
                self._finish(link, item, "connection_lost")
            sent.append(item)
            if alone:
                await item.done
                await self._after_cut(step, links_before)

    async def _after_cut(self, step: Step, links_before: int) -> None:
        """The built-in host cut the gateway's link for this request: wait for it to be back."""
        try:
            cut = any(r.step is step and r.action == "closed" for r in self.host.requests)
            if cut:
                if not await self.host.wait_link(self.options.link_wait, after=links_before):
                    self.run_state.errors.append(
                        f"transaction {step.number}: the gateway did not reconnect to the "
                        f"built-in host within {self.options.link_wait:g} s after the cut"
                    )
                await asyncio.sleep(self.options.link_settle)
        finally:
            self._gate.end_turn()

    async def _at(self, captured_time: float) -> None:
        speed = self.options.speed
        if speed is None:
            return
        loop = asyncio.get_running_loop()
        due = self._start_monotonic + (captured_time - self._capture_start) / speed
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)

    # answers ------------------------------------------------------------------------------

    def _on_answer(self, link: _TerminalLink, frame: Frame) -> None:
        try:
            view = self.codec.scan(frame.message)
            mti, fields = view.mti, view.fields(view.present)
        except CodecError as error:
            self.run_state.errors.append(f"connection {link.number}: undecodable answer: {error}")
            return
        values = values_of(fields, self._match_fields)
        for item in link.pending:
            request = item.step.txn.request
            if response_mti(request.mti) == base_mti(mti) and values_agree(
                values_of(request.fields, self._match_fields), values
            ):
                item.mti, item.fields = mti, fields
                self._finish(link, item, "answered")
                return
        self.run_state.unexpected_responses.append((link.number, mti, fields))

    def _finish(self, link: _TerminalLink, item: Replayed, outcome: Outcome) -> None:
        if item not in link.pending:
            return
        link.pending.remove(item)
        item.outcome = outcome
        item.answered_at = time.time() if outcome == "answered" else None
        self._gate.leave()
        if item.done is not None and not item.done.done():
            item.done.set_result(None)

    # the end ------------------------------------------------------------------------------

    async def _settle(self) -> None:
        """Wait for the reversals owed (at most ``settle`` s), then for ``quiet`` s of silence."""
        options = self.options
        deadline = time.monotonic() + options.settle
        owed = [
            step
            for step in self.plan.steps
            if step.expects_reversal and self.run_state.replayed[step.number].outcome != "not_sent"
        ]
        while time.monotonic() < deadline:
            reversed_steps = {
                r.original.step for r in self.host.reversals() if r.original is not None
            }
            quiet_for = time.time() - self.host.last_activity
            if all(step in reversed_steps for step in owed) and quiet_for >= options.quiet:
                return
            await asyncio.sleep(min(0.05, options.quiet))


def _cancel_with(timer: asyncio.TimerHandle) -> Callable[[asyncio.Future[None]], None]:
    def cancel(_: asyncio.Future[None]) -> None:
        timer.cancel()

    return cancel
