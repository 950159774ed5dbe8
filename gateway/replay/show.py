"""`iso-gateway capture show`: a capture as one line per message, requests paired with answers.

Each line: time (UTC), connection, direction (``T>H`` terminal to host, ``H>T`` back), MTI,
STAN, terminal id, response code, masked PAN, the transaction it belongs to and a note: how
long the answer took, or that a request never got one (``NO RESPONSE``, or ``CUT`` when the
host closed the connection instead). No full PAN, track data or PIN block is ever shown.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gateway.replay.capture import Capture, CapturedMessage, Connection
from gateway.sim.ledger import pan_of
from gateway.wire.masking import mask_pan

_FATE_NOTES = {
    "no_response": "NO RESPONSE",
    "cut": "CUT: the host closed the connection instead of answering",
}


def _clock(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%H:%M:%S.%f")


def _date(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M:%S.%f UTC")


def _endpoint(end: tuple[str, int]) -> str:
    host, port = end
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _pan(message: CapturedMessage) -> str | None:
    pan = pan_of(message.fields)
    return mask_pan(pan) if pan else None


def _notes(capture: Capture) -> dict[int, str]:
    """Message number -> its note."""
    notes: dict[int, str] = {}
    for txn in capture.transactions:
        if txn.response is None:
            notes[txn.request.number] = _FATE_NOTES[txn.fate]
        else:
            latency = txn.response.time - txn.request.time
            notes[txn.response.number] = f"answered in {latency * 1000:.1f} ms"
    for message in capture.unmatched_responses:
        notes[message.number] = "UNMATCHED: answers no request of this connection"
    for message in capture.messages:
        if message.error is not None:
            notes[message.number] = f"UNDECODABLE: {message.error}"
    return notes


def message_rows(capture: Capture) -> list[dict[str, Any]]:
    notes = _notes(capture)
    return [
        {
            "number": m.number,
            "time": round(m.time, 6),
            "connection": m.connection,
            "direction": "to_host" if m.sender == "terminal" else "to_terminal",
            "mti": m.mti or None,
            "stan": m.stan,
            "terminal_id": m.terminal_id,
            "response_code": m.response_code,
            "pan": _pan(m),
            "transaction": m.transaction,
            "note": notes.get(m.number),
        }
        for m in capture.messages
    ]


def connection_row(connection: Connection) -> dict[str, Any]:
    return {
        "number": connection.number,
        "terminal": _endpoint(connection.terminal),
        "host": _endpoint(connection.host),
        "roles_from": connection.roles_from,
        "leg": connection.leg or None,
        "opened": round(connection.opened_at, 6),
        "closed": round(connection.closed_at, 6) if connection.closed_at is not None else None,
        "closed_by": connection.closed_by,
        "reset": connection.reset,
    }


def summary(capture: Capture) -> dict[str, Any]:
    fates = {"answered": 0, "no_response": 0, "cut": 0}
    for txn in capture.transactions:
        fates[txn.fate] += 1
    return {
        "connections": len(capture.connections),
        "messages": len(capture.messages),
        "transactions": len(capture.transactions),
        **fates,
        "unmatched_responses": len(capture.unmatched_responses),
        "undecodable": sum(m.error is not None for m in capture.messages),
        "other_connections": capture.ignored_connections,
        "packets": capture.file.packets,
    }


def as_json(capture: Capture) -> dict[str, Any]:
    return {
        "file": capture.path,
        "dialect": capture.dialect.name,
        "summary": summary(capture),
        "connections": [connection_row(c) for c in capture.connections],
        "messages": message_rows(capture),
        "transactions": [
            {
                "number": txn.number,
                "connection": txn.connection,
                "request": txn.request.number,
                "response": txn.response.number if txn.response is not None else None,
                "fate": txn.fate,
                "latency_ms": round(txn.latency * 1000, 3) if txn.latency is not None else None,
            }
            for txn in capture.transactions
        ],
        "notes": capture.notes,
    }


_ROLE_SOURCES = {
    "syn": "from its SYN",
    "syn-ack": "from the SYN+ACK",
    "port": "from the given ports",
    "messages": "from who sent requests",
    "guess": "guessed: lower port is the host",
}


def render(capture: Capture) -> str:
    facts = summary(capture)
    start = min((m.time for m in capture.messages), default=capture.start_time)
    out = [
        f"{capture.path} ({capture.dialect.name}), from {_date(start)}",
        f"{facts['connections']} connection(s), {facts['messages']} message(s), "
        f"{facts['transactions']} request(s): {facts['answered']} answered, "
        f"{facts['no_response']} without a response, {facts['cut']} cut by the host",
        "",
        "connections (terminal end -> host end):",
    ]
    for c in capture.connections:
        closed = (
            f"closed by the {c.closed_by}{' (reset)' if c.reset else ''} at {_clock(c.closed_at)}"
            if c.closed_at is not None and c.closed_by is not None
            else "still open at the end of the capture"
        )
        leg = f" [{c.leg} side]" if c.leg else ""
        out.append(
            f"  {c.number:>3}  {_endpoint(c.terminal)} -> {_endpoint(c.host)}{leg}  "
            f"(terminal end {_ROLE_SOURCES.get(c.roles_from, c.roles_from)}), {closed}"
        )
    out.append("")
    rows = [["#", "TIME (UTC)", "CONN", "DIR", "MTI", "STAN", "TERMINAL", "RC", "PAN", "TXN",
             "NOTE"]]  # fmt: skip
    for m in message_rows(capture):
        rows.append([
            str(m["number"]), _clock(m["time"]), str(m["connection"]),
            "T>H" if m["direction"] == "to_host" else "H>T", m["mti"] or "?",
            m["stan"] or "-", m["terminal_id"] or "-", m["response_code"] or "-",
            m["pan"] or "-", str(m["transaction"] or "-"), m["note"] or "",
        ])  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    unanswered = [t for t in capture.transactions if t.response is None]
    out.append("")
    if unanswered:
        out.append(
            f"requests without a response: {len(unanswered)} (transactions "
            + ", ".join(str(t.number) for t in unanswered)
            + ")"
        )
    else:
        out.append("every request got a response")
    if capture.notes:
        out += ["", "notes:"] + [f"  - {note}" for note in capture.notes]
    return "\n".join(out)
