"""Secrets and configs on a lab (1 manager, 1 worker, real daemons and containers): a service
of 2 replicas, one per node, referring to a secret and a config created through the Engine
API, finds both files inside each of its containers (read back through `shoal service logs`),
with the owner and mode the service asked for; so does a global service made with
`shoal service create --secret ... --config ...`."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from cli.lab import Lab
from tests.swarm.helpers import api, eventually, swarm_lab

IMAGE = "busybox:latest"
MANAGER = "manager-1"
SERVICE = "uses-secrets"
SECRET_TEXT = "secret-value-7f3a"
CONFIG_TEXT = "config-value-91bc"
# <service>.<slot, or node ID for a global service>.<task>@<host> | <text>
LINE = re.compile(r"^(?P<svc>[\w-]+)\.(?P<slot>[0-9a-z]+)\.(?P<task>[0-9a-z]{12})@(?P<host>\S+)\s+\| (?P<text>.*)$")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with swarm_lab("sd", tmp_path_factory.mktemp("img"), managers=1, workers=1, image=IMAGE) as the_lab:
        yield the_lab


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def shoal(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    proc = lab.exec(MANAGER, [sys.executable, "-m", "cli.main", *args], timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc


def printed_per_host(lab: Lab, service: str, lines: int) -> dict[str, list[str]]:
    """What the service's tasks printed, by host, once both hosts printed `lines` lines."""
    def lines_per_host() -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for line in shoal(lab, "service", "logs", service).stdout.splitlines():
            match = LINE.match(line)
            assert match, f"unexpected log line {line!r}"
            out.setdefault(match["host"], []).append(match["text"])
        complete = len(out) == 2 and all(len(texts) >= lines for texts in out.values())
        return out if complete else {}

    per_host = eventually(lines_per_host, timeout=30, what=f"both tasks of {service} to print their files")
    assert set(per_host) == {"manager-1", "worker-1"}
    return per_host


def test_both_replicas_read_the_secret_and_the_config(lab: Lab) -> None:
    secret = api(lab, MANAGER, "POST", "/secrets/create", {"Name": "db-password", "Data": b64(SECRET_TEXT + "\n")})
    config = api(lab, MANAGER, "POST", "/configs/create", {"Name": "app-conf", "Data": b64(CONFIG_TEXT + "\n")})
    command = ("cat /run/secrets/db-password /app.conf; "
               "stat -c 'meta %n %a %u' /run/secrets/db-password /app.conf; "
               "trap 'exit 0' TERM; sleep 100000 & wait")
    spec = {
        "Name": SERVICE,
        "Mode": {"Replicated": {"Replicas": 2}},
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": IMAGE, "Args": ["sh", "-c", command], "StopGracePeriod": 2_000_000_000,
                "Secrets": [{"SecretID": secret["ID"], "SecretName": "db-password",
                             "File": {"Name": "db-password", "UID": "1000", "GID": "0", "Mode": 0o400}}],
                "Configs": [{"ConfigID": config["ID"], "ConfigName": "app-conf",
                             "File": {"Name": "app.conf", "UID": "0", "GID": "0", "Mode": 0o444}}],
            },
            "Placement": {"MaxReplicas": 1},
        },
    }
    api(lab, MANAGER, "POST", "/services/create", spec)
    for host, texts in printed_per_host(lab, SERVICE, 4).items():
        assert texts[:2] == [SECRET_TEXT, CONFIG_TEXT], (host, texts)
        assert "meta /run/secrets/db-password 400 1000" in texts, (host, texts)
        assert "meta /app.conf 444 0" in texts, (host, texts)


def test_a_global_service_made_by_the_cli_gets_them_at_its_targets(lab: Lab) -> None:
    api(lab, MANAGER, "POST", "/secrets/create", {"Name": "api-token", "Data": b64("token-5e2d\n")})
    api(lab, MANAGER, "POST", "/configs/create", {"Name": "site.conf", "Data": b64("site-c40f\n")})
    command = ("cat /etc/token /site.conf; stat -c 'meta %n %a %u %g' /etc/token; "
               "trap 'exit 0' TERM; sleep 100000 & wait")
    shoal(lab, "service", "create", "--detach", "--name", "cli-secrets", "--mode", "global",
          "--stop-grace-period", "2s", "--secret", "source=api-token,target=/etc/token,uid=1000,gid=50,mode=0400",
          "--config", "site.conf", IMAGE, "sh", "-c", command)
    for host, texts in printed_per_host(lab, "cli-secrets", 3).items():
        assert texts[:3] == ["token-5e2d", "site-c40f", "meta /etc/token 400 1000 50"], (host, texts)
