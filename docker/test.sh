#!/usr/bin/env bash
# End-to-end test of the container image: build it, inspect it, run it, wait
# until its HEALTHCHECK passes, classify a generated WAV over REST, stream the
# same audio over the WebSocket, check the JSON replies, stop it, clean up.
#
# Usage: docker/test.sh            (from any directory; bash 3.2 or newer)
# Exit status: 0 passed, 1 failed, 77 skipped (no working container engine).
#
# Environment (all optional):
#   CONTAINER_ENGINE  docker | podman   (default: the first whose `info` works)
#   IMAGE             tag to build and test (default: localhost/swishnet-live:test)
#   SKIP_BUILD=1      test IMAGE as it is (then it is kept)
#   KEEP_IMAGE=1      keep what the script built: the image, and the stand-in base image if
#                     it made one (the container is always removed)
#   PORT              host port for the service (default: 18080)
#   PIP_CA            CA bundle pip needs behind a TLS-inspecting proxy; passed as a
#                     build secret, never stored in the image (default: $PIP_CERT or
#                     $SSL_CERT_FILE when they name a file)
#   BUILD_ARGS, RUN_ARGS   extra arguments for `build` / `run` (word-split)
#   PODMAN_BUILD_ARGS, PODMAN_RUN_ARGS   replace the podman defaults below
#   HEALTH_TIMEOUT_S  how long to wait for healthy (default: 120)
#   MAX_IMAGE_MB      fail above this size (default: 500; PyAV's FFmpeg libraries take about 100 MB)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/swishnet-live:test}
PORT=${PORT:-18080}
HEALTH_TIMEOUT_S=${HEALTH_TIMEOUT_S:-120}
MAX_IMAGE_MB=${MAX_IMAGE_MB:-500}
BASE_IMAGE=docker.io/library/python:3.11-slim
NAME=swishnet-test-$$

say() { printf '\n==> %s\n' "$*"; }
fail() { printf '\nFAIL: %s\n' "$*" >&2; exit 1; }

# ---- the container engine
ENGINE=${CONTAINER_ENGINE:-}
if [ -z "$ENGINE" ]; then
    for candidate in docker podman; do
        # `info` rather than `command -v`: a docker client without a daemon is common.
        if command -v "$candidate" >/dev/null && "$candidate" info >/dev/null 2>&1; then ENGINE=$candidate; break; fi
    done
fi
if [ -z "$ENGINE" ]; then
    echo "SKIP: no container engine: neither 'docker info' nor 'podman info' works here." \
         "Install Docker (with its daemon running) or podman, or set CONTAINER_ENGINE." >&2
    exit 77
fi
engine_build=()
engine_run=()
health=()
if [ "$ENGINE" = podman ]; then
    # --format docker: the OCI format has no HEALTHCHECK and podman would drop it.
    # --isolation chroot: builds where nested namespaces are not allowed (containers, CI sandboxes).
    # --layers=false: no intermediate images are left behind (the builder stage's), only the image.
    read -r -a engine_build <<<"${PODMAN_BUILD_ARGS---format docker --isolation chroot --layers=false}"
    # Podman's default nofile limit (1048576) can exceed what an unprivileged host allows;
    # runc where installed, because crun refuses cgroup v1/hybrid hosts.
    default_run="--ulimit nofile=4096:4096 --ulimit nproc=4096:4096"
    if command -v runc >/dev/null; then default_run="--runtime runc $default_run"; fi
    read -r -a engine_run <<<"${PODMAN_RUN_ARGS-$default_run}"
    # Podman runs health checks from systemd timers, absent in many containers and CI
    # runners; this script runs the image's HEALTHCHECK itself with `podman healthcheck run`.
    health=(--health-interval disable)
else
    health=(--health-interval 2s)  # the image says 15 s; no need to wait that long here
fi
read -r -a extra_build <<<"${BUILD_ARGS:-}"
read -r -a extra_run <<<"${RUN_ARGS:-}"
say "container engine: $ENGINE ($("$ENGINE" --version))"

made_base=""  # set when this run built the stand-in base image
cleanup() {
    if "$ENGINE" container inspect "$NAME" >/dev/null 2>&1; then
        "$ENGINE" rm -f "$NAME" >/dev/null 2>&1 || true
    fi
    if [ -z "${KEEP_IMAGE:-}" ] && [ -z "${SKIP_BUILD:-}" ]; then
        echo "removing what this run built (KEEP_IMAGE=1 keeps it): $IMAGE${made_base:+ and $BASE_IMAGE}"
        "$ENGINE" rmi "$IMAGE" >/dev/null 2>&1 || true
        if [ -n "$made_base" ]; then "$ENGINE" rmi "$BASE_IMAGE" >/dev/null 2>&1 || true; fi
    fi
}
trap cleanup EXIT

# ---- build
if [ -z "${SKIP_BUILD:-}" ]; then
    if ! "$ENGINE" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        say "pulling the base image $BASE_IMAGE"
        if ! "$ENGINE" pull "$BASE_IMAGE"; then
            say "no registry access: building a stand-in $BASE_IMAGE with docker/make-base-image.sh"
            CONTAINER_ENGINE=$ENGINE docker/make-base-image.sh
            made_base=1
        fi
    fi
    secret=()
    PIP_CA=${PIP_CA:-${PIP_CERT:-${SSL_CERT_FILE:-}}}
    if [ -n "$PIP_CA" ] && [ -f "$PIP_CA" ]; then
        echo "pip will trust the CA bundle $PIP_CA (build secret pip_ca)"
        secret=(--secret "id=pip_ca,src=$PIP_CA")
    fi
    say "building $IMAGE from docker/Dockerfile"
    # ${a[@]+"${a[@]}"}: an empty array is an unbound variable to `set -u` in bash 3.2 (macOS).
    "$ENGINE" build ${engine_build[@]+"${engine_build[@]}"} ${secret[@]+"${secret[@]}"} \
        ${extra_build[@]+"${extra_build[@]}"} -f docker/Dockerfile -t "$IMAGE" .
