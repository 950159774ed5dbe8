"""Structured logs: JSON lines by default, console rendering on a terminal.

Masking is a processor in the pipeline itself, so no call site can leak a PAN or track data:
every string value of every event goes through ``redact_text`` before rendering.

Two paths share those processors and one output stream:
- structlog loggers (the gateway's own, one line per transaction) go straight to a bytes
  writer with orjson: about 10 µs a line instead of ~70 µs through the logging module, which
  matters at thousands of transactions a second;
- standard-library loggers (asyncio, aiomqtt) are routed through ``ProcessorFormatter``.

The core's notices (``log_event``, one ``transaction_completed`` line per transaction) take a
shortcut when the format is JSON: the same steps as the processor chain (bound context,
masking, level, timestamp), written out in one function, ~4 µs a line instead of ~15 µs
through structlog's bound logger. A test holds the two to the same output.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import datetime
import logging
import sys
import threading
from collections import deque
from collections.abc import Mapping, MutableMapping
from typing import Any, Literal, Protocol, TextIO

import orjson
import structlog

from gateway.wire.masking import redact_text

LogFormat = Literal["auto", "json", "console"]
_LEVELS = logging.getLevelNamesMapping()
_LEVEL_NAMES = {n: logging.getLevelName(n).lower() for n in sorted(set(_LEVELS.values()))}


# The shortest thing redact_text masks is a 13-digit PAN: shorter strings cannot leak one.
_SHORTEST_PAN = 13
_PAN_SIZED = 10 ** (_SHORTEST_PAN - 1)  # integers from here on have as many digits as a PAN


def redact_value(value: Any) -> Any:
    """``value`` as it may be shown: strings masked, containers walked. Anything else (an
    exception, bytes, a path...) becomes its text here, so masking sees exactly what the
    renderer would otherwise print through ``str()``."""
    if isinstance(value, str):
        return redact_text(value) if len(value) >= _SHORTEST_PAN else value
    if isinstance(value, int) and not -_PAN_SIZED < value < _PAN_SIZED:
        return redact_value(str(value))  # a PAN held as a number is still a PAN
    if value is None or isinstance(value, int | float):  # bool is an int
        return value
    if isinstance(value, dict):
        return {key: redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(item) for item in value]
    return redact_value(str(value))


def redact_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in event_dict.items():
        if key != "_record":  # ProcessorFormatter's LogRecord: dropped before rendering
            event_dict[key] = redact_value(value)
    return event_dict


# structlog's own registry of the variables bind_contextvars created (name -> ContextVar); a
# private name, so without it the pipeline falls back to structlog's merge_contextvars.
_BOUND_VARS: dict[str, contextvars.ContextVar[Any]] | None = getattr(
    structlog.contextvars, "_CONTEXT_VARS", None
)
_PREFIX_LENGTH = len(structlog.contextvars.STRUCTLOG_KEY_PREFIX)


def merge_bound_context(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """``structlog.contextvars.merge_contextvars``, reading only the variables that
    ``bind_contextvars`` created instead of copying and walking the whole context (asyncio's
    and every library's variables): ~0.5 µs a line instead of ~4 µs."""
    for name, var in (_BOUND_VARS or {}).items():
        value = var.get(...)
        if value is not ...:
            event_dict.setdefault(name[_PREFIX_LENGTH:], value)
    return event_dict


def log_context_var(key: str) -> contextvars.ContextVar[Any]:
    """The context variable behind ``structlog.contextvars.bind_contextvars(key=...)``.

    For hot paths: ``var.set()`` / ``var.reset()`` cost ~0.4 µs against ~2 µs for
    bind/reset_contextvars and ~5 µs for ``bound_contextvars``; ``merge_contextvars`` adds
    the value to every line logged meanwhile, like any bound key.
    """
    token = structlog.contextvars.bind_contextvars(**{key: ...})[key]
    token.var.reset(token)
    return token.var


def _orjson_dumps(event: Any, **_: Any) -> bytes:
    return orjson.dumps(event, default=str)


def _orjson_text(event: Any, **_: Any) -> str:
    """The same JSON for the logging module's path, whose formatter must return text."""
    return orjson.dumps(event, default=str).decode()


class _BinaryStream(Protocol):
    def write(self, data: bytes | bytearray, /) -> int: ...
    def flush(self) -> None: ...


class _LineWriter:
    """Writes whole lines to a binary stream under a lock (two paths share the stream).

    On an event loop thread, lines are gathered and written together: warnings and errors at
    the end of the loop iteration that logged them, info and debug lines (one per transaction)
    at most ``LINGER_SECONDS`` later or once ``FLUSH_BYTES`` have gathered. That is one system
    call for many lines at any rate, where a write per line costs more than the line itself at
    a thousand transactions a second. A process killed outright (SIGKILL) can lose the info
    lines of its last ``LINGER_SECONDS``; the journal, not the log, is the record of what is
    owed. Elsewhere (other threads, no loop) each line is written at once.

    The loop never writes itself: it hands what gathered to a writer thread, so a reader of the
    stream that stalls (a log shipper, a full pipe) stalls no transaction. Beyond
    ``MAX_QUEUED_BYTES`` waiting for that thread, lines are dropped and counted (``dropped``).
    ``flush_logs()`` waits for the thread.
    """

    LINGER_SECONDS = 0.05
    FLUSH_BYTES = 64 * 1024
    MAX_QUEUED_BYTES = 16 * 1024 * 1024

    def __init__(self, stream: _BinaryStream) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        # One growing buffer, not a list of lines: each rendered line is freed at once, so
        # the allocator reuses its memory (a list of 50 ms of lines made rendering 2x slower).
        self._pending = bytearray()
        self._flush_soon: asyncio.Handle | None = None
        self._flush_later: asyncio.TimerHandle | None = None
        self._flush_loop: asyncio.AbstractEventLoop | None = None  # where those are scheduled
        self.broken: OSError | None = None  # the stream failed: lines are dropped from then on
        self.dropped = 0  # bytes not written: the stream broken, or too much waiting for it
        # The writer thread's side: chunks to write, guarded by _handover.
        self._handover = threading.Condition()
        self._chunks: deque[bytes | bytearray] = deque()
        self._queued = 0  # bytes in _chunks and in the write under way
        self._thread: threading.Thread | None = None
        self._stream_lock = threading.Lock()  # one write at a time: the thread or a non-loop caller

    def msg(self, message: bytes | str) -> None:
        """An info or debug line: written within ``LINGER_SECONDS``."""
        self._add(message, urgent=False)

    def msg_soon(self, message: bytes | str) -> None:
        """A warning or worse: written at the end of this loop iteration."""
        self._add(message, urgent=True)

    def _add(self, message: bytes | str, *, urgent: bool) -> None:
        data = message if isinstance(message, bytes) else message.encode()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or loop.is_closed():
            self.wait_written(1.0)  # after what the thread still holds, not before
            with self._stream_lock:
                self._write(data + b"\n")
            return
        with self._lock:
            self._pending += data
            self._pending += b"\n"
            if loop is not self._flush_loop:
                # Handles of an earlier loop (closed: asyncio.run again, a test) never run.
                self._flush_soon = self._flush_later = None
                self._flush_loop = loop
            if urgent or len(self._pending) >= self.FLUSH_BYTES:
                if self._flush_soon is None:
                    self._flush_soon = loop.call_soon(self.flush)
            elif self._flush_later is None and self._flush_soon is None:
                self._flush_later = loop.call_later(self.LINGER_SECONDS, self.flush)

    def flush(self) -> None:
        with self._lock:
            for handle in (self._flush_soon, self._flush_later):
                if handle is not None:
                    handle.cancel()
            self._flush_soon = self._flush_later = None
            lines, self._pending = self._pending, bytearray()
        if lines:
            self._hand_over(lines)

    def _hand_over(self, lines: bytearray) -> None:
        with self._handover:
            if self._queued + len(lines) > self.MAX_QUEUED_BYTES:
                self.dropped += len(lines)  # the reader fell this far behind: drop, not wait
                return
            self._chunks.append(lines)
            self._queued += len(lines)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._write_chunks, name="log-writer", daemon=True
                )
                self._thread.start()
            self._handover.notify()

    def _write_chunks(self) -> None:
        while True:
            with self._handover:
                while not self._chunks:
                    self._handover.wait()
                chunk = self._chunks.popleft()
            with self._stream_lock:  # not _lock: the loop appends lines meanwhile
                self._write(chunk)
            with self._handover:
                self._queued -= len(chunk)
                self._handover.notify_all()

    def wait_written(self, timeout: float) -> bool:
        """Wait until the writer thread has written what it was handed (False: timed out)."""
        with self._handover:
            return self._handover.wait_for(lambda: self._queued == 0, timeout)

    def _write(self, data: bytes | bytearray) -> None:
        if self.broken is not None:
            self.dropped += len(data)
            return
        try:
            self._stream.write(data)
            self._stream.flush()
        except OSError as error:
            # The reader is gone (EPIPE) or the disk is full: the transactions must go on,
            # and an error logged about this would only fail the same way, again and again.
            self.broken = error
            self.dropped += len(data)

    log = debug = info = msg
    warn = warning = error = critical = exception = fatal = msg_soon


