"""Configuration: one TOML file, environment overrides, command-line flags, validated at start.

Precedence, lowest first: built-in defaults, the TOML file, environment variables
``ISO_GATEWAY__<SECTION>__<KEY>`` (for example ``ISO_GATEWAY__ACQUIRER__TIMEOUT=8``), then flags.
Every error names the key it is about (``acquirer.timeout: ...``).
"""

from __future__ import annotations

import json
import os
import ssl
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.core.settings import CoreSettings
from gateway.wire.framing import TPDU_LENGTH, Framing

ENV_PREFIX = "ISO_GATEWAY__"


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key(s)."""


def parse_hostport(value: str, *, what: str = "address") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{what} must be HOST:PORT, got {value!r}")
    return (host.strip("[]") or "0.0.0.0", int(port))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


TlsNames = Mapping[str, str]  # what an error calls each file: "ca", "cert", "client_ca"


def tls_key_names(section: str) -> TlsNames:
    """Errors about a section's TLS files name its keys."""
    return {
        "ca": f"{section}.tls_ca",
        "cert": f"{section}.tls_cert/tls_key",
        "client_ca": f"{section}.tls_client_ca",
    }


def client_tls_context(
    names: TlsNames, ca: Path | None, cert: Path | None, key: Path | None
) -> ssl.SSLContext:
    """A TLS client context that verifies the server (against ``ca``, or the system's trust
    store) and offers ``cert`` when the server asks for one. Files are read now: a missing or
    bad one is a ConfigError that names it as ``names`` say."""
    try:
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"{names['ca']}: cannot load {ca}: {error}") from None
    if cert:
        _load_cert_chain(context, names, cert, key)
    return context


def server_tls_context(
    names: TlsNames, cert: Path, key: Path | None, client_ca: Path | None
) -> ssl.SSLContext:
    """A TLS server context; with ``client_ca``, clients must present a certificate it signed
    (mutual TLS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _load_cert_chain(context, names, cert, key)
    if client_ca:
        try:
            context.load_verify_locations(cafile=str(client_ca))
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(f"{names['client_ca']}: cannot load {client_ca}: {error}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _load_cert_chain(
    context: ssl.SSLContext, names: TlsNames, cert: Path, key: Path | None
) -> None:
    try:
        context.load_cert_chain(str(cert), str(key) if key else None)
    except (OSError, ssl.SSLError) as error:
        files = f"{cert} with the key in {key}" if key else str(cert)
        raise ConfigError(f"{names['cert']}: cannot load {files}: {error}") from None


def _key_needs_cert(cert: Path | None, key: Path | None) -> None:
    if key and not cert:
        raise ValueError("tls_key is set without tls_cert")


def _at_least_min(reconnect_max: float, info: ValidationInfo) -> float:
    reconnect_min = info.data.get("reconnect_min")  # absent when it was invalid itself
    if reconnect_min is not None and reconnect_max < reconnect_min:
        raise ValueError(f"shorter than reconnect_min ({reconnect_min})")
    return reconnect_max


class GatewaySection(_Section):
    listen: str = "0.0.0.0:8583"
    dialect: str = "iso87-binary"
    specs_dirs: list[Path] = Field(default_factory=list)
    data_dir: Path = Path("data")
    max_connections: int = Field(10_000, gt=0)
    shutdown_grace: float = Field(10.0, ge=0)
    # Terminal connections that stop being good peers are cut (gateway/io/terminals.py).
    write_timeout: float = Field(30.0, gt=0)  # the terminal takes none of our bytes
    frame_timeout: float = Field(30.0, gt=0)  # a frame left half sent
    idle_timeout: float = Field(0.0, ge=0)  # nothing received; 0 = never
    # TLS for terminals: with a certificate (and its key, unless in the same file) the listener
    # speaks TLS only; with a client CA too, terminals must present a certificate it signed.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    tls_handshake_timeout: float = Field(10.0, gt=0)  # a TLS peer that has not finished it

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_hostport(value, what="listen")
        return value

    @model_validator(mode="after")
    def _check_tls(self) -> GatewaySection:
        _key_needs_cert(self.tls_cert, self.tls_key)
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("tls_client_ca is set without tls_cert")
        return self

    def tls_context(self) -> ssl.SSLContext | None:
        """The listener's TLS context (files read now), or None: plain TCP."""
        if self.tls_cert is None:
            return None
        names = tls_key_names("gateway")
        return server_tls_context(names, self.tls_cert, self.tls_key, self.tls_client_ca)


