"""Codec speed per message: full decode, encode, and the proxy's key extraction.

The message is a realistic 0200 purchase: 22 data elements with PAN, track 2, PIN block and
EMV data (DE 55), in every dialect that can encode it. For each dialect:

- ``Codec.decode`` (all fields) beside pyiso8583's plain ``iso8583.decode`` of the same bytes
  and spec (the codec wraps it: the difference is the wrapper's cost);
- ``Codec.encode`` beside ``iso8583.encode``;
- key extraction, what the proxy does for every message: ``Codec.scan`` + MTI, DE 11, DE 41
  and DE 4 (the response-matching and duplicate keys);
- ``Codec.scan`` + every field of ``gateway.core.events.CORE_FIELDS`` (what the shell hands the
  core for a request).

Each figure is µs per message: the median and the minimum of several runs (timeit, garbage
collector off during a run), each run long enough to time (``timeit.Timer.autorange``). The
markdown table is printed and written to bench/README.md under "## Codec" (that section is
replaced, the others are kept). Figures only; nothing is asserted.

    .venv/bin/python -m bench.codec [--runs 7] [--no-readme]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import re
import statistics
import sys
import timeit
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import iso8583

from gateway.core.events import CORE_FIELDS
from gateway.wire.codec import Codec, CodecError
from gateway.wire.dialect import Dialect, get_dialect

README = Path(__file__).resolve().parent / "README.md"
SECTION = "Codec"
DIALECTS = ("iso87-binary", "iso87-ascii", "cup-pos", "visa-base1")
KEY_FIELDS = ("11", "41", "4")  # + the MTI: match (41, 11) and duplicate (4) keys

# EMV data of a contactless purchase (the TLV of the CUP sale vector, 139 bytes).
ICC_DATA = (
    "9F2608DEAE676D1C4734119F2701809F101307020103A0A806010A01000000000098F01F529F3704AA0FBE65"
    "9F360203499505008004E0009A031611159C01009F02060000000055885F2A02015682027C009F1A020156"
    "9F03060000000000009F3303E0E1C89F34034203009F3501229F1E0831323334353637388408A000000333"
    "0101019F090200309F410400000003"
)
PAN = "4761739001010119"  # a Visa test card


def purchase(dialect: Dialect) -> dict[str, str]:
    """A 0200 as a chip terminal sends it, in the value forms this dialect's spec expects."""
    bcd_tracks = dialect.spec["35"]["data_enc"] == "b"  # track 2 as BCD nibbles: "D" separator
    fields = {
        "2": PAN, "3": "000000", "4": "000000001500", "7": "0908064519", "11": "000123",
        "12": "064519", "13": "0908", "14": "2512", "18": "5411", "22": "051", "23": "001",
        "25": "00", "32": "123456",
        "35": PAN + ("D" if bcd_tracks else "=") + "25122011143804400000",
        "37": "123456789012", "41": "TERM0001", "42": "MERCHANT0000001",
        "43": f"{'ACME STORE 1':<23}{'SPRINGFIELD':<13}ILUS", "49": "840",
        "52": "0123456789ABCDEF", "55": ICC_DATA, "60": "22000024000600",
    }  # fmt: skip
    if dialect.name == "visa-base1":
        fields["22"] = "0510"  # n4 in BASE I
        fields["60"] = "050000100000"  # b..6: BCD sub-fields
    return fields


