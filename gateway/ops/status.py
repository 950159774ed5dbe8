"""`iso-gateway status`: a one-screen summary from the metrics endpoint or from the journal.

From a running gateway's ``/metrics``: link state, in-flight requests, owed and failed
reversals, the age of the oldest owed one, and rates (from two scrapes ``sample`` seconds
apart). From the journal, when the gateway is not running: what is owed, what failed, and the
authorizations in doubt (open with no reversal: the next start reverses them).

Only counts, ages and states: nothing here ever holds a PAN, so nothing can print one.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gateway.core.records import (
    AuthorizationRecord,
    AuthState,
    ReversalRecord,
    ReversalState,
)

PREFIX = "iso_gateway_"

Samples = dict[str, list[tuple[dict[str, str], float]]]


class StatusError(Exception):
    """The metrics endpoint could not be read or is not a gateway's."""


def metrics_url(address: str) -> str:
    """``HOST:PORT`` -> ``http://HOST:PORT/metrics``; a full URL is kept; 0.0.0.0 -> 127.0.0.1."""
    if "://" not in address:
        host, _, port = address.rpartition(":")
        if host in ("", "0.0.0.0", "::", "[::]"):
            host = "127.0.0.1"
        address = f"http://{host}:{port}/metrics"
    return address


def fetch_metrics(url: str, timeout: float = 5.0) -> str:
    if not url.startswith(("http://", "https://")):
        raise StatusError(f"not an http(s) URL: {url}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body: bytes = response.read()
    except urllib.error.HTTPError as error:
        raise StatusError(f"{url} answered HTTP {error.code}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise StatusError(f"cannot read {url}: {reason}") from None
    return body.decode("utf-8", errors="replace")


def parse_samples(text: str) -> Samples:
    """Every sample by its name (``_total``, ``_bucket`` ... included) with its labels."""
    samples: Samples = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    except ValueError as error:
        raise StatusError(f"not Prometheus text format: {error}") from None
    return samples


def _value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
    return sum(
        value
        for sample_labels, value in samples.get(PREFIX + name, ())
        if all(sample_labels.get(key) == wanted for key, wanted in labels.items())
    )


def _by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for labels, value in samples.get(PREFIX + name, ()):
        key = labels.get(label, "")
        totals[key] = totals.get(key, 0.0) + value
    return totals


def status_from_metrics(
    text: str, earlier: str | None = None, interval: float = 0.0
) -> dict[str, Any]:
    samples = parse_samples(text)
    if PREFIX + "build_info" not in samples:
        raise StatusError("the endpoint has no iso_gateway_build_info: is it an iso-gateway?")
    info = samples[PREFIX + "build_info"][0][0]
    links = [
        {
            "link": labels["link"],
            "up": value == 1,
            "reconnects": int(_value(samples, "acquirer_reconnects_total", link=labels["link"])),
            "echo_failures": int(
                _value(samples, "acquirer_echo_failures_total", link=labels["link"])
            ),
        }
        for labels, value in samples.get(PREFIX + "acquirer_link_up", ())
    ]
    outcomes = {
        outcome: int(count)
        for outcome, count in sorted(_by_label(samples, "requests_total", "outcome").items())
        if count
    }
    status: dict[str, Any] = {
        "source": "metrics",
        "version": info.get("version"),
        "dialect": info.get("dialect"),
        "links": links,
        "links_up": sum(1 for link in links if link["up"]),
        "in_flight": int(_value(samples, "in_flight_requests")),
        "authorizations_open": int(_value(samples, "authorizations_open")),
        "reversals": {
            "owed": int(_value(samples, "reversals_owed")),
            "waiting_for_link": int(_value(samples, "reversals_waiting_for_link")),
            "failed": int(_value(samples, "reversals_failed")),
            "oldest_owed_age_seconds": round(
                _value(samples, "oldest_owed_reversal_age_seconds"), 1
            ),
            "acknowledged_total": int(_value(samples, "reversals_total", result="acknowledged")),
        },
        "requests": {"total": sum(outcomes.values()), "by_outcome": outcomes},
        "late_responses": int(_value(samples, "late_responses_total")),
        "format_errors": int(_value(samples, "format_errors_total")),
        "terminals": {
            "open": int(_value(samples, "terminal_connections_open")),
            "total": int(_value(samples, "terminal_connections_total")),
        },
        "mqtt": None,
        "rates": None,
    }
    if PREFIX + "mqtt_connected" in samples:
        status["mqtt"] = {
            "connected": _value(samples, "mqtt_connected") == 1,
            "dropped": int(_value(samples, "mqtt_events_dropped_total")),
        }
    if earlier is not None and interval > 0:
        status["rates"] = _rates(parse_samples(earlier), samples, interval)
    status["attention"] = _attention(status)
    return status


def _rates(before: Samples, after: Samples, interval: float) -> dict[str, Any]:
    """Requests per second over the interval, in total and by outcome."""
    first = _by_label(before, "requests_total", "outcome")
    second = _by_label(after, "requests_total", "outcome")
    deltas = {key: _increase(first.get(key, 0.0), value) for key, value in second.items()}
    return {
        "interval_seconds": interval,
        "requests_per_second": round(sum(deltas.values()) / interval, 2),
        "by_outcome": {
            key: round(delta / interval, 2) for key, delta in sorted(deltas.items()) if delta
        },
    }


def _increase(before: float, after: float) -> float:
    """A counter that went down was reset (the gateway restarted): it counted from 0."""
    return after - before if after >= before else after


def _attention(status: Mapping[str, Any]) -> list[str]:
    """What an operator must look at now, most urgent first."""
    notes: list[str] = []
    reversals = status["reversals"]
    if reversals["failed"]:
        notes.append(
            f"{reversals['failed']} failed reversal(s): funds may be held "
            "(`iso-gateway saf list`, then `saf retry`)"
        )
    links = status.get("links")
    if links is not None and links and not status["links_up"]:
        notes.append("no acquirer link is up: every request is declined")
    elif links:
        down = [link["link"] for link in links if not link["up"]]
        if down:
            notes.append(f"acquirer link(s) down: {', '.join(down)}")
    if reversals.get("waiting_for_link"):
        notes.append(f"{reversals['waiting_for_link']} reversal(s) waiting for an acquirer link")
    if reversals.get("oldest_owed_age_seconds", 0) >= 600:
        minutes = reversals["oldest_owed_age_seconds"] / 60
        notes.append(f"the oldest owed reversal is {minutes:.0f} min old")
    if status.get("in_doubt_authorizations"):
        notes.append(
            f"{status['in_doubt_authorizations']} authorization(s) in doubt: the next start "
            "reverses them"
        )
    mqtt = status.get("mqtt")
    if mqtt is not None and not mqtt["connected"]:
        notes.append("MQTT publisher disconnected: events queue up, beyond the queue dropped")
    return notes


def status_from_journal(
    authorizations: Iterable[AuthorizationRecord],
    reversals: Iterable[ReversalRecord],
    now: float,
) -> dict[str, Any]:
    """From the journal's open records (``Journal.load_open``): what is owed, failed, in doubt."""
    owed = sent = failed = 0
    oldest: float | None = None
    with_reversal: set[int] = set()
    for rev in reversals:
        with_reversal.add(rev.txn_id)
        if rev.state is ReversalState.FAILED:
            failed += 1
            continue
        if rev.state is ReversalState.SENT:
            sent += 1
        elif rev.state is ReversalState.OWED:
            owed += 1
        else:
            continue
        oldest = rev.created_at if oldest is None else min(oldest, rev.created_at)
    in_doubt = [
        auth
        for auth in authorizations
        if auth.state in (AuthState.IN_FLIGHT, AuthState.APPROVED)
        and auth.txn_id not in with_reversal
    ]
    oldest_doubt = min((auth.created_at for auth in in_doubt), default=None)
    status: dict[str, Any] = {
        "source": "journal",
        "reversals": {
            "owed": owed + sent,
            "sent_before_stop": sent,
            "failed": failed,
            "oldest_owed_age_seconds": round(now - oldest, 1) if oldest is not None else 0.0,
        },
        "in_doubt_authorizations": len(in_doubt),
        "oldest_in_doubt_age_seconds": (
            round(now - oldest_doubt, 1) if oldest_doubt is not None else 0.0
        ),
    }
    status["attention"] = _attention(status)
    return status


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def render(status: Mapping[str, Any]) -> str:
    """The one-screen text form."""
    lines: list[str] = []
    attention = status.get("attention") or []
    lines.append("ATTENTION" if attention else "OK: nothing owed is stuck")
    lines.extend(f"  ! {note}" for note in attention)
    reversals = status["reversals"]
    owed_line = (
        f"{reversals['owed']} owed, {reversals['failed']} failed, "
        f"oldest owed {_age(reversals['oldest_owed_age_seconds'])}"
    )
    if status["source"] == "journal":
        lines.append(
            f"source         journal {status.get('path', '')} (a snapshot: a running gateway "
            "may be handling some of this)"
        )
        lines.append(f"reversals      {owed_line}")
        lines.append(
            f"in doubt       {status['in_doubt_authorizations']} authorization(s), oldest "
            f"{_age(status['oldest_in_doubt_age_seconds'])}"
        )
        return "\n".join(lines)
    lines.append(
        f"source         {status.get('url', 'metrics')} "
        f"(iso-gateway {status['version']}, {status['dialect']})"
    )
    links = status["links"]
    detail = ", ".join(
        f"link {link['link']} {'up' if link['up'] else 'DOWN'}"
        f" ({link['reconnects']} reconnects, {link['echo_failures']} echo failures)"
        for link in links
    )
    lines.append(f"acquirer       {status['links_up']}/{len(links)} up: {detail}")
    lines.append(
        f"in flight      {status['in_flight']} request(s), "
        f"{status['authorizations_open']} authorization(s) open"
    )
    lines.append(
        f"reversals      {owed_line}, {reversals['waiting_for_link']} waiting for a link, "
        f"{reversals['acknowledged_total']} acknowledged since start"
    )
    requests = status["requests"]
    outcomes = ", ".join(f"{k} {v}" for k, v in requests["by_outcome"].items()) or "none"
    lines.append(f"requests       {requests['total']} since start: {outcomes}")
    rates = status.get("rates")
    if rates is not None:
        by_outcome = ", ".join(f"{k} {v}/s" for k, v in rates["by_outcome"].items())
        lines.append(
            f"rate           {rates['requests_per_second']}/s over "
            f"{rates['interval_seconds']:g} s" + (f": {by_outcome}" if by_outcome else "")
        )
    terminals = status["terminals"]
    lines.append(
        f"terminals      {terminals['open']} connected, {terminals['total']} since start; "
        f"{status['format_errors']} format error(s), {status['late_responses']} late response(s)"
    )
    mqtt = status.get("mqtt")
    if mqtt is not None:
        state = "connected" if mqtt["connected"] else "DISCONNECTED"
        lines.append(f"mqtt           {state}, {mqtt['dropped']} event(s) dropped")
    return "\n".join(lines)