_writers: list[_LineWriter] = []  # the one configure_logging set up last


def wait_logs_written(timeout: float = 5.0) -> None:
    """Wait until what was flushed has reached the stream (lines still lingering stay)."""
    for writer in _writers:
        writer.wait_written(timeout)


def flush_logs(timeout: float = 5.0) -> None:
    """Write every line still lingering now, and wait (at most ``timeout``) until it is
    written: before reading the stream, or at shutdown."""
    for writer in _writers:
        writer.flush()
        writer.wait_written(timeout)


class _JsonEvents:
    """The JSON pipeline for events, without structlog's bound logger (see the module doc)."""

    def __init__(self, writer: _LineWriter, level: int) -> None:
        self._writer = writer
        self._level = level

    def emit(self, level: int, level_name: str, event: str, data: Mapping[str, Any]) -> None:
        if level < self._level:
            return
        line: dict[str, Any] = {**data, "event": event}
        if _BOUND_VARS is not None:
            merge_bound_context(None, level_name, line)
        for key, value in line.items():  # redact_processor's loop, inlined
            if not (
                value is None
                or (type(value) is int and -_PAN_SIZED < value < _PAN_SIZED)
                or type(value) is float
            ):
                line[key] = redact_value(value)
        line["level"] = level_name
        line["timestamp"] = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
        rendered = orjson.dumps(line, default=str)
        if level >= logging.WARNING:
            self._writer.msg_soon(rendered)
        else:
            self._writer.msg(rendered)