def pyiso8583_spec(dialect: Dialect) -> dict[str, Any]:
    """The dialect's spec as pyiso8583 takes it, with the header left to framing (as Codec)."""
    spec: dict[str, Any] = {key: dict(entry) for key, entry in dialect.spec.items()}
    spec["h"] = {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": 0}
    return spec


@dataclass(frozen=True, slots=True)
class Timing:
    median_us: float
    min_us: float

    def __str__(self) -> str:
        return f"{self.median_us:.1f} ({self.min_us:.1f})"


def measure(funcs: Mapping[str, Callable[[], object]], runs: int) -> dict[str, list[float]]:
    """µs per call of each function, one figure per run. The functions take turns within each
    run, so that a burst of load from other processes hits them all alike."""
    timers = {name: timeit.Timer(func) for name, func in funcs.items()}
    # enough calls for one timing to last >= 0.2 s
    numbers = {name: timer.autorange()[0] for name, timer in timers.items()}
    samples: dict[str, list[float]] = {name: [] for name in funcs}
    for _ in range(runs):
        for name, timer in timers.items():
            samples[name].append(timer.timeit(numbers[name]) / numbers[name] * 1e6)
    return samples


def timing(samples: list[float]) -> Timing:
    return Timing(statistics.median(samples), min(samples))


@dataclass(frozen=True, slots=True)
class Row:
    dialect: str
    size: int
    field_count: int
    decode: Timing
    py_decode: Timing
    encode: Timing
    py_encode: Timing
    keys: Timing
    core: Timing
    speedup: float  # median over runs of decode time / key-extraction time in that run


def check(codec: Codec, message: bytes, fields: Mapping[str, str]) -> None:
    """Correct first: every path must agree on the message before it is timed."""
    decoded = codec.decode(message)
    view = codec.scan(message)
    if dict(decoded.fields) != dict(fields) or view.fields(fields) != dict(fields):
        raise SystemExit(f"{codec.dialect.name}: decode or scan disagrees with what was encoded")
    if view.mti != "0200" or decoded.mti != "0200":
        raise SystemExit(f"{codec.dialect.name}: wrong MTI")


def bench_dialect(name: str, runs: int) -> Row | str:
    """One table row, or why this dialect was left out."""
    dialect = get_dialect(name)
    codec = Codec(dialect)
    fields = purchase(dialect)
    try:
        message = codec.encode("0200", fields)
    except CodecError as error:
        return f"{name}: cannot encode the purchase ({error})"
    check(codec, message, fields)
    spec = pyiso8583_spec(dialect)
    doc = {"t": "0200", **fields}
    core_fields = tuple(dict.fromkeys((*CORE_FIELDS, *dialect.match_fields)))

    def keys() -> tuple[str, str | None, str | None, str | None]:
        view = codec.scan(message)
        return view.mti, view.get("11"), view.get("41"), view.get("4")

    def core() -> tuple[str, dict[str, str]]:
        view = codec.scan(message)
        return view.mti, view.fields(core_fields)

    print(f"  {name} ...", file=sys.stderr, flush=True)
    samples = measure(
        {
            "decode": lambda: codec.decode(message),
            "py_decode": lambda: iso8583.decode(message, spec),
            "encode": lambda: codec.encode("0200", fields),
            "py_encode": lambda: iso8583.encode(doc, spec),
            "keys": keys,
            "core": core,
        },
        runs,
    )
    ratios = [d / k for d, k in zip(samples["decode"], samples["keys"], strict=True)]
    return Row(
        dialect=name,
        size=len(message),
        field_count=len(fields),
        decode=timing(samples["decode"]),
        py_decode=timing(samples["py_decode"]),
        encode=timing(samples["encode"]),
        py_encode=timing(samples["py_encode"]),
        keys=timing(samples["keys"]),
        core=timing(samples["core"]),
        speedup=statistics.median(ratios),
    )


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{cpu}, nproc {nproc}; Python {platform.python_version()} "
        f"({platform.python_implementation()}), pyiso8583 "
        f"{importlib.metadata.version('pyiso8583')}; {platform.system()} {platform.release()}"
    )


def table(rows: list[Row], skipped: list[str], runs: int) -> str:
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    lines = [
        f"## {SECTION}",
        "",
        "`bench/codec.py`: µs per message, **median (min)** of "
        f"{runs} runs, for one 0200 purchase of {rows[0].field_count if rows else '?'} data "
        "elements with PAN, track 2, PIN block and EMV data (DE 55). *keys* = `Codec.scan` + "
        "MTI, DE 11, DE 41, DE 4 (what the proxy reads from every message); *core* = "
        "`Codec.scan` + every field of `CORE_FIELDS`; *decode ÷ keys* = how many key "
        "extractions cost one full `Codec.decode` (median of the per-run ratios; target: at "
        "least 5).",
        "",
        f"Measured {today} on {machine()}. The machine is shared: compare rows of one run, "
        "not runs of different days.",
        "",
        "| dialect | bytes | Codec.decode | pyiso8583 decode | Codec.encode | pyiso8583 encode "
        "| keys | core | decode ÷ keys |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r.dialect} | {r.size} | {r.decode} | {r.py_decode} | {r.encode} | {r.py_encode} "
        f"| {r.keys} | {r.core} | {r.speedup:.1f}x |"
        for r in rows
    ]
    if skipped:
        lines += ["", *(f"Not measured: {reason}." for reason in skipped)]
    lines += ["", "Run it again: `.venv/bin/python -m bench.codec` (or `make bench`)."]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace this benchmark's "## " section of the README (or add it); keep the others."""
    if path.exists():
        text = path.read_text(encoding="utf-8")
    else:
        text = "# Benchmarks\n\nFigures from the scripts in this folder, one section each.\n"
    pattern = re.compile(rf"^## {re.escape(SECTION)}\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs per figure")
    parser.add_argument("--no-readme", action="store_true", help="print only")
    args = parser.parse_args()
    rows: list[Row] = []
    skipped: list[str] = []
    for name in DIALECTS:
        result = bench_dialect(name, args.runs)
        if isinstance(result, Row):
            rows.append(result)
        else:
            skipped.append(result)
    section = table(rows, skipped, args.runs)
    print(section)
    if not args.no_readme:
        write_section(README, section)
        print(f"written to {README}", file=sys.stderr)


if __name__ == "__main__":
    main()