class AcquirerSection(_Section):
    # Failover order: the first address is the primary, the others are tried when it fails.
    addresses: list[str] = Field(default_factory=lambda: ["127.0.0.1:9000"], min_length=1)
    # Links kept open, shared by all terminals; `strategy` picks the link of each message.
    connections: int = Field(1, ge=1, le=64)
    strategy: Literal["primary", "round_robin"] = "primary"
    timeout: float = Field(15.0, gt=0)  # must be shorter than the terminals' own timeout
    connect_timeout: float = Field(5.0, gt=0)
    reconnect_min: float = Field(0.5, gt=0)
    reconnect_max: float = Field(30.0, gt=0, validate_default=True)
    echo_interval: float = Field(30.0, ge=0)  # idle seconds before an echo test; 0 = off
    echo_timeout: float = Field(10.0, gt=0)  # unanswered echo: the link is declared dead
    sign_on: bool = False  # send 0800 DE 70 001 after connecting, link up only once answered
    # The TPDU and header (hex) of the link's own 0800s (echo test, sign-on), for dialects
    # whose framing has them; requests and reversals carry their terminal's own.
    tpdu: str = ""
    header: str = ""
    stan_mode: Literal["passthrough", "rewrite"] = "passthrough"
    max_in_flight: int = Field(10_000, gt=0)
    # TLS towards the acquirer: its certificate is verified against tls_ca (default: the
    # system's trust store) for tls_server_name (default: the host of the address dialled);
    # tls_cert/tls_key are the gateway's own, for acquirers that ask for one (mutual TLS).
    tls: bool = False
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_server_name: str = ""

    @field_validator("addresses")
    @classmethod
    def _check_addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            parse_hostport(address, what="acquirer address")
        return value

    @field_validator("tpdu", "header")
    @classmethod
    def _check_hex(cls, value: str) -> str:
        try:
            bytes.fromhex(value)
        except ValueError:
            raise ValueError("must be hex digits, two per byte") from None
        return value

    @field_validator("reconnect_max")
    @classmethod
    def _check_backoff(cls, value: float, info: ValidationInfo) -> float:
        return _at_least_min(value, info)

    @model_validator(mode="after")
    def _check_tls(self) -> AcquirerSection:
        if not self.tls:
            names = ("tls_ca", "tls_cert", "tls_key", "tls_server_name")
            for name in names:
                if getattr(self, name):
                    # Said, not ignored: the operator meant the link to be encrypted.
                    raise ValueError(f"{name} is set but tls is false")
        _key_needs_cert(self.tls_cert, self.tls_key)
        return self

    def tls_context(self) -> ssl.SSLContext | None:
        """The links' TLS context (files read now), or None: plain TCP."""
        if not self.tls:
            return None
        names = tls_key_names("acquirer")
        return client_tls_context(names, self.tls_ca, self.tls_cert, self.tls_key)

    def own_frame_parts(self, framing: Framing) -> tuple[bytes, bytes] | None:
        """The TPDU and header of the link's own 0800s in this framing; None when the framing
        needs parts that are not configured (then the link sends no echo tests). Raises
        ConfigError for a part of the wrong length, or a sign-on that cannot be sent."""
        parts = {"tpdu": bytes.fromhex(self.tpdu), "header": bytes.fromhex(self.header)}
        wanted = {"tpdu": TPDU_LENGTH if framing.tpdu else 0, "header": framing.header_length}
        for key, part in parts.items():
            if part and len(part) != wanted[key]:
                raise ConfigError(
                    f"acquirer.{key}: {len(part)} bytes, the dialect's framing wants {wanted[key]}"
                )
        missing = [
            f"acquirer.{key} ({wanted[key]} bytes)"
            for key in parts
            if not parts[key] and wanted[key]
        ]
        if not missing:
            return parts["tpdu"], parts["header"]
        if self.sign_on:
            raise ConfigError(
                f"acquirer.sign_on: the link's own 0800 needs {' and '.join(missing)} in this "
                "dialect's framing (hex)"
            )
        return None


