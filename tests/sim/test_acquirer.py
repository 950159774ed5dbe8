"""The acquirer simulator on a real socket: answers, ledger, rules, faults, pause/resume."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

from gateway.sim.acquirer import AcquirerSimulator
from gateway.sim.rules import FaultRates, Rule
from gateway.sim.terminals import TerminalClient
from gateway.wire.codec import Codec, CodecError
from gateway.wire.dialect import Dialect
from gateway.wire.framing import Frame, Framing, encode_frame

PAN = "4761739001010010"


def sale(stan: str = "000101", terminal: str = "TERM0001", **extra: str) -> dict[str, str]:
    fields = {
        "2": PAN,
        "3": "000000",
        "4": "000000001500",
        "7": "1125103000",
        "11": stan,
        "12": "103000",
        "13": "1125",
        "22": "051",
        "25": "00",
        "35": PAN + "=27122010000000000",
        "37": "512510000101",
        "41": terminal,
        "42": "MERCHANT0000001",
        "49": "840",
        "52": "0123456789ABCDEF",
    }
    fields.update(extra)
    return fields


def reversal_of(original: dict[str, str], stan: str, de7: str = "1125103100") -> dict[str, str]:
    return {
        "2": original["2"],
        "3": original["3"],
        "4": original["4"],
        "7": de7,
        "11": stan,
        "39": "68",
        "41": original["41"],
        "42": original["42"],
        "49": original["49"],
        "90": "0200" + original["11"] + original["7"] + "0" * 22,
    }


async def client_for(sim: AcquirerSimulator, **options: object) -> TerminalClient:
    return await TerminalClient.connect(sim.host, sim.port, sim.dialect, **options)


async def test_an_approval_echoes_the_request_and_holds_the_amount(
    acquirer: AcquirerSimulator,
) -> None:
    async with await client_for(acquirer) as client:
        answer = await client.send("0200", sale())

    assert answer is not None
    assert answer.mti == "0210"
    request = sale()
    for field in ("2", "3", "4", "7", "11", "12", "13", "37", "41", "42", "49"):
        assert answer.get(field) == request[field], field
    assert answer.get("39") == "00"
    approval = answer.get("38")
    assert approval is not None and len(approval) == 6
    assert answer.get("35") is None and answer.get("52") is None  # never echoed

    (hold,) = acquirer.ledger.holds
    assert hold.approval_code == approval
    assert (hold.key.terminal_id, hold.key.stan, hold.amount) == ("TERM0001", "000101", 1500)
    assert acquirer.counters.requests["0200"] == 1
    assert acquirer.counters.responses["00"] == 1


async def test_an_rrn_is_made_when_the_request_has_none(acquirer: AcquirerSimulator) -> None:
    request = sale()
    del request["37"]
    async with await client_for(acquirer) as client:
        answer = await client.send("0100", request)
    assert answer is not None and answer.mti == "0110"
    rrn = answer.get("37")
    assert rrn is not None and len(rrn) == 12
    assert acquirer.ledger.holds[0].rrn == rrn


async def test_network_management_is_answered_with_de70(acquirer: AcquirerSimulator) -> None:
    async with await client_for(acquirer) as client:
        echo = await client.send("0800", {"7": "1125103000", "11": "000001", "70": "301"})
        sign_on = await client.send("0800", {"7": "1125103000", "11": "000002", "70": "001"})
    assert echo is not None and sign_on is not None
    assert (echo.mti, echo.get("39"), echo.get("70")) == ("0810", "00", "301")
    assert (sign_on.get("11"), sign_on.get("70")) == ("000002", "001")
    assert acquirer.ledger.holds == []


async def test_reversals_release_once_repeat_and_duplicate(acquirer: AcquirerSimulator) -> None:
    original = sale()
    async with await client_for(acquirer) as client:
        await client.send("0200", original)
        first = await client.send("0400", reversal_of(original, "000900"))
        repeat = await client.send("0401", reversal_of(original, "000900"))
        second = await client.send("0400", reversal_of(original, "000901", "1125103300"))
        unknown = await client.send("0400", reversal_of(sale(stan="000555"), "000902"))

    assert first is not None and repeat is not None and second is not None
    assert unknown is not None
    assert (first.mti, first.get("39")) == ("0410", "00")
    assert (repeat.mti, repeat.get("39")) == ("0410", "00")
    assert second.get("39") == "00"  # default: a duplicate is answered as done
    assert unknown.get("39") == "25"
    summary = acquirer.ledger.summary()
    assert summary["released"] == 1
    assert summary["reversals_repeat"] == 1
    assert summary["reversals_duplicate"] == 1
    assert summary["reversals_unknown"] == 1
    assert acquirer.counters.requests["0401"] == 1
    assert acquirer.counters.requests["0400"] == 3


async def test_the_duplicate_reversal_code_is_configurable(iso87: Dialect) -> None:
    sim = AcquirerSimulator(iso87, duplicate_reversal_code="94")
    await sim.start()
    try:
        original = sale()
        async with await client_for(sim) as client:
            await client.send("0200", original)
            await client.send("0400", reversal_of(original, "000900"))
            second = await client.send("0400", reversal_of(original, "000901", "1125103300"))
        assert second is not None and second.get("39") == "94"
    finally:
        await sim.stop()


async def test_rules_decline_and_a_declined_original_is_not_held(iso87: Dialect) -> None:
    sim = AcquirerSimulator(
        iso87,
        rules=[
            Rule(terminal_id=frozenset({"TERM0002"}), mti=frozenset({"0200"}), response_code="51"),
            Rule(processing_code=("31",), response_code="00"),
        ],
    )
    await sim.start()
    try:
        declined = sale(terminal="TERM0002")
        async with await client_for(sim) as client:
            answer = await client.send("0200", declined)
            reversal = await client.send("0400", reversal_of(declined, "000900"))
            balance = await client.send("0200", sale(stan="000102", **{"3": "310000"}))
        assert answer is not None and answer.get("39") == "51" and answer.get("38") is None
        assert reversal is not None and reversal.get("39") == "25"
        assert balance is not None and balance.get("39") == "00"
        assert sim.ledger.holds == []  # a decline and a balance inquiry hold nothing
        assert sim.ledger.summary()["declined"] == 1
        assert sim.rules.applied() == {"rule 1": 1, "rule 2": 1}
    finally:
        await sim.stop()


async def test_a_reversal_answered_with_an_error_releases_nothing(iso87: Dialect) -> None:
    sim = AcquirerSimulator(
        iso87, rules=[Rule(mti=frozenset({"0400"}), response_code="96", times=1)]
    )
    await sim.start()
    try:
        original = sale()
        async with await client_for(sim) as client:
            await client.send("0200", original)
            failed = await client.send("0400", reversal_of(original, "000900"))
            retried = await client.send("0401", reversal_of(original, "000900"))
        assert failed is not None and failed.get("39") == "96"
        assert retried is not None and retried.get("39") == "00"
        assert sim.ledger.summary()["reversals_released"] == 1
        assert sim.ledger.summary()["reversals"] == 1
    finally:
        await sim.stop()


@pytest.mark.parametrize("fault", ["drop", "close", "garbage"])
async def test_a_faulted_approval_still_holds(iso87: Dialect, fault: str) -> None:
    sim = AcquirerSimulator(iso87, rules=[Rule(mti=frozenset({"0200"}), fault=fault)])  # type: ignore[arg-type]
    await sim.start()
    try:
        client = await client_for(sim, timeout=0.3)
        answer = await client.send("0200", sale())
        assert answer is None
        if fault == "close":
            assert await client.wait_closed(5.0)
        if fault == "garbage":
            frame = await client.receive(5.0)
            assert frame is not None
            with pytest.raises(CodecError):
                Codec(iso87).decode(frame.message)
        await client.close()
        assert sim.ledger.summary()["holds_open"] == 1  # the host approved it
        assert sim.counters.faults[fault] == 1
    finally:
        await sim.stop()


async def test_a_late_answer_comes_after_the_terminal_gave_up(iso87: Dialect) -> None:
    sim = AcquirerSimulator(iso87, rules=[Rule(fault="late", seconds=1.0)])
    await sim.start()
    try:
        async with await client_for(sim) as client:
            assert await client.send("0200", sale(), timeout=0.1) is None
            late = await client.receive(10.0)
        assert late is not None
        answer = Codec(iso87).decode(late.message)
        assert (answer.mti, answer.get("11"), answer.get("39")) == ("0210", "000101", "00")
    finally:
        await sim.stop()


async def test_a_delayed_answer_arrives(iso87: Dialect) -> None:
    sim = AcquirerSimulator(iso87, faults=FaultRates(delay_rate=1.0, delay=0.05))
    await sim.start()
    try:
        async with await client_for(sim) as client:
            answer = await client.send("0200", sale(), timeout=10.0)
        assert answer is not None and answer.get("39") == "00"
        assert sim.counters.faults["delay"] == 1
    finally:
        await sim.stop()


async def test_tpdu_is_swapped_and_header_kept(iso87: Dialect) -> None:
    framed = dataclasses.replace(iso87, framing=Framing("binary2", tpdu=True, header_length=6))
    sim = AcquirerSimulator(framed)
    await sim.start()
    try:
        tpdu, header = bytes.fromhex("6000010002"), bytes.fromhex("603100311003")
        async with await client_for(sim, tpdu=tpdu, header=header) as client:
            answer = await client.send("0200", sale())
            frame = client.last_frame
        assert answer is not None and frame is not None
        assert frame.tpdu == bytes.fromhex("6000020001")
        assert frame.header == header
    finally:
        await sim.stop()


async def test_answers_to_several_frames_in_one_read_all_arrive(
    acquirer: AcquirerSimulator, iso87: Dialect
) -> None:
    codec = Codec(iso87)
    burst = b"".join(
        encode_frame(iso87.framing, Frame(codec.encode("0200", sale(stan=f"{n:06d}"))))
        for n in range(1, 6)
    )
    async with await client_for(acquirer) as client:
        client.send_raw(burst)
        frames = [await client.receive(5.0) for _ in range(5)]
    stans = [codec.decode(frame.message).get("11") for frame in frames if frame is not None]
    assert stans == [f"{n:06d}" for n in range(1, 6)]


async def test_an_undecodable_frame_is_counted_not_answered(
    acquirer: AcquirerSimulator, iso87: Dialect
) -> None:
    async with await client_for(acquirer) as client:
        client.send_raw(encode_frame(iso87.framing, Frame(b"0200\x00garbage")))
        answer = await client.send("0200", sale())  # the connection still works
    assert answer is not None and answer.get("39") == "00"
    assert acquirer.counters.undecodable == 1


async def test_pause_closes_and_refuses_then_resume_accepts(acquirer: AcquirerSimulator) -> None:
    client = await client_for(acquirer)
    await acquirer.pause()
    assert await client.wait_closed(5.0)
    with pytest.raises(OSError):
        await TerminalClient.connect(acquirer.host, acquirer.port, acquirer.dialect)

    await acquirer.resume()
    async with await client_for(acquirer) as again:
        answer = await again.send("0200", sale())
    assert answer is not None and answer.get("39") == "00"
    assert acquirer.counters.connections == 2


async def test_the_snapshot_shows_no_card_data(acquirer: AcquirerSimulator) -> None:
    async with await client_for(acquirer) as client:
        await client.send("0200", sale())
    text = json.dumps(acquirer.snapshot())
    assert PAN not in text
    assert "476173******0010" in text


async def test_cup_sale_and_same_stan_reversal(cup: Dialect) -> None:
    sim = AcquirerSimulator(cup)
    await sim.start()
    try:
        sale_fields = {
            "2": "6224242900000113",
            "3": "000000",
            "4": "000000000001",
            "11": "000403",
            "22": "071",
            "25": "00",
            "41": "10000019",
            "42": "850100082410002",
            "49": "156",
            "60": "22000024000600",
        }
        async with await client_for(sim) as client:
            answer = await client.send("0200", sale_fields)
            frame = client.last_frame
            reversal = await client.send("0400", {**sale_fields, "39": "98"})
        assert answer is not None and frame is not None and reversal is not None
        assert (answer.get("39"), answer.get("60"), answer.get("11")) == (
            "00",
            "22000024000600",
            "000403",
        )
        assert frame.tpdu == bytes.fromhex("6000000006")
        assert frame.header == bytes.fromhex("603100311003")
        assert (reversal.mti, reversal.get("39")) == ("0410", "00")
        assert sim.ledger.summary()["reversals_released"] == 1
    finally:
        await sim.stop()


async def test_stop_cancels_pending_late_answers(iso87: Dialect) -> None:
    sim = AcquirerSimulator(iso87, faults=FaultRates(late_rate=1.0, late=60.0))
    await sim.start()
    client = await client_for(sim)
    assert await client.send("0200", sale(), timeout=0.1) is None
    await sim.stop()
    assert await client.wait_closed(5.0)
    await asyncio.sleep(0)
    assert sim.ledger.summary()["holds_open"] == 1
