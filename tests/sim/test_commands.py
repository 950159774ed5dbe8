"""`iso-gateway sim acquirer` and `iso-gateway sim terminals` from the shell."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import trustme
from click.testing import CliRunner

from gateway.sim.commands import sim
from gateway.wire.masking import redact_text

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_acquirer(*options: str) -> tuple[subprocess.Popen[str], int, str]:
    """Start `sim acquirer` on a free port; its port and what it printed before serving."""
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.sim.commands", "acquirer", "--listen", "127.0.0.1:0",
         "--dialect", "iso87-binary", *options],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert process.stdout is not None
    first = process.stdout.readline()  # "acquirer simulator (...) listening on HOST:PORT"
    if "listening on" not in first:
        process.kill()
        _, errors = process.communicate(timeout=10)
        raise AssertionError(f"the acquirer did not start: {first!r} {errors!r}")
    banner = [first]
    while not banner[-1].startswith("Ctrl-C"):
        banner.append(process.stdout.readline())
    return process, int(first.rsplit(":", 1)[1]), "".join(banner)


def stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    process.send_signal(signal.SIGTERM)
    out, errors = process.communicate(timeout=20)
    assert process.returncode == 0, errors
    return out, errors


def test_terminals_against_the_acquirer_command(tmp_path: Path) -> None:
    ledger_file = tmp_path / "ledger.json"
    process, port, banner = start_acquirer(
        "--drop-rate", "0.2", "--seed", "4", "--ledger-file", str(ledger_file)
    )
    try:
        result = CliRunner().invoke(
            sim,
            ["terminals", "--target", f"127.0.0.1:{port}", "--dialect", "iso87-binary",
             "--count", "40", "--terminals", "4", "--timeout", "0.5", "--json"],
        )  # fmt: skip
    finally:
        out, errors = stop(process)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["sent"] == 40
    assert summary["approved"] + summary["no_answer"] == 40
    assert summary["no_answer"] > 0  # the drops

    assert "faults: drop 20.0%" in banner
    assert "ledger of held funds" in out
    assert "approved (held)      40" in out
    assert "still held           40" in out
    ledger = json.loads(ledger_file.read_text())
    assert ledger["summary"]["approved"] == 40
    # Nothing that looks like a PAN or track data (redact_text would change it).
    for text in (banner, out, errors, result.output, ledger_file.read_text()):
        assert redact_text(text) == text


def test_the_human_summary_reads_well_and_shows_no_card_data() -> None:
    process, port, _ = start_acquirer()
    try:
        result = CliRunner().invoke(
            sim,
            ["terminals", "--target", f"127.0.0.1:{port}", "--dialect", "iso87-binary",
             "--count", "10", "--terminals", "2", "--pipeline", "2", "--seed", "1"],
        )  # fmt: skip
    finally:
        stop(process)
    assert result.exit_code == 0, result.output
    assert "approved           10" in result.output
    assert "latency            p50" in result.output
    # The fleet's test cards start with the test BINs: none of them is printed.
    for bin_ in ("476173", "541333", "622424"):
        assert bin_ not in result.output
    assert redact_text(result.output) == result.output


def test_unknown_dialect_is_one_line_and_exit_1() -> None:
    result = CliRunner().invoke(sim, ["acquirer", "--listen", "127.0.0.1:0", "--dialect", "nope"])
    assert result.exit_code == 1
    assert "error:" in result.output and "nope" in result.output
    assert "Traceback" not in result.output


def test_a_bad_address_is_a_usage_error() -> None:
    result = CliRunner().invoke(
        sim, ["terminals", "--target", "localhost", "--dialect", "iso87-binary"]
    )
    assert result.exit_code == 2
    assert "HOST:PORT" in result.output


def test_a_bad_rules_file_names_the_file_and_rule(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text("[[rule]]\nfault = 'explode'\n")
    result = CliRunner().invoke(
        sim,
        ["acquirer", "--listen", "127.0.0.1:0", "--dialect", "iso87-binary", "--rules", str(rules)],
    )
    assert result.exit_code == 1
    assert "rules.toml: rule 1: fault" in result.output


def test_fault_rates_over_one_are_refused() -> None:
    result = CliRunner().invoke(
        sim,
        ["acquirer", "--listen", "127.0.0.1:0", "--dialect", "iso87-binary",
         "--drop-rate", "0.7", "--close-rate", "0.7"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "more than 1" in result.output


def test_terminals_with_nobody_listening_fail_clearly() -> None:
    result = CliRunner().invoke(
        sim,
        ["terminals", "--target", f"127.0.0.1:{free_port()}", "--dialect", "iso87-binary",
         "--count", "2", "--terminals", "1"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "cannot connect" in result.output


def test_the_simulators_speak_tls_when_asked(tmp_path: Path) -> None:
    """`sim acquirer --tls-cert` and `sim terminals --tls --tls-ca`: one TLS conversation."""
    ca = trustme.CA()
    server = tmp_path / "acquirer.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(server))
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    process, port, _ = start_acquirer("--tls-cert", str(server))
    try:
        target = ["terminals", "--target", f"127.0.0.1:{port}", "--dialect", "iso87-binary",
                  "--count", "10", "--terminals", "2", "--json"]  # fmt: skip
        secure = CliRunner().invoke(sim, [*target, "--tls", "--tls-ca", str(ca_file)])
        plain = CliRunner().invoke(sim, [*target, "--timeout", "0.5"])
    finally:
        out, _ = stop(process)
    assert secure.exit_code == 0, secure.output
    assert json.loads(secure.output)["approved"] == 10
    assert json.loads(plain.output)["approved"] == 0  # plain TCP on a TLS port: no answer
    assert "approved (held)      10" in out
    for text in (secure.output, plain.output, out):  # no card data (redact_text would change it)
        assert redact_text(text) == text


def test_tls_flags_without_what_they_belong_to_are_usage_errors() -> None:
    result = CliRunner().invoke(
        sim, ["acquirer", "--listen", "127.0.0.1:0", "--dialect", "iso87-binary",
              "--tls-key", "key.pem"],
    )  # fmt: skip
    assert result.exit_code == 2 and "needs --tls-cert" in result.output
    result = CliRunner().invoke(
        sim, ["terminals", "--target", "127.0.0.1:1", "--dialect", "iso87-binary",
              "--tls-ca", "ca.pem"],
    )  # fmt: skip
    assert result.exit_code == 2 and "needs --tls" in result.output