fi

# ---- what is inside
size_mb=$(( $("$ENGINE" image inspect -f '{{.Size}}' "$IMAGE") / 1000000 ))
say "image size: $size_mb MB (limit $MAX_IMAGE_MB MB)"
[ "$size_mb" -le "$MAX_IMAGE_MB" ] || fail "image is $size_mb MB, over $MAX_IMAGE_MB MB"

say "checking the image contents"
run_once=("$ENGINE" run --rm -i ${engine_run[@]+"${engine_run[@]}"} "${health[@]}")
"${run_once[@]}" --entrypoint swishnet "$IMAGE" version
if "${run_once[@]}" --entrypoint python3 "$IMAGE" - <<'EOF'
import ctypes.util, importlib.resources, importlib.util, os, shutil, sys
problems = []
def check(ok, message):
    print(("ok: " if ok else "PROBLEM: ") + message)
    if not ok:
        problems.append(message)
check(os.getuid() != 0, f"runs as uid {os.getuid()}, not root")
check(not os.access(sys.prefix, os.W_OK), f"{sys.prefix} is read-only for the service user")
compilers = [tool for tool in ("gcc", "cc", "g++", "clang", "make") if shutil.which(tool)]
check(not compilers, f"no compiler or make (found: {compilers or 'none'})")
heavy = [m for m in ("torch", "librosa", "onnx", "pytest", "sounddevice") if importlib.util.find_spec(m)]
check(not heavy, f"no training or dev packages (found: {heavy or 'none'})")
import soundfile
check(ctypes.util.find_library("sndfile") is None,
      f"libsndfile {soundfile.__libsndfile_version__} comes from the soundfile wheel, not the system")
bundled = sorted(p.name for p in importlib.resources.files("models").iterdir()
                 if p.name.endswith((".onnx", ".json")))
check({"swishnet-slim.onnx", "swishnet-slim.json"} <= set(bundled), f"bundled model files: {bundled}")
sys.exit(1 if problems else 0)
EOF
then :; else fail "the image is not as it should be (PROBLEM lines above)"; fi

# ---- run
say "starting $NAME on 127.0.0.1:$PORT"
"$ENGINE" run -d --name "$NAME" ${engine_run[@]+"${engine_run[@]}"} "${health[@]}" ${extra_run[@]+"${extra_run[@]}"} \
    -e SWISHNET_PORT="$PORT" -p "127.0.0.1:$PORT:$PORT" "$IMAGE" >/dev/null

say "waiting up to $HEALTH_TIMEOUT_S s for the HEALTHCHECK to pass"
started=$SECONDS
deadline=$((SECONDS + HEALTH_TIMEOUT_S))
while :; do
    state=$("$ENGINE" container inspect -f '{{.State.Status}}' "$NAME")
    if [ "$state" != running ]; then
        "$ENGINE" logs "$NAME" 2>&1 | tail -40
        fail "the container stopped ($state) before becoming healthy; its log is above"
    fi
    if [ "$ENGINE" = podman ]; then
        "$ENGINE" healthcheck run "$NAME" >/dev/null 2>&1 && break
    elif [ "$("$ENGINE" container inspect -f '{{.State.Health.Status}}' "$NAME")" = healthy ]; then
        break
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        "$ENGINE" logs "$NAME" 2>&1 | tail -40
        fail "not healthy after $HEALTH_TIMEOUT_S s; the log is above"
    fi
    sleep 2
done
echo "healthy after $((SECONDS - started)) s"

say "the published port is on loopback only"
published=$("$ENGINE" port "$NAME")
echo "$published"
if printf '%s\n' "$published" | grep -v -q "127.0.0.1:$PORT\$"; then
    fail "the port is published beyond 127.0.0.1: $published"
fi

if command -v python3 >/dev/null; then
    say "GET /healthz from the host, through the published port"
    python3 -c "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())" \
        "http://127.0.0.1:$PORT/healthz"
fi

# The client runs with the image's Python (numpy, websockets), so the host needs nothing more.
say "REST and WebSocket checks (docker/smoke_client.py)"
"$ENGINE" exec -i "$NAME" python3 - "http://127.0.0.1:$PORT" <docker/smoke_client.py \
    || { "$ENGINE" logs "$NAME" 2>&1 | tail -40; fail "smoke checks failed; the server log is above"; }

say "stopping: SIGTERM must end the server cleanly, within its 8 s deadline (stop waits 20 s)"
"$ENGINE" stop -t 20 "$NAME" >/dev/null
code=$("$ENGINE" container inspect -f '{{.State.ExitCode}}' "$NAME")
"$ENGINE" logs "$NAME" 2>&1 | tail -5
[ "$code" = 0 ] || fail "the server exited with status $code after SIGTERM"
if "$ENGINE" logs "$NAME" 2>&1 | grep -q Traceback; then fail "the server log holds a traceback"; fi
if "$ENGINE" logs "$NAME" 2>&1 | grep -q "timeout graceful shutdown exceeded"; then
    fail "shutdown ran into its deadline (SWISHNET_SHUTDOWN_TIMEOUT_S)"
fi

say "PASS: $IMAGE ($size_mb MB) builds, is healthy, and answers REST and WebSocket correctly"
