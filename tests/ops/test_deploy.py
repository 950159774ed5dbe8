"""deploy/, docker-compose.yml and the Dockerfile, checked with the tools that read them.

Prometheus rules and config: promtool (check rules, test rules, check config). Dashboard and
alert queries: every metric they name is in a live gateway's scrape, and promtool parses each
query. docker-compose.yml: the Compose specification schema check-jsonschema vendors, every
path it mounts exists, and its pieces point at each other (ports, hosts, rule files).
No Docker engine runs here, so nothing is built or started.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from gateway.config import load_config, parse_hostport
from tests.conftest import REPO, need_tool
from tests.e2e.harness import auth

from .metered import Metered, start_metered

DEPLOY = REPO / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "iso-gateway.json"
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"

REQUIRED_ALERTS = {
    "ReversalFailed",
    "ReversalOwedTooLong",
    "AcquirerLinkDown",
    "TimeoutRateHigh",
    "JournalSlow",
    "MqttDisconnected",
}
# Series Prometheus makes itself, not the gateway.
PROMETHEUS_OWN = {"up"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def promtool() -> str:
    return need_tool(shutil.which("promtool"), "promtool")


def run_promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, check=False, cwd=cwd, timeout=60
    )


# Prometheus ----------------------------------------------------------------------------------


def test_promtool_checks_and_unit_tests_the_alerts() -> None:
    checked = run_promtool("check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = run_promtool("test", "rules", str(ALERT_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    config = run_promtool("check", "config", str(PROMETHEUS))
    assert config.returncode == 0, config.stdout + config.stderr


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert names >= REQUIRED_ALERTS
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in load_yaml(ALERT_TESTS)["tests"]:
        for check in case.get("alert_rule_test", ()):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert firing == names, f"never seen firing: {names - firing}"
    assert quiet == names, f"never seen quiet: {names - quiet}"
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_the_alert_unit_tests_can_fail(tmp_path: Path) -> None:
    """A threshold changed in alerts.yml must break alerts_test.yml."""
    rule = "iso_gateway_oldest_owed_reversal_age_seconds > 600"
    assert rule in ALERTS.read_text()
    (tmp_path / "alerts.yml").write_text(ALERTS.read_text().replace(rule, rule + "0"))
    shutil.copy(ALERT_TESTS, tmp_path / "alerts_test.yml")
    tested = run_promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert tested.returncode != 0
    assert "ReversalOwedTooLong" in tested.stdout + tested.stderr


# queries and the live scrape -----------------------------------------------------------------


@pytest.fixture
async def scraped(tmp_path: Path) -> AsyncIterator[set[str]]:
    """Sample names a gateway exposes after one approval, with an MQTT publisher attached."""
    gateway: Metered = await start_metered(tmp_path)
    try:
        gateway.endpoint.collector.mqtt = lambda: SimpleNamespace(connected=True, dropped=0)
        await gateway.links_up()
        terminal = await gateway.terminal()
        await terminal.send("0200", auth(1))
        yield set((await gateway.samples()).keys())
    finally:
        await gateway.stop()


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", ()):
            queries.append((panel["title"], target["expr"]))
    return queries


_FUNCTIONS_AND_WORDS = {
    "sum", "max", "min", "count", "avg", "rate", "increase", "irate", "histogram_quantile", "by",
    "without", "and", "or", "unless", "on", "ignoring", "le", "instance", "link", "outcome",
    "result", "side", "kind", "job", "label_values", "bool",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (label matchers and strings left out)."""
    stripped = re.sub(r'"[^"]*"', '""', expr)
    stripped = re.sub(r"\{[^}]*\}", "", stripped)
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", stripped))
    return {word for word in words if word not in _FUNCTIONS_AND_WORDS}


def test_metric_names_are_read_from_queries() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (instance, le) (rate(a_bucket{x="y{z}"}[5m])))'
        " / on (instance) b_total and c"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


def test_the_dashboard_shows_what_an_operator_reads_first() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] and dashboard["title"]
    text = " ".join(expr for _, expr in dashboard_queries())
    for essential in (
        "iso_gateway_requests_total",
        "iso_gateway_acquirer_round_trip_seconds_bucket",
        "iso_gateway_reversals_owed",
        "iso_gateway_reversals_failed",
        "iso_gateway_oldest_owed_reversal_age_seconds",
        "iso_gateway_acquirer_link_up",
    ):
        assert essential in text, essential
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


