"""`iso-gateway replay` as an operator runs it: a separate process, exit codes, JSON report."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path
from typing import Any

from gateway.config import load_config
from tests.e2e.harness import FAST, build_service

from .helpers import CAPTURES

CLEAN = CAPTURES / "cup-pos_clean.pcapng"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def run_cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def replay_cli(
    tmp_path: Path, path: Path, *, target: str | None = None, **gateway: Any
) -> tuple[int, str, str]:
    """The gateway in this process, its acquirer address where the CLI's built-in host listens."""
    host_port = free_port()
    settings = {
        **FAST,
        # Long enough that a loaded machine does not turn a clean capture into timeouts,
        # short enough that missing responses still time out within the replay's settle.
        "acquirer.timeout": 1.5,
        "gateway.listen": "127.0.0.1:0",
        "gateway.dialect": "cup-pos",
        "acquirer.addresses": [f"127.0.0.1:{host_port}"],
        **gateway,
    }
    config = load_config(None, environ={}, overrides=settings)
    service = build_service(config, tmp_path / f"journal-{host_port}.sqlite3")
    await service.start()
    try:
        return await run_cli(
            "replay", str(path), "--dialect", "cup-pos",
            "--target", target or f"127.0.0.1:{service.terminals.port}",
            "--acquirer-listen", f"127.0.0.1:{host_port}",
            "--as-fast-as-possible", "--response-timeout", "3", "--settle", "3",
            "--quiet", "0.2", "--link-wait", "10", "--json",
        )  # fmt: skip
    finally:
        await service.shutdown()


async def test_exit_code_zero_when_nothing_differs(tmp_path: Path) -> None:
    code, out, err = await replay_cli(tmp_path, CLEAN)
    assert code == 0, err
    report = json.loads(out)
    assert report["summary"]["ok"] is True
    assert report["summary"]["same"] == len(report["transactions"]) == 30
    assert "waiting for the gateway to connect" in err


async def test_exit_code_one_when_the_gateway_behaves_differently(tmp_path: Path) -> None:
    code, out, _ = await replay_cli(tmp_path, CLEAN, **{"acquirer.stan_mode": "rewrite"})
    assert code == 1
    report = json.loads(out)
    assert report["summary"]["ok"] is False and report["summary"]["differs"] == 30


async def test_exit_code_two_when_the_gateway_never_connects(tmp_path: Path) -> None:
    code, out, err = await run_cli(
        "replay", str(CLEAN), "--dialect", "cup-pos", "--target", "127.0.0.1:9",
        "--acquirer-listen", f"127.0.0.1:{free_port()}", "--link-wait", "0.2",
    )  # fmt: skip
    assert code == 2 and not out
    assert err.splitlines()[-1].startswith("error: the gateway did not connect")
    code, _, err = await run_cli(
        "replay", str(tmp_path / "absent.pcapng"), "--dialect", "cup-pos",
        "--target", "127.0.0.1:9", "--acquirer-listen", "127.0.0.1:0",
    )  # fmt: skip
    assert code == 2 and "does not exist" in err


async def test_exit_code_two_when_the_target_is_not_the_gateway(tmp_path: Path) -> None:
    """The gateway connected to the built-in host, but --target points nowhere."""
    code, out, err = await replay_cli(tmp_path, CLEAN, target=f"127.0.0.1:{free_port()}")
    assert code == 2 and not out
    assert "cannot connect to the gateway" in err.splitlines()[-1]