_json_events: list[_JsonEvents] = []  # set by configure_logging when the format is JSON


def log_event(level: int, event: str, data: Mapping[str, Any]) -> None:
    """One line for an event (a notice of the core): ``event`` plus ``data``, at ``level``
    (``logging.INFO``, ...). The same line structlog would write, faster when it is JSON."""
    level_name = _LEVEL_NAMES.get(level) or str(logging.getLevelName(level)).lower()
    if _json_events and "exc_info" not in data:
        _json_events[0].emit(level, level_name, event, data)
        return
    getattr(_events_log, level_name)(event, **data)


_events_log = structlog.get_logger("gateway.events")


class _WriterFactory:
    def __init__(self, writer: _LineWriter) -> None:
        self._writer = writer

    def __call__(self, *args: Any) -> _LineWriter:
        return self._writer


def configure_logging(
    level: str = "info",
    fmt: LogFormat = "auto",
    stream: TextIO | None = None,
    *,
    cache_loggers: bool = True,
) -> None:
    """Route every log line, structlog's and the logging module's, to ``stream``.

    ``cache_loggers``: each logger keeps the pipeline it first used (~1 µs a line saved), so
    a later call does not reach it; tests that configure again and again pass False.
    """
    stream = stream or sys.stderr
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars if _BOUND_VARS is None else merge_bound_context,
        structlog.processors.format_exc_info,
        redact_processor,  # after exceptions are formatted, so tracebacks are redacted too
        # Added after redaction: the gateway's own values, no card data to look for.
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if console:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    binary: _BinaryStream | None = getattr(stream, "buffer", None)
    writer = _LineWriter(binary if binary is not None else _TextAsBinary(stream))
    atexit.register(writer.flush)  # lines still lingering, at exit
    _writers[:] = [writer]
    _json_events[:] = [] if console else [_JsonEvents(writer, _LEVELS[level.upper()])]
    structlog.configure(
        processors=[*shared, renderer],
        logger_factory=_WriterFactory(writer),
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level.upper()]),
        cache_logger_on_first_use=cache_loggers,
    )
    handler = _WriterHandler(writer)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer if console else structlog.processors.JSONRenderer(_orjson_text),
            ],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class _WriterHandler(logging.Handler):
    def __init__(self, writer: _LineWriter) -> None:
        super().__init__()
        self._writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            if record.levelno >= logging.WARNING:
                self._writer.msg_soon(line)
            else:
                self._writer.msg(line)
        except Exception:
            self.handleError(record)


class _TextAsBinary:
    """A text stream (pytest's capture, StringIO) seen as a binary one."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, data: bytes | bytearray) -> int:
        return self._stream.write(data.decode("utf-8", errors="replace"))

    def flush(self) -> None:
        self._stream.flush()
