"""The real thing, when a Docker engine answers: build the image from docker/Dockerfile
and run the host-network compose cluster (docker-compose.yml + docker-compose.host.yml)
to completion. Skipped, with the reason, where `docker info` fails (CI has no engine).

The image is built on the local `ffp-base:bookworm` (torch preinstalled; made by the
shared docker-base.sh), so no registry image has to be pulled.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from conftest import free_port_block

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "ffp-base:bookworm"
FILES = ["-f", "docker/docker-compose.yml", "-f", "docker/docker-compose.host.yml"]


def sh(*cmd: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)


def first_line(r: subprocess.CompletedProcess) -> str:
    text = (r.stderr or r.stdout).strip()
    return text.splitlines()[0] if text else f"exit code {r.returncode}"


def compose_command() -> list[str]:
    """`docker compose` (v2 plugin), else `docker-compose` (v1), else skip."""
    if sh("docker", "compose", "version").returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("neither `docker compose` nor `docker-compose` is installed")


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("docker") is None:
        pytest.skip("no docker client on PATH")
    info = sh("docker", "info")
    if info.returncode != 0:
        pytest.skip(f"no Docker engine answers `docker info`: {first_line(info)}")
    if sh("docker", "image", "inspect", BASE_IMAGE).returncode != 0:
        pytest.skip(f"base image {BASE_IMAGE} is missing; build it with docker-base.sh")
    tag = "ff-pipeline:test"
    # --network host: the build reaches the package registry for the pure-Python deps.
    r = sh("docker", "build", "--network", "host", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
           "-t", tag, "-f", "docker/Dockerfile", ".", cwd=ROOT, timeout=1200)
    assert r.returncode == 0, f"docker build failed:\n{(r.stdout + r.stderr)[-4000:]}"
    return tag


def test_image_runs_ffpipe_as_a_non_root_user(image):
    r = sh("docker", "run", "--rm", "--network", "none", image, "--help")
    assert r.returncode == 0 and "worker" in r.stdout + r.stderr
    r = sh("docker", "run", "--rm", "--network", "none", "--entrypoint", "id", image, "-u")
    assert r.returncode == 0 and r.stdout.strip() != "0"


def test_host_network_compose_cluster_runs_to_completion(image, tmp_path):
    compose = compose_command()
    runs = tmp_path / "runs"
    runs.mkdir()
    runs.chmod(0o777)  # the containers write as the image's non-root user
    project = f"ffptest{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "IMAGE": image,
           "COMPOSE_PROJECT_NAME": project, "RUNS_VOLUME": str(runs), "RUN_NAME": "docker",
           "BASE_PORT": str(free_port_block(5)), "DATASET": "synthetic",
           "LAYERS": "64,100,100,100,100", "EPOCHS": "4", "LR": "0.01", "LABEL_STRENGTH": "4",
           "BATCH_SIZE": "25"}
    run = lambda *args, timeout=120: sh(*compose, *FILES, *args, cwd=ROOT,  # noqa: E731
                                        env=env, timeout=timeout)
    try:
        up = run("up", "-d", "--no-build", timeout=300)
        assert up.returncode == 0, up.stderr[-3000:]
        sink = run("ps", "-q", "sink").stdout.strip()
        assert sink, "no sink container"
        deadline, state = time.monotonic() + 300, ""
        while time.monotonic() < deadline:
            state = sh("docker", "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}",
                       sink).stdout.split()
            if state and state[0] == "exited":
                break
            time.sleep(2)
        logs = run("logs", "--no-color").stdout[-4000:]
        assert state == ["exited", "0"], f"sink {state}; logs:\n{logs}"
        summary = json.loads((runs / "docker" / "summary.json").read_text())
        assert summary["transport"] == "zmq" and summary["train_samples"] == 4 * 1600
        assert summary["test_accuracy"] > 0.3, logs  # chance is 0.1
        assert [s["stage"] for s in summary["stages"]] == [0, 1, 2, 3]
        for k in range(4):
            assert (runs / "docker" / "ckpt" / f"stage{k}.pt").exists()
    finally:
        down = run("down", "-v", "--remove-orphans", timeout=180)
        assert down.returncode == 0, down.stderr[-2000:]
