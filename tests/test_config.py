"""Configuration: file, environment and flags, with errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import cli
from gateway.config import ConfigError, GatewayConfig, load_config, parse_hostport

REPO = Path(__file__).resolve().parents[1]


def test_defaults_without_a_file() -> None:
    config = load_config(None, environ={})
    assert config.gateway.dialect == "iso87-binary"
    assert config.acquirer.timeout == 15.0
    assert config.journal_path == Path("data/journal.sqlite3")
    assert config.metrics.listen == ""  # off unless configured
    assert config.mqtt.url == ""


def test_example_file_documents_the_defaults() -> None:
    """gateway.example.toml is the reference: it must load and say exactly the defaults."""
    example = load_config(REPO / "gateway.example.toml", environ={})
    assert example == GatewayConfig()


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[acquirer]\ntimeout = 5\naddresses = ["10.0.0.1:9000"]\n')
    config = load_config(path, environ={"ISO_GATEWAY__ACQUIRER__TIMEOUT": "7"})
    assert config.acquirer.timeout == 7.0
    assert config.acquirer.addresses == ["10.0.0.1:9000"]
    config = load_config(
        path,
        environ={"ISO_GATEWAY__ACQUIRER__TIMEOUT": "7"},
        overrides={"acquirer.timeout": 9.0, "acquirer.addresses": ["a:1", "b:2"]},
    )
    assert config.acquirer.timeout == 9.0
    assert config.acquirer.addresses == ["a:1", "b:2"]


def test_environment_lists_are_json() -> None:
    env = {"ISO_GATEWAY__ACQUIRER__ADDRESSES": '["h1:1", "h2:2"]'}
    assert load_config(None, environ=env).acquirer.addresses == ["h1:1", "h2:2"]


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[acquirer]\ntimout = 5\n", "acquirer.timout: unknown key"),
        ("[acquirer]\ntimeout = -1\n", "acquirer.timeout:"),
        ('[gateway]\nlisten = "nowhere"\n', "gateway.listen:"),
        ('[journal]\ndurability = "maybe"\n', "journal.durability:"),
        ("[reversal]\nretry_delays = []\n", "reversal.retry_delays:"),
        ("[reversal]\nretry_delays = [5, -1]\n", "reversal.retry_delays.1: Input should be"),
        ("[acquirer]\nreconnect_max = 0.1\n", "acquirer.reconnect_max: shorter than reconnect_min"),
        ("[mqtt]\nreconnect_min = 60\n", "mqtt.reconnect_max: shorter than reconnect_min (60.0)"),
        ('[acquirer]\nheader = "0x16"\n', "acquirer.header: must be hex digits, two per byte"),
        ("[gateway]\nidle_timeout = 5\n", "gateway.idle_timeout (5.0) must be 0 or longer than"),
        ('[acquirer]\ntls_ca = "ca.pem"\n', "acquirer: tls_ca is set but tls is false"),
        (
            '[acquirer]\ntls = true\ntls_key = "k.pem"\n',
            "acquirer: tls_key is set without tls_cert",
        ),
        ('[gateway]\ntls_client_ca = "ca.pem"\n', "gateway: tls_client_ca is set without tls_cert"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, toml: str, expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[acquirer\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, environ={})
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.toml", environ={})


def test_parse_hostport() -> None:
    assert parse_hostport("127.0.0.1:8583") == ("127.0.0.1", 8583)
    assert parse_hostport(":8583") == ("0.0.0.0", 8583)
    assert parse_hostport("[::1]:9000") == ("::1", 9000)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_hostport("127.0.0.1")


def test_flags_given_as_zero_are_validated_not_dropped() -> None:
    result = CliRunner().invoke(cli, ["serve", "--acquirer-timeout", "0"])
    assert result.exit_code != 0
    assert "acquirer.timeout: Input should be greater than 0" in result.output


def test_errors_say_where_the_value_came_from(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[gateway]\nlisten = "nowhere"\n')
    with pytest.raises(ConfigError) as info:
        load_config(
            path,
            environ={"ISO_GATEWAY__REVERSAL__RETRY_DELAYS": "[1, -1]"},
            overrides={"acquirer.timeout": 0},
        )
    lines = str(info.value).splitlines()[1:]
    assert sorted(line.strip().split(": ")[0] for line in lines) == sorted(
        [str(path), "command line", "environment ISO_GATEWAY__REVERSAL__RETRY_DELAYS"]
    )
