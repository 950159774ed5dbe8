"""The gateway records its own traffic: ``[capture]`` in the config -> pcapng files to replay.

``CaptureRecorder`` is the service's ``FrameTap`` (gateway/io/tap.py) and a component beside
the service (gateway/app.py). The tap calls are on the transaction path, so they only put a
tuple on a bounded queue and return; when the queue is full the event is dropped and counted,
never waited for. A writer thread does the rest:

- card data is made safe first (scrub.py: PAN tokens, one random key per file; track data
  reduced to token + expiry + service code; PIN block, track 1/3 and DE 55 zeroed). A message that
  does not decode cannot be made safe and is not written (counted as ``unrecordable``);
- connections and frames become TCP/IP packets (pcapwriter.py): the terminal side on pcapng
  interface ``iso-gateway:terminal-side``, the acquirer side on ``iso-gateway:acquirer-side``;
- files rotate by size and age and the oldest are deleted beyond ``keep_files``.

Who closed a connection is not part of the tap's contract: a terminal-side close is written as
the terminal's FIN, an acquirer-side close as the acquirer's (the link dropped). The replay
treats an unanswered request followed by the acquirer's FIN as a cut link.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from gateway.config import CaptureSection
from gateway.io.tap import Address, Side
from gateway.replay.capture import ACQUIRER_LEG_INTERFACE, TERMINAL_LEG_INTERFACE
from gateway.replay.pcapwriter import PcapngFile, TcpSynthesizer
from gateway.replay.scrub import MessageScrubber, PanTokenizer
from gateway.wire.dialect import Dialect
from gateway.wire.framing import Frame, encode_frame

log = structlog.get_logger("gateway.capture")

FILE_PREFIX = "gateway-"
FILE_SUFFIX = ".pcapng"
_INTERFACES = (TERMINAL_LEG_INTERFACE, ACQUIRER_LEG_INTERFACE)
_STOP = None

# (kind, time, side, local, peer, inbound, frame)
_Event = tuple[str, float, Side, Address, Address, bool, Frame | None]


@dataclass(slots=True)
class RecorderCounters:
    frames: int = 0  # frames written
    dropped: int = 0  # events dropped because the writer fell behind (queue full)
    unrecordable: int = 0  # messages that did not decode, so could not be scrubbed: not written
    files: int = 0  # files opened
    write_errors: int = 0


class CaptureRecorder:
    """FrameTap + component: queue on the loop, scrub and write on a thread."""

    def __init__(
        self,
        settings: CaptureSection,
        directory: Path,
        dialect: Dialect,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.directory = directory
        self.dialect = dialect
        self.counters = RecorderCounters()
        self.current_file: Path | None = None
        self._clock = clock
        self._queue: queue.Queue[_Event | None] = queue.Queue(maxsize=settings.queue_size)
        self._sides: frozenset[str] = (
            frozenset({"terminal", "acquirer"})
            if settings.sides == "both"
            else frozenset({settings.sides})
        )
        self._thread: threading.Thread | None = None
        # writer-thread state
        self._file: PcapngFile | None = None
        self._opened_at = 0.0
        self._scrubber: MessageScrubber | None = None
        self._tcp = TcpSynthesizer()

    # component ----------------------------------------------------------------------------

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self._thread.start()
        log.info("capture_started", directory=str(self.directory), sides=self.settings.sides)

    async def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        await asyncio.to_thread(self._queue.put, _STOP)  # after every event already queued
        await asyncio.to_thread(thread.join)
        log.info("capture_stopped", **self.status())

    def status(self) -> dict[str, Any]:
        counters = self.counters
        return {
            "frames": counters.frames,
            "dropped": counters.dropped,
            "unrecordable": counters.unrecordable,
            "files": counters.files,
            "write_errors": counters.write_errors,
            "file": str(self.current_file) if self.current_file else None,
        }

    # FrameTap (on the event loop: never blocks) -------------------------------------------

    def connection_opened(self, side: Side, local: Address, peer: Address) -> None:
        self._put(("open", self._clock(), side, local, peer, False, None))

    def frame(self, side: Side, inbound: bool, local: Address, peer: Address, frame: Frame) -> None:
        self._put(("frame", self._clock(), side, local, peer, inbound, frame))

    def connection_closed(self, side: Side, local: Address, peer: Address) -> None:
        self._put(("close", self._clock(), side, local, peer, False, None))

    def _put(self, event: _Event) -> None:
        if event[2] not in self._sides or self._thread is None:
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.counters.dropped += 1

    # the writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                event = self._queue.get()
                if event is _STOP:
                    break
                try:
                    self._write(event)
                except OSError as error:
                    self.counters.write_errors += 1
                    log.error("capture_write_failed", file=str(self.current_file), error=str(error))
                    self._close_file()  # the next event opens a new file
                if self._file is not None and self._queue.empty():
                    self._file.flush()  # readable by tshark while the gateway runs
        finally:
            self._close_file()

    def _write(self, event: _Event) -> None:
        kind, when, side, local, peer, inbound, frame = event
        file = self._file_for(when)
        interface = 0 if side == "terminal" else 1
        # The terminal connected to the gateway; the gateway connected to the acquirer.
        client, server = (peer, local) if side == "terminal" else (local, peer)
        if kind == "open":
            packets = self._tcp.open(client, server)
        elif kind == "close":
            packets = self._tcp.close(client, server, by_client=side == "terminal")
        else:
            assert frame is not None and self._scrubber is not None
            safe = self._scrubber.scrub(frame)
            if safe is None:
                self.counters.unrecordable += 1
                return
            from_client = inbound if side == "terminal" else not inbound
            payload = encode_frame(self.dialect.framing, safe)
            packets = self._tcp.data(client, server, from_client, payload)
            self.counters.frames += 1
        for packet in packets:
            file.write(interface, when, packet)

    def _file_for(self, when: float) -> PcapngFile:
        file = self._file
        settings = self.settings
        too_big = file is not None and file.bytes_written >= settings.rotate_mb * 1_000_000
        too_old = settings.rotate_seconds > 0 and when - self._opened_at >= settings.rotate_seconds
        if file is None or too_big or too_old:
            self._close_file()
            file = self._open_file(when)
        return file

    def _open_file(self, when: float) -> PcapngFile:
        stamp = datetime.fromtimestamp(when, UTC).strftime("%Y%m%dT%H%M%SZ")
        path = self.directory / f"{FILE_PREFIX}{stamp}{FILE_SUFFIX}"
        suffix = 1
        while path.exists():
            path = self.directory / f"{FILE_PREFIX}{stamp}-{suffix}{FILE_SUFFIX}"
            suffix += 1
        comment = (
            f"iso-gateway capture, dialect {self.dialect.name}; PANs tokenized (BIN and last 4 "
            "kept, key not stored); track, PIN and ICC data zeroed"
        )
        self._file = PcapngFile(path.open("wb"), _INTERFACES, comment)
        self._opened_at = when
        # A new file gets a new token key: tokens are consistent within a file, never across.
        self._scrubber = MessageScrubber(self.dialect, PanTokenizer())
        self._tcp = TcpSynthesizer()  # connections still open reappear with a handshake
        self.current_file = path
        self.counters.files += 1
        self._prune()
        return self._file

    def _close_file(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()

    def _prune(self) -> None:
        keep = self.settings.keep_files
        if not keep:
            return
        files = sorted(self.directory.glob(f"{FILE_PREFIX}*{FILE_SUFFIX}"), key=_age_order)
        for old in files[:-keep]:
            if old != self.current_file:
                with contextlib.suppress(OSError):
                    old.unlink()


def _age_order(path: Path) -> tuple[float, str]:
    try:
        return (path.stat().st_mtime, path.name)
    except OSError:
        return (0.0, path.name)