class ReversalSection(_Section):
    timeout: float = Field(10.0, gt=0)  # wait for 0410/0430 before repeating
    retry_delays: list[Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: [5.0, 10.0, 30.0, 60.0, 300.0], min_length=1
    )
    max_attempts: int = Field(20, ge=1)
    expiry: float = Field(86_400.0, gt=0)
    drain_rate: float = Field(50.0, gt=0)  # reversals per second once a link is back
    late_decline_cancels: bool = True


class DuplicatesSection(_Section):
    window: float = Field(60.0, ge=0)


class JournalSection(_Section):
    backend: Literal["sqlite"] = "sqlite"
    path: Path | None = None  # default: <data_dir>/journal.sqlite3
    durability: Literal["process", "power"] = "process"
    # Seconds a snapshot nobody waits for may wait to share a commit (a request's own record
    # is committed at once, before the request is sent).
    commit_delay: float = Field(0.01, ge=0, le=1)
    retention_days: float = Field(7.0, gt=0)


class MetricsSection(_Section):
    listen: str = ""  # HOST:PORT of /metrics; empty = off

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        if value:
            parse_hostport(value, what="metrics listen")
        return value


class MqttSection(_Section):
    # mqtt://host:port or mqtts://user:pass@host:port; empty = off. Not in repr: credentials.
    url: str = Field("", repr=False)
    topic_prefix: str = Field("iso-gateway", min_length=1)
    gateway_id: str = Field("gw1", min_length=1)
    publish_transactions: bool = False
    queue_size: int = Field(10_000, gt=0)  # events waiting for the broker; newer ones dropped
    client_id: str = ""  # empty: iso-gateway-<gateway_id>
    username: str = ""  # empty: the URL's
    password: SecretStr = SecretStr("")  # empty: the URL's
    tls_ca: Path | None = None  # CA file for mqtts://; default: the system's trust store
    tls_cert: Path | None = None  # client certificate, for brokers that ask for one
    tls_key: Path | None = None
    reversal_qos: int = Field(1, ge=0, le=2)
    event_qos: int = Field(0, ge=0, le=2)
    keepalive: int = Field(30, gt=0)
    reconnect_min: float = Field(0.5, gt=0)
    reconnect_max: float = Field(30.0, gt=0, validate_default=True)

    @field_validator("reconnect_max")
    @classmethod
    def _check_backoff(cls, value: float, info: ValidationInfo) -> float:
        return _at_least_min(value, info)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if value:
            # The message never repeats the URL: it may hold a password.
            parts = urlsplit(value)
            if parts.scheme not in ("mqtt", "mqtts"):
                raise ValueError(f"must start with mqtt:// or mqtts://, not {parts.scheme!r}")
            try:
                parts.port  # noqa: B018 -- raises on a port that is not a number
            except ValueError:
                raise ValueError("the port is not a number from 0 to 65535") from None
            if not parts.hostname:
                raise ValueError("names no host (mqtt://HOST[:PORT])")
        return value

    @field_validator("topic_prefix", "gateway_id")
    @classmethod
    def _check_topic_part(cls, value: str) -> str:
        if "+" in value or "#" in value:
            raise ValueError("MQTT wildcards (+, #) cannot be part of a topic")
        return value

    @field_validator("gateway_id")
    @classmethod
    def _check_gateway_id(cls, value: str) -> str:
        if "/" in value:
            raise ValueError("must be one topic level (no /)")
        return value


class CaptureSection(_Section):
    """The gateway records its own traffic as pcapng (gateway/replay/recorder.py): PANs
    tokenized, track/PIN/ICC data zeroed, so the files can be shared and replayed."""

    enabled: bool = False
    directory: Path | None = None  # default: <data_dir>/captures
    sides: Literal["both", "terminal", "acquirer"] = "both"
    rotate_mb: float = Field(100.0, gt=0)  # start a new file past this size
    rotate_seconds: float = Field(3600.0, ge=0)  # ...or this age; 0 = size only
    keep_files: int = Field(48, ge=0)  # delete the oldest files beyond this; 0 = keep all
    queue_size: int = Field(10_000, gt=0)  # frames waiting for the writer; more are dropped


