"""The replay report: each transaction captured vs replayed, the reversals, and a verdict.

For each terminal request of the capture:

- **captured**: what the terminal was answered then (DE 39), ``no answer``, or ``cut`` (the
  host closed the connection instead of answering);
- **replayed**: what the gateway answered now, or ``no answer`` / ``connection lost``;
- **reversed**: the reversals the gateway sent for it (0400 and its repeats count as one);
- **result**:
  - ``same``: same response code, no reversal, no field differences;
  - ``repaired``: the capture shows no answer for a request that holds funds, and now the
    terminal got a decline and the gateway reversed it exactly once: what the gateway is for;
  - ``differs``: anything else, with the reasons listed under it.

Fields that should not change are compared too: the response the terminal got (then vs now)
and the request the host received (then vs now). Volatile fields are left out, by default
DE 7, 12, 13 (times), 37 (RRN) and 38 (approval code): ``--ignore`` sets the list.

Also reported, each a difference: reversals that reverse nothing of this replay, requests the
gateway sent that the capture's host never saw, answers the terminals did not ask for, and
errors. The exit code is 0 only when there are no differences.

Card data: PANs are shown first 6 / last 4; track data, PIN blocks and ICC data never (only
their size); free text goes through ``redact_text``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from gateway.core.mti import base_mti
from gateway.replay.host import HostRequest
from gateway.replay.plan import NO_ANSWER_FATES, Step
from gateway.replay.replayer import Replayed, ReplayRun
from gateway.sim.ledger import pan_of
from gateway.wire.masking import DEFAULT_SENSITIVE_FIELDS, PAN_FIELDS, mask_pan, redact_text

DEFAULT_IGNORED = frozenset({"7", "12", "13", "37", "38"})
NOT_FORWARDED = "not forwarded to the acquirer now"
APPROVAL_CODES = frozenset({"00"})
Verdict = Literal["same", "repaired", "differs"]


@dataclass(slots=True)
class TxnLine:
    number: int
    connection: int
    terminal_id: str | None
    stan: str | None
    mti: str
    pan: str | None  # masked
    amount: str | None
    captured: str  # DE 39, "no answer" or "cut"
    host_then: str  # what the host did then: answered / no_response / cut / not_forwarded
    replayed: str  # DE 39, "no answer", "connection lost" or "not sent"
    forwarded: bool  # the built-in host received it now
    reversals: list[int]  # numbers of the reversal lines
    reversal_expected: bool
    verdict: Verdict = "same"
    differences: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ReversalLine:
    number: int
    offset: float  # seconds after the replay started
    mti: str
    stan: str | None
    reason: str | None  # DE 39 of the reversal
    answer: str | None  # what the built-in host answered
    by: Literal["gateway", "terminal"]  # the gateway's own, or a terminal's it forwarded
    reverses: int | None  # transaction number


@dataclass(slots=True)
class ReplayReport:
    file: str
    dialect: str
    target: str
    pace: str
    elapsed: float
    ignored: list[str]
    transactions: list[TxnLine]
    reversals: list[ReversalLine]
    problems: list[str]  # differences that belong to no one transaction, and errors
    network_messages: int
    hints: list[str] = field(default_factory=list)  # likely causes: not differences themselves

    @property
    def differences(self) -> int:
        return sum(t.verdict == "differs" for t in self.transactions) + len(self.problems)

    @property
    def ok(self) -> bool:
        return self.differences == 0

    def counts(self) -> dict[str, int]:
        counts = {"same": 0, "repaired": 0, "differs": 0}
        for txn in self.transactions:
            counts[txn.verdict] += 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["summary"] = {**self.counts(), "problems": len(self.problems), "ok": self.ok}
        return data


def build_report(
    run: ReplayRun, *, target: str, ignore: Iterable[str] = DEFAULT_IGNORED
) -> ReplayReport:
    ignored = frozenset(ignore)
    plan = run.plan
    host = run.host
    reversal_lines: list[ReversalLine] = []
    reversals_of: dict[int, list[HostRequest]] = {}
    problems: list[str] = []
    for request in host.reversals():
        original = request.original.step if request.original is not None else None
        line = ReversalLine(
            number=len(reversal_lines) + 1,
            offset=round(request.time - run.started, 3),
            mti=request.mti,
            stan=request.fields.get("11"),
            reason=request.fields.get("39"),
            answer=request.response_code,
            by="terminal" if request.step is not None else "gateway",
            reverses=original.number if original is not None else None,
        )
        reversal_lines.append(line)
        if original is None:
            problems.append(
                f"reversal {line.number} ({line.mti}, STAN {line.stan}) reverses no request of "
                "this replay"
            )
        else:
            reversals_of.setdefault(original.number, []).append(request)
    declined_mtis = plan.capture.dialect.reversible_mtis
    lines = [
        _transaction(
            step, run.replayed[step.number], host.requests, reversals_of, ignored, declined_mtis
        )
        for step in plan.steps
    ]
    numbers = {id(r): rev.number for rev, r in zip(reversal_lines, host.reversals(), strict=True)}
    for txn in lines:
        txn.reversals = [numbers[id(r)] for r in reversals_of.get(txn.number, [])]
    for request in host.requests:
        if request.action == "unexpected" and request.step is None and request.kind != "reversal":
            problems.append(
                f"the gateway sent {request.mti or 'an undecodable message'} "
                f"(terminal {request.fields.get('41', '-')}, STAN {request.fields.get('11', '-')}) "
                "that is not in the capture"
            )
    for connection, mti, fields in run.unexpected_responses:
        problems.append(
            f"connection {connection}: an answer nobody asked for: {mti} STAN "
            f"{fields.get('11', '-')}"
        )
    problems += run.errors
    hints = []
    if any(NOT_FORWARDED in d for line in lines for d in line.differences):
        hints.append(
            "requests answered without reaching the acquirer: a gateway that saw this capture "
            "within its duplicate window answers the repeats from its cache; replay against a "
            "fresh gateway (new journal) or after duplicates.window"
        )
    speed = run.options.speed
    return ReplayReport(
        file=plan.capture.path,
        dialect=plan.capture.dialect.name,
        target=target,
        pace="as fast as possible" if speed is None else f"captured pace x{speed:g}",
        elapsed=round(run.elapsed, 3),
        ignored=sorted(ignored, key=lambda f: int(f) if f.isdigit() else 0),
        transactions=lines,
        reversals=reversal_lines,
        problems=problems,
        network_messages=sum(r.kind == "network" for r in host.requests),
        hints=hints,
    )


def _transaction(
    step: Step,
    replayed: Replayed,
    host_requests: list[HostRequest],
    reversals_of: Mapping[int, list[HostRequest]],
    ignored: frozenset[str],
    declined_mtis: frozenset[str],
) -> TxnLine:
    request = step.txn.request
    fields = request.fields
    pan = pan_of(fields)
    then = step.captured_response
    captured = (
        (then.response_code or "?")
        if then is not None
        else ("cut" if step.txn.fate == "cut" else "no answer")
    )
    now = replayed.response_code if replayed.outcome == "answered" else None
    shown_now = (
        (now or "?") if replayed.outcome == "answered" else replayed.outcome.replace("_", " ")
    )
    reversals = reversals_of.get(step.number, [])
    line = TxnLine(
        number=step.number,
        connection=step.txn.connection,
        terminal_id=fields.get("41"),
        stan=fields.get("11"),
        mti=request.mti,
        pan=mask_pan(pan) if pan else None,
        amount=fields.get("4"),
        captured=captured,
        host_then=step.host_fate,
        replayed=shown_now,
        forwarded=any(r.step is step and r.kind != "network" for r in host_requests),
        reversals=[],
        reversal_expected=step.expects_reversal,
    )
    diffs = line.differences
    # The gateway declines the requests it reverses (0100/0200) when no answer comes.
    declines_due = base_mti(request.mti) in declined_mtis
    if replayed.outcome == "not_sent":
        diffs.append("not sent (the replay could not reach the gateway)")
    elif then is not None:
        if replayed.outcome != "answered":
            diffs.append(f"answered {captured} then, {shown_now} now")
        elif now != then.response_code:
            diffs.append(f"response code {captured} then, {now} now")
        elif replayed.fields is not None:
            diffs += _field_differences("response", then.fields, replayed.fields, ignored | {"39"})
    elif step.host_fate in NO_ANSWER_FATES and declines_due:
        if replayed.outcome != "answered":
            diffs.append(f"no answer now either ({shown_now}): the gateway should decline")
        elif now in APPROVAL_CODES:
            diffs.append(f"approved ({now}) now, though the host never answered")
    distinct = {(base_mti(r.mti), r.fields.get("11"), r.fields.get("90")) for r in reversals}
    if step.expects_reversal and not reversals and replayed.outcome != "not_sent":
        diffs.append("not reversed, though the host never answered it")
    if reversals and not step.expects_reversal:
        diffs.append("reversed, though the capture shows the host answered it")
    if len(distinct) > 1:
        diffs.append(f"reversed {len(distinct)} times (0400 and its repeats should be one)")
    diffs += _forwarding_differences(step, host_requests, ignored)
    if diffs:
        line.verdict = "differs"
    elif then is None and step.expects_reversal:
        line.verdict = "repaired"
    return line


def _forwarding_differences(
    step: Step, host_requests: list[HostRequest], ignored: frozenset[str]
) -> list[str]:
    """The request the host got now vs then (a gateway forwards it unchanged, STAN aside)."""
    received = next((r for r in host_requests if r.step is step and r.kind != "network"), None)
    then = step.host_txn.request if step.host_txn is not None else None
    if then is None:
        return ["forwarded to the acquirer now; the capture shows it was not"] if received else []
    if received is None:
        if step.txn.request.mti[1] == "4":
            return []  # a terminal's reversal the gateway may answer itself (already reversed)
        return [f"{NOT_FORWARDED}; the capture shows it was"]
    return _field_differences("forwarded request", then.fields, received.fields, ignored)


def _field_differences(
    what: str, then: Mapping[str, str], now: Mapping[str, str], ignored: frozenset[str]
) -> list[str]:
    names = sorted((set(then) | set(now)) - ignored, key=int)
    return [
        f"{what} DE {name}: {_shown(name, then.get(name))} then, {_shown(name, now.get(name))} now"
        for name in names
        if then.get(name) != now.get(name)
    ]


def _shown(name: str, value: str | None) -> str:
    if value is None:
        return "absent"
    if name in DEFAULT_SENSITIVE_FIELDS:
        return f"<{len(value)} chars>"
    if name in PAN_FIELDS:
        return mask_pan(value)
    return repr(redact_text(value))


# --- text --------------------------------------------------------------------------------------


def render(report: ReplayReport) -> str:
    count = len(report.transactions)
    rate = f" ({count / report.elapsed:.1f}/s)" if report.elapsed > 0 and count else ""
    out = [
        f"replay of {report.file} ({report.dialect}) against {report.target}, {report.pace}",
        f"{count} transactions in {report.elapsed:.2f} s{rate}",
        "",
    ]
    rows = [["TXN", "CONN", "TERMINAL", "STAN", "MTI", "PAN", "AMOUNT", "CAPTURED", "REPLAYED",
             "REVERSED", "RESULT"]]  # fmt: skip
    notes: dict[int, list[str]] = {}
    for txn in report.transactions:
        rows.append([
            str(txn.number), str(txn.connection), txn.terminal_id or "-", txn.stan or "-",
            txn.mti, txn.pan or "-", txn.amount or "-", txn.captured, txn.replayed,
            ",".join(f"#{n}" for n in txn.reversals) or "-", txn.verdict,
        ])  # fmt: skip
        notes[len(rows) - 1] = [f"      - {difference}" for difference in txn.differences]
    out += _table(rows, notes)
    out.append("")
    if report.reversals:
        out.append("reversals the gateway sent (acknowledged 00 by the built-in host):")
        rows = [["#", "AT", "MTI", "STAN", "REASON", "ANSWER", "BY", "REVERSES"]]
        for rev in report.reversals:
            rows.append([
                f"#{rev.number}", f"+{rev.offset:.3f}s", rev.mti, rev.stan or "-",
                rev.reason or "-", rev.answer or "-", rev.by,
                f"txn {rev.reverses}" if rev.reverses is not None else "nothing",
            ])  # fmt: skip
        out += ["  " + line for line in _table(rows, {})]
    else:
        out.append("reversals the gateway sent: none")
    if report.network_messages:
        out.append(f"network management messages answered 00: {report.network_messages}")
    if report.problems:
        out += ["", "other differences:"] + [f"  - {problem}" for problem in report.problems]
    out += [f"hint: {hint}" for hint in report.hints]
    counts = report.counts()
    result = "no differences" if report.ok else f"{report.differences} difference(s)"
    out += [
        "",
        f"summary: {count} transactions: {counts['same']} same, {counts['repaired']} repaired "
        f"(no answer then, declined and reversed now), {counts['differs']} differ; "
        f"{len(report.problems)} other difference(s)",
        f"ignored fields: {', '.join('DE ' + f for f in report.ignored) or 'none'}",
        f"result: {result}",
    ]
    return "\n".join(out)


def _table(rows: list[list[str]], notes: Mapping[int, list[str]]) -> list[str]:
    """Rows in columns as wide as their widest cell; ``notes`` go under their row."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines: list[str] = []
    for index, row in enumerate(rows):
        lines.append(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
        lines += notes.get(index, [])
    return lines
