"""Notify kinds and their data: news for logs, metrics and MQTT.

Data holds low-risk fields only: ids, MTI, STAN, terminal id, masked PAN, codes, reason,
attempts, link, outcome. Never a full PAN, track data or anything from DE 52/55.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.core.reversal import pan_from_track2
from gateway.core.tracking import Authorization, Reversal
from gateway.wire.masking import mask_pan

TRANSACTION_COMPLETED = "transaction_completed"  # outcome: approved, declined, answered,
# timeout, link_down, no_link, overloaded, shutting_down, no_stan
DUPLICATE_REQUEST = "duplicate_request"  # outcome: waiting, cached, declined
LATE_RESPONSE = "late_response"
UNMATCHED_RESPONSE = "unmatched_response"  # reason: no_request, already_answered, ...
UNDELIVERABLE_RESPONSE = "undeliverable_response"  # outcome: closed, write_failed
REVERSAL_OWED = "reversal_owed"
REVERSAL_SENT = "reversal_sent"
REVERSAL_ACKNOWLEDGED = "reversal_acknowledged"
REVERSAL_FAILED = "reversal_failed"
REVERSAL_CANCELLED = "reversal_cancelled"
REVERSAL_REQUEUED = "reversal_requeued"
TERMINAL_REVERSAL = "terminal_reversal"  # outcome: forwarded, merged, answered, no_link
REQUEST_REJECTED = "request_rejected"  # a terminal sent something that is not a request

KINDS = (
    TRANSACTION_COMPLETED, DUPLICATE_REQUEST, LATE_RESPONSE, UNMATCHED_RESPONSE,
    UNDELIVERABLE_RESPONSE, REVERSAL_OWED, REVERSAL_SENT, REVERSAL_ACKNOWLEDGED,
    REVERSAL_FAILED, REVERSAL_CANCELLED, REVERSAL_REQUEUED, TERMINAL_REVERSAL, REQUEST_REJECTED,
)  # fmt: skip


def masked_pan_of(fields: Mapping[str, str]) -> str | None:
    pan = fields.get("2")
    if pan is None and "35" in fields:
        pan = pan_from_track2(fields["35"])
    return mask_pan(pan) if pan else None


def request_data(
    mti: str,
    fields: Mapping[str, str],
    outcome: str,
    auth: Authorization | None = None,
    response_code: str | None = None,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "mti": mti,
        "stan": fields.get("11"),
        "rrn": fields.get("37"),
        "terminal_id": fields.get("41"),
        "outcome": outcome,
    }
    masked = masked_pan_of(fields)
    if masked:
        data["masked_pan"] = masked
    if auth is not None:
        data["txn_id"] = auth.txn_id
    if response_code is not None:
        data["response_code"] = response_code
    return data


def auth_data(auth: Authorization, outcome: str) -> dict[str, Any]:
    return {
        "txn_id": auth.txn_id,
        "mti": auth.mti,
        "stan": auth.stan,
        "rrn": auth.rrn,
        "terminal_id": auth.terminal_id,
        "response_code": auth.response_code,
        "outcome": outcome,
    }


def reversal_data(rev: Reversal) -> dict[str, Any]:
    data: dict[str, Any] = {
        "reversal_id": rev.reversal_id,
        "txn_id": rev.txn_id,
        "mti": rev.mti,
        "stan": rev.stan,
        "rrn": rev.fields.get("37"),
        "terminal_id": rev.fields.get("41"),
        "reason": rev.reason.value,
        "attempts": rev.attempts,
        "state": rev.state.value,
    }
    masked = masked_pan_of(rev.fields)
    if masked:
        data["masked_pan"] = masked
    if rev.last_response_code is not None:
        data["response_code"] = rev.last_response_code
    if rev.link_id is not None:
        data["link_id"] = rev.link_id
    return data


def response_data(mti: str, fields: Mapping[str, str], link_id: int, reason: str) -> dict[str, Any]:
    return {
        "mti": mti,
        "stan": fields.get("11"),
        "rrn": fields.get("37"),
        "terminal_id": fields.get("41"),
        "response_code": fields.get("39"),
        "link_id": link_id,
        "reason": reason,
    }