async def test_dashboard_and_alerts_name_only_metrics_the_gateway_exposes(
    scraped: set[str],
) -> None:
    for title, expr in dashboard_queries():
        missing = metric_names(expr) - scraped
        assert not missing, f"dashboard panel {title!r} reads {missing}, not in /metrics"
    for rule in alert_rules():
        missing = metric_names(rule["expr"]) - scraped - PROMETHEUS_OWN
        assert not missing, f"alert {rule['alert']} reads {missing}, not in /metrics"


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each query as a recording rule (Grafana's variables filled in): promtool parses it."""
    rules = [
        {
            "record": f"dashboard:query_{index}",
            "expr": expr.replace("$__rate_interval", "1m").replace("$instance", ".*"),
        }
        for index, (_, expr) in enumerate(dashboard_queries())
    ]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = run_promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{len(rules)} rules found" in checked.stdout


# Grafana provisioning ------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE)
    return data


def mounts(service: str) -> dict[str, str]:
    """Container path -> host path of a service's bind mounts from the repository."""
    found = {}
    for volume in compose()["services"][service].get("volumes", ()):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            found[target] = source
    return found


def test_grafana_provisioning_points_at_the_compose_stack() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    datasources = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert [ds["type"] for ds in datasources] == ["prometheus"]
    assert datasources[0]["url"] == "http://prometheus:9090"
    assert "prometheus" in compose()["services"]
    providers = load_yaml(provisioning / "dashboards" / "iso-gateway.yml")["providers"]
    grafana = mounts("grafana")
    for provider in providers:
        path = provider["options"]["path"]
        assert path in grafana, f"dashboards are read from {path}, which compose does not mount"
        assert (REPO / grafana[path] / DASHBOARD.name).is_file()
    assert grafana["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"


# docker-compose.yml --------------------------------------------------------------------------


def compose_schema() -> Path:
    vendored = resources.files("check_jsonschema") / "builtin_schemas/vendor/compose-spec.json"
    path = Path(str(vendored))
    assert path.is_file(), f"check-jsonschema no longer vendors the Compose spec at {path}"
    return path


def check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    compose_schema()
    command = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
    return subprocess.run(
        [*command, str(path)], capture_output=True, text=True, check=False, timeout=60
    )


def test_compose_file_follows_the_compose_specification(tmp_path: Path) -> None:
    checked = check_compose(COMPOSE)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # ...and the check can fail: a service with a misspelt key is rejected.
    broken = compose()
    broken["services"]["gateway"]["enviroment"] = {"X": "1"}
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    rejected = check_compose(path)
    assert rejected.returncode != 0
    assert "enviroment" in rejected.stdout + rejected.stderr


def test_compose_runs_every_piece() -> None:
    services = compose()["services"]
    assert set(services) >= {"gateway", "acquirer-sim", "terminals", "mosquitto"}
    assert set(services) >= {"prometheus", "grafana"}
    assert services["terminals"]["profiles"] == ["traffic"]
    for name in ("gateway", "acquirer-sim", "terminals"):
        assert services[name]["build"]["context"] == "."
        assert services[name]["build"]["dockerfile"] == DOCKERFILE.name


def test_every_path_compose_mounts_exists() -> None:
    checked = 0
    for name, service in compose()["services"].items():
        for target, source in mounts(name).items():
            assert (REPO / source).exists(), f"{name} mounts {source} at {target}: missing"
            checked += 1
        build = service.get("build")
        if build:
            assert (REPO / build["context"] / build["dockerfile"]).is_file()
    assert checked >= 5


def test_the_pieces_point_at_each_other() -> None:
    services = compose()["services"]
    gateway = load_config(None, environ=services["gateway"]["environment"])
    # The gateway's metrics port is what Prometheus scrapes.
    scrape = load_yaml(PROMETHEUS)["scrape_configs"][0]["static_configs"][0]["targets"]
    _, metrics_port = parse_hostport(gateway.metrics.listen)
    assert scrape == [f"gateway:{metrics_port}"]
    # The gateway reaches the simulator where it listens, and the broker.
    sim_listen = next(a for a in services["acquirer-sim"]["command"] if a.startswith("--listen"))
    _, sim_port = parse_hostport(sim_listen.split("=", 1)[1])
    assert gateway.acquirer.addresses == [f"acquirer-sim:{sim_port}"]
    assert gateway.mqtt.url == "mqtt://mosquitto:1883"
    # The terminals send to the gateway's listen port.
    _, terminal_port = parse_hostport(gateway.gateway.listen)
    assert f"--target=gateway:{terminal_port}" in services["terminals"]["command"]
    # Prometheus finds its rule files beside its config, where compose mounts them.
    prometheus = mounts("prometheus")
    config_dir = PurePosixPath(
        next(t for t, s in prometheus.items() if s.endswith("/prometheus.yml"))
    ).parent
    for rule_file in load_yaml(PROMETHEUS)["rule_files"]:
        assert str(config_dir / rule_file) in prometheus, f"{rule_file} is not mounted"


# Dockerfile ----------------------------------------------------------------------------------


def test_dockerfile_builds_a_non_root_gateway_image() -> None:
    lines = [
        line.strip()
        for line in DOCKERFILE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    froms = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert froms and all(image == "python:3.11-slim" for image in froms)
    assert any(re.fullmatch(r"RUN pip install .*\s\.", line) for line in lines)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}
    assert 'ENTRYPOINT ["iso-gateway"]' in lines
    ignored = {
        line.strip().rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for line in lines:
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), f"the Dockerfile copies {source}: missing"
                assert source.rstrip("/") not in ignored, f"{source} is in .dockerignore"
