"""docker/ checked without a Docker engine: the compose files' structure (one image built
once and run by every service, the base image chosen in one place, restart policies, host
networking on loopback only), the ignore files, and the cluster itself, read with the
host-network override and docker/.env, every service's command started as a local process
with that service's environment, as compose would on `network_mode: host`, until the sink
is done. With a Docker engine: test_docker.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import free_port_block, read_jsonl, wait_for

yaml = pytest.importorskip("yaml", reason="PyYAML reads the compose files")

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
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


def base_services() -> dict:
    return compose_services([DOCKER / "docker-compose.yml"], read_env_file(DOCKER / ".env"))


def test_compose_file_has_the_six_services_restarts_healthchecks_and_a_shared_runs_volume():
    base = base_services()
    assert sorted(base) == sorted(SERVICES)
    volumes = {tuple(s["volumes"]) for s in base.values()}
    assert len(volumes) == 1  # one shared runs volume
    env_file = read_env_file(DOCKER / ".env")
    for name, svc in base.items():
        # A failed source or stage is restarted (a bounded number of times: a refused
        # RUN_NAME exits 2 and must not loop); the sink's exit code is the run's.
        want = "no" if name == "sink" else f"on-failure:{env_file['RESTARTS']}"
        assert svc["restart"] == want, name
        assert svc["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        assert svc["command"][0] == "worker", name
        env = svc["environment"]
        assert env["FFPIPE_PIPELINE__TRANSPORT"] == "zmq"
        assert env["FFPIPE_PIPELINE__RESUME"] == "auto"  # a restart resumes, a rerun is refused
        assert float(env["FFPIPE_PIPELINE__SILENCE_TIMEOUT"]) > 0
        assert env["FFPIPE_OUT"].startswith(svc["volumes"][0].split(":")[1])
        endpoints = env["FFPIPE_NET__ENDPOINTS"].split(",")
        assert [e.split("//")[1].split(":")[0] for e in endpoints] == SERVICES[1:]
    assert int(env_file["RESTARTS"]) >= 1  # docker reads on-failure:0 as "no limit"
    widths = env_file["LAYERS"].split(",")
    assert len(widths) - 1 == 4, "the 4 stage services need LAYERS with 5 widths"


def test_one_image_is_built_once_and_run_by_every_service():
    base = base_services()
    builders = [name for name, svc in base.items() if "build" in svc]
    assert builders == ["source"]  # compose builds per service that has a build section
    assert SERVICES[0] == "source" == list(base)[0]  # compose v1 builds it before the rest
    images = {svc["image"] for svc in base.values()}
    assert images == {read_env_file(DOCKER / ".env")["IMAGE"]}
    build = base["source"]["build"]
    assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == (
        DOCKER / "Dockerfile").resolve()


def test_the_base_image_is_chosen_in_one_place_and_can_be_replaced():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    froms = [line for line in dockerfile.splitlines() if line.startswith("FROM ")]
    assert froms == ["FROM ${BASE_IMAGE:-python:3.11-slim}"]  # empty or unset: the default
    assert "ARG BASE_IMAGE\n" in dockerfile
    for f in ("docker-compose.yml", "docker-compose.host.yml", ".env"):
        assert "python:3" not in "\n".join(
            line for line in (DOCKER / f).read_text().splitlines()
            if not line.lstrip().startswith("#")), f"{f} restates the default base image"
    args = lambda variables: compose_services(  # noqa: E731
        [DOCKER / "docker-compose.yml"], variables)["source"]["build"]["args"]
    assert args(read_env_file(DOCKER / ".env")) == {"BASE_IMAGE": ""}
    assert args({"BASE_IMAGE": "ffp-base:bookworm"}) == {"BASE_IMAGE": "ffp-base:bookworm"}
    assert (DOCKER / "build-base.sh").exists()  # the offline base is made in this repository
    assert "/work/" not in (DOCKER / "build-base.sh").read_text()


def test_the_compose_files_need_no_version_key():
    # Compose v2 warns that `version` is obsolete; v1 (1.27+) reads the Compose Spec
    # without it.
    for f in ("docker-compose.yml", "docker-compose.host.yml"):
        assert "version" not in yaml.safe_load((DOCKER / f).read_text()), f


def compose_clients() -> list[list[str]]:
    found = []
    if shutil.which("docker") and subprocess.run(
            ["docker", "compose", "version"], capture_output=True).returncode == 0:
        found.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        found.append(["docker-compose"])
    return found


@pytest.mark.parametrize("files", [["docker-compose.yml"],
                                   ["docker-compose.yml", "docker-compose.host.yml"]])
def test_every_installed_compose_accepts_the_files(files):
    """`config` validates and merges the files without an engine (skipped where neither
    `docker compose` nor `docker-compose` is installed)."""
    clients = compose_clients()
    if not clients:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    for client in clients:
        args = [a for f in files for a in ("-f", f)]
        r = subprocess.run([*client, *args, "config", "-q"], cwd=DOCKER, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, f"{' '.join(client)}: {r.stderr}"


def dockerignore_rule(pattern: str) -> re.Pattern:
    """One .dockerignore pattern as Docker reads it: `*` and `?` stay within a path
    segment, `**` crosses them."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out.replace(".*/", "(.*/)?") + "$")