class LoggingSection(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class GatewayConfig(_Section):
    gateway: GatewaySection = Field(default_factory=GatewaySection)
    acquirer: AcquirerSection = Field(default_factory=AcquirerSection)
    reversal: ReversalSection = Field(default_factory=ReversalSection)
    duplicates: DuplicatesSection = Field(default_factory=DuplicatesSection)
    journal: JournalSection = Field(default_factory=JournalSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    mqtt: MqttSection = Field(default_factory=MqttSection)
    capture: CaptureSection = Field(default_factory=CaptureSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)

    @model_validator(mode="after")
    def _check_idle_timeout(self) -> GatewayConfig:
        idle = self.gateway.idle_timeout
        if idle and idle <= self.acquirer.timeout:
            # A terminal waiting for its answer sends nothing: it would be cut, and its
            # approval reversed as undeliverable.
            raise ValueError(
                f"gateway.idle_timeout ({idle}) must be 0 or longer than acquirer.timeout "
                f"({self.acquirer.timeout})"
            )
        return self

    @property
    def journal_path(self) -> Path:
        return self.journal.path or self.gateway.data_dir / "journal.sqlite3"

    def core_settings(self) -> CoreSettings:
        return CoreSettings(
            acquirer_timeout=self.acquirer.timeout,
            reversal_timeout=self.reversal.timeout,
            retry_delays=tuple(self.reversal.retry_delays),
            max_attempts=self.reversal.max_attempts,
            reversal_expiry=self.reversal.expiry,
            duplicate_window=self.duplicates.window,
            late_decline_cancels=self.reversal.late_decline_cancels,
            stan_mode=self.acquirer.stan_mode,
            link_strategy=self.acquirer.strategy,
            reversal_drain_rate=self.reversal.drain_rate,
            max_in_flight=self.acquirer.max_in_flight,
        )


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for key in path[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(path)}: {key} is not a section")
    node[path[-1]] = value


def _env_value(raw: str) -> Any:
    """Lists come as JSON (``["a:1", "b:2"]``); everything else is left to pydantic."""
    text = raw.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"cannot parse list {raw!r}: {error}") from None
    return raw


def load_config(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> GatewayConfig:
    """Build the configuration. ``overrides`` maps dotted keys (``acquirer.timeout``) to values."""
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            tree = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML: {error}") from None
    # Where each key's value came from, for the error message: the file unless set here.
    origin: dict[str, str] = {}
    env = os.environ if environ is None else environ
    for name, raw in sorted(env.items()):
        if name.startswith(ENV_PREFIX):
            keys = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
            try:
                _set_path(tree, keys, _env_value(raw))
            except ConfigError as error:
                raise ConfigError(f"environment {name}: {error}") from None
            origin[".".join(keys)] = f"environment {name}: "
    for dotted, value in (overrides or {}).items():
        _set_path(tree, dotted.split("."), value)
        origin[dotted] = "command line: "
    try:
        return GatewayConfig.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(_describe(error, path, origin)) from None


def _describe(error: ValidationError, path: Path | None, origin: Mapping[str, str]) -> str:
    in_file = f"{path}: " if path else ""
    lines = []
    for problem in error.errors():
        key = ".".join(str(part) for part in problem["loc"])
        # A list item (reversal.retry_delays.1) came from where its list did.
        where = origin.get(key) or origin.get(key.rpartition(".")[0]) or in_file
        message = problem["msg"]
        if problem["type"] == "extra_forbidden":
            message = "unknown key"
        elif problem["type"] == "value_error":  # our validators' own words, without pydantic's
            message = message.removeprefix("Value error, ")
        # A check across sections has no key of its own: its message names the keys.
        lines.append(f"{where}{key}: {message}" if key else f"{where}{message}")
    return "invalid configuration:\n  " + "\n  ".join(lines)
