"""The real thing, when a Docker engine answers: build the image from docker/Dockerfile,
run the host-network compose cluster (docker-compose.yml + docker-compose.host.yml) to
completion, see a re-used RUN_NAME refused, and a stage stopped by hand (`docker kill`)
named by the sink. Skipped, with the reason, where `docker info` fails (CI has no engine).

The image is built on a base that needs no registry: TEST_BASE_IMAGE, by default the
local `ffp-base:bookworm` that `bash docker/build-base.sh` makes (torch preinstalled).
Compose v2 (`docker compose`) is used where installed, else v1 (`docker-compose`).
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

from conftest import free_port_block, read_jsonl

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = os.environ.get("TEST_BASE_IMAGE", "ffp-base:bookworm")
FILES = ["-f", "docker/docker-compose.yml", "-f", "docker/docker-compose.host.yml"]
# A tiny synthetic run with the compose file's 4 stages (5 widths).
TINY = {"DATASET": "synthetic", "LAYERS": "64,100,100,100,100", "EPOCHS": "4", "LR": "0.01",
        "LABEL_STRENGTH": "4", "BATCH_SIZE": "25"}
STAGES = ["stage0", "stage1", "stage2", "stage3"]


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
        pytest.skip(f"base image {BASE_IMAGE} is missing; make it with "
                    f"`bash docker/build-base.sh` (or set TEST_BASE_IMAGE)")
    tag = "ff-pipeline:test"
    # --network host: the build reaches the package registry for the pure-Python deps.
    r = sh("docker", "build", "--network", "host", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
           "-t", tag, "-f", "docker/Dockerfile", ".", cwd=ROOT, timeout=1200)
    assert r.returncode == 0, f"docker build failed:\n{(r.stdout + r.stderr)[-4000:]}"
    return tag


class Cluster:
    """One compose project on the host network, its runs in a host folder."""

    def __init__(self, image: str, runs: Path, **variables):
        self.compose = compose_command()
        self.runs = runs
        self.env = {**os.environ, "IMAGE": image, "RUNS_VOLUME": str(runs),
                    "COMPOSE_PROJECT_NAME": f"ffptest{uuid.uuid4().hex[:8]}",
                    "BASE_PORT": str(free_port_block(5)), **TINY, **variables}

    def run(self, *args, timeout=120) -> subprocess.CompletedProcess:
        return sh(*self.compose, *FILES, *args, cwd=ROOT, env=self.env, timeout=timeout)

    def up(self) -> None:
        r = self.run("up", "-d", "--no-build", timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]

    def container(self, service: str) -> str:
        cid = self.run("ps", "-a", "-q", service).stdout.strip()  # -a: exited ones too
        assert cid, f"no {service} container"
        return cid

    def state(self, service: str) -> list[str]:
        return sh("docker", "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}",
                  self.container(service)).stdout.split()

    def wait_exited(self, services, timeout: float) -> dict[str, list[str]]:
        deadline = time.monotonic() + timeout
        while True:
            states = {s: self.state(s) for s in services}
            if all(st and st[0] == "exited" for st in states.values()):
                return states
            if time.monotonic() > deadline:
                return states
            time.sleep(2)

    def logs(self, *services) -> str:
        return self.run("logs", "--no-color", *services).stdout

    def down(self) -> None:
        r = self.run("down", "-v", "--remove-orphans", timeout=180)
        assert r.returncode == 0, r.stderr[-2000:]


@pytest.fixture
def runs(tmp_path) -> Path:
    out = tmp_path / "runs"
    out.mkdir()
    out.chmod(0o777)  # the containers write as the image's non-root user
    return out


def test_image_runs_ffpipe_as_a_non_root_user(image):
    r = sh("docker", "run", "--rm", "--network", "none", image, "--help")
    assert r.returncode == 0 and "worker" in r.stdout + r.stderr
    r = sh("docker", "run", "--rm", "--network", "none", "--entrypoint", "id", image, "-u")
    assert r.returncode == 0 and r.stdout.strip() != "0"


def test_host_network_cluster_runs_to_completion_and_a_reused_run_name_is_refused(
        image, runs):
    cluster = Cluster(image, runs, RUN_NAME="docker", RESTARTS="1")
    try:
        cluster.up()
        states = cluster.wait_exited(["sink"], 300)
        logs = cluster.logs()[-4000:]
        assert states["sink"] == ["exited", "0"], f"sink {states}; logs:\n{logs}"
        summary_file = runs / "docker" / "summary.json"
        summary = json.loads(summary_file.read_text())
        assert summary["transport"] == "zmq" and summary["train_samples"] == 4 * 1600
        assert summary["test_accuracy"] > 0.3, logs  # chance is 0.1
        assert [s["stage"] for s in summary["stages"]] == [0, 1, 2, 3]
        for k in range(4):
            assert (runs / "docker" / "ckpt" / f"stage{k}.pt").exists()
            assert read_jsonl(runs / "docker" / f"stage{k}.jsonl")[0]["resumed"] is False
        finished = summary_file.read_bytes()
        cluster.run("rm", "-f", "-s", "-v")  # the containers go, the run folder stays
        # The same RUN_NAME again: every service refuses it (source and stages once more
        # after their one restart); the result is untouched.
        cluster.up()
        states = cluster.wait_exited(["source", *STAGES, "sink"], 180)
        logs = cluster.logs()
        assert all(st == ["exited", "2"] for st in states.values()), f"{states}\n{logs[-3000:]}"
        assert logs.count("holds a finished run") >= 6, logs[-3000:]
        assert summary_file.read_bytes() == finished
    finally:
        cluster.down()


def test_a_stage_killed_by_hand_is_named_by_the_sink_and_the_cluster_stops(image, runs):
    timeout = 5
    cluster = Cluster(image, runs, RUN_NAME="killed", EPOCHS="500", CKPT_EVERY="20",
                      SILENCE_TIMEOUT=str(timeout))
    try:
        cluster.up()
        trained = runs / "killed" / "stage1.jsonl"
        deadline = time.monotonic() + 300
        while not (trained.exists() and any(r["kind"] == "train" for r in read_jsonl(trained))):
            assert time.monotonic() < deadline, cluster.logs()[-3000:]
            time.sleep(2)
        r = sh("docker", "kill", cluster.container("stage1"))
        assert r.returncode == 0, r.stderr
        others = ["source", "stage0", "stage2", "stage3", "sink"]
        states = cluster.wait_exited(others, 4 * timeout + 120)
        sink_log = cluster.logs("sink")
        assert states["sink"] == ["exited", "1"], f"{states}\n{sink_log[-3000:]}"
        assert (f"ffpipe: error: sink: stage 1 has gone silent: nothing has come through it "
                f"for {timeout} s") in sink_log
        # The others stopped cleanly (exit 0: restart: on-failure leaves them down).
        assert all(states[s] == ["exited", "0"] for s in others if s != "sink"), states
        assert cluster.state("stage1") == ["exited", "137"]  # killed; never restarted
        assert json.loads((runs / "killed" / "summary.json").read_text())["interrupted"]
    finally:
        cluster.down()
