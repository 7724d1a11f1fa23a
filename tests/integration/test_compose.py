"""docker/docker-compose.yml exercised without Docker: read it with the host-network
override and docker/.env, then start every service's command as a local process with that
service's environment, as compose would on `network_mode: host`, until the sink is done."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from conftest import free_port_block, wait_for

yaml = pytest.importorskip("yaml", reason="PyYAML reads the compose files")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

DOCKER = Path(__file__).resolve().parents[2] / "docker"
SERVICES = ["source", "stage0", "stage1", "stage2", "stage3", "sink"]
# A tiny synthetic run with the compose file's 4 stages (5 widths); the rest from .env.
TINY = {"DATASET": "synthetic", "LAYERS": "64,100,100,100,100", "EPOCHS": "4",
        "LR": "0.01", "LABEL_STRENGTH": "4",
        "BATCH_SIZE": "25"}


def read_env_file(path: Path) -> dict:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value, env: dict):
    """Compose's variable substitution: $$, ${VAR}, ${VAR:-default}, ${VAR-default}, $VAR."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m):
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, default = m.group(2), m.group(3)
        if op == ":-" and not env.get(name):
            return default
        if op == "-" and name not in env:
            return default
        return env.get(name, "")
    return VAR.sub(sub, value)


def as_dict(environment) -> dict:
    if isinstance(environment, list):  # the KEY=VALUE list form
        return dict(item.partition("=")[::2] for item in environment)
    return dict(environment or {})


def compose_services(files: list[Path], variables: dict) -> dict:
    """service -> merged config; `environment` merged key by key, other keys replaced."""
    services: dict[str, dict] = {}
    for f in files:
        doc = interpolate(yaml.safe_load(f.read_text()), variables)
        for name, svc in doc["services"].items():
            merged = services.setdefault(name, {})
            env = {**as_dict(merged.get("environment")), **as_dict(svc.get("environment"))}
            merged.update(svc)
            merged["environment"] = {k: "" if v is None else str(v) for k, v in env.items()}
    return services


def load_cluster(overrides: dict) -> dict:
    variables = {**read_env_file(DOCKER / ".env"), **overrides}  # shell beats .env
    return compose_services([DOCKER / "docker-compose.yml",
                             DOCKER / "docker-compose.host.yml"], variables)


def test_compose_file_has_the_six_services_restarts_healthchecks_and_a_shared_runs_volume():
    base = compose_services([DOCKER / "docker-compose.yml"], read_env_file(DOCKER / ".env"))
    assert sorted(base) == sorted(SERVICES)
    volumes = {tuple(s["volumes"]) for s in base.values()}
    assert len(volumes) == 1  # one shared runs volume
    for name, svc in base.items():
        assert svc["restart"] == "on-failure", name
        assert svc["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        assert svc["command"][0] == "worker", name
        env = svc["environment"]
        assert env["FFPIPE_PIPELINE__TRANSPORT"] == "zmq"
        assert env["FFPIPE_OUT"].startswith(svc["volumes"][0].split(":")[1])
        endpoints = env["FFPIPE_NET__ENDPOINTS"].split(",")
        assert [e.split("//")[1].split(":")[0] for e in endpoints] == SERVICES[1:]
    widths = read_env_file(DOCKER / ".env")["LAYERS"].split(",")
    assert len(widths) - 1 == 4, "the 4 stage services need LAYERS with 5 widths"


def test_host_override_listens_on_loopback_only():
    cluster = load_cluster({})
    for name, svc in cluster.items():
        env = svc["environment"]
        assert svc["network_mode"] == "host", name
        assert env["FFPIPE_NET__HOST"] == "127.0.0.1"
        assert env["FFPIPE_NET__BIND_HOST"] in ("", "127.0.0.1")  # never 0.0.0.0
        assert env["FFPIPE_NET__ENDPOINTS"] == ""  # derived: 127.0.0.1:BASE_PORT+k+1
        assert env["FFPIPE_NET__STORE"].startswith("127.0.0.1:")


def test_every_compose_service_started_as_a_local_process_completes_the_run(procs, tmp_path):
    base = free_port_block(5)
    runs = tmp_path / "runs"
    cluster = load_cluster({**TINY, "BASE_PORT": str(base), "RUN_NAME": "compose-test"})
    started = {}
    # Compose starts services in no particular order; reversed file order here.
    for name in reversed(SERVICES):
        svc = cluster[name]
        target = svc["volumes"][0].split(":")[1]  # the runs volume's path in the container
        env = {k: v.replace(target, str(runs), 1) if k == "FFPIPE_OUT" else v
               for k, v in svc["environment"].items()}
        started[name] = procs.ffpipe(svc["command"], env=env)
    for name, p in started.items():
        try:
            _, err = p.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            p.kill()
            pytest.fail(f"service {name} did not finish:\n{p.communicate()[1][-3000:]}")
        assert p.returncode == 0, f"service {name} exited {p.returncode}:\n{err[-3000:]}"
    out = runs / "compose-test"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["transport"] == "zmq" and summary["train_samples"] == 4 * 1600
    assert summary["test_accuracy"] > 0.3  # chance is 0.1
    assert [s["stage"] for s in summary["stages"]] == [0, 1, 2, 3]
    config = json.loads((out / "config.json").read_text())
    assert config["net"]["base_port"] == base and config["pipeline"]["resume"] == "true"
    wait_for(lambda: procs.alive() == [], 10, "every service process to exit")