def in_build_context(path: str) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent folders
    decides; a leading `!` takes the path back in."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keep = line.startswith("!")
            rules.append((dockerignore_rule(line.lstrip("!").strip("/")), keep))
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    included = True
    for rule, keep in rules:
        if any(rule.match(c) for c in candidates):
            included = keep
    return included


def test_the_build_context_holds_what_the_image_copies_and_no_venv_run_or_cache():
    copied = [src for line in (DOCKER / "Dockerfile").read_text().splitlines()
              if line.startswith("COPY ") for src in line.split()[1:-1]]
    assert copied  # every file the Dockerfile copies is sent to the engine
    for src in copied:
        for f in ([src] if (ROOT / src).is_file() else
                  [p.relative_to(ROOT).as_posix() for p in (ROOT / src).rglob("*.py")]):
            assert in_build_context(f), f
    for junk in [".venv/bin/python", "venv/lib/python3.11/site-packages/torch/x.so",
                 "myenv/pyvenv.cfg", "runs/first/summary.json", "docker/runs/x/ckpt/a.pt",
                 ".git/HEAD", ".pytest_cache/v/cache", "pipeline/__pycache__/cli.pyc",
                 "tests/unit/test_config.py", "build/lib/pipeline/cli.py",
                 "ff_pipeline.egg-info/PKG-INFO", "docs/gpu-check.log"]:
        assert not in_build_context(junk), junk


def test_git_ignores_the_venvs_and_runs_the_readme_makes():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for path in [".venv/bin/python", "venv/bin/python", "runs/first/summary.json",
                 "docker/runs/compose/summary.json"]:
        r = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert r.returncode == 0, f"git does not ignore {path}"


def test_host_override_listens_on_loopback_only():
    cluster = load_cluster({})
    for name, svc in cluster.items():
        env = svc["environment"]
        assert svc["network_mode"] == "host", name
        assert env["FFPIPE_NET__HOST"] == "127.0.0.1"
        assert env["FFPIPE_NET__BIND_HOST"] in ("", "127.0.0.1")  # never 0.0.0.0
        assert env["FFPIPE_NET__ENDPOINTS"] == ""  # derived: 127.0.0.1:BASE_PORT+k+1
        assert env["FFPIPE_NET__STORE"].startswith("127.0.0.1:")


@pytest.mark.slow
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
    assert config["net"]["base_port"] == base and config["pipeline"]["resume"] == "false"
    for k in range(4):  # auto, and nothing to resume: every start record says so
        start = read_jsonl(out / f"stage{k}.jsonl")[0]
        assert start["kind"] == "start" and start["resumed"] is False
    wait_for(lambda: procs.alive() == [], 10, "every service process to exit")
