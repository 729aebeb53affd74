#!/usr/bin/env bash
# Builds a local stand-in for the python:3.11-slim base image, for machines that
# cannot pull from Docker Hub (no registry access, e.g. an offline build host).
# Elsewhere you do not need this: the Dockerfile pulls the official image.
#
# What it makes: Debian bookworm (debootstrap, minbase) plus Debian's python3,
# which in bookworm is Python 3.11, with `python3 -m venv` working; imported
# under the official name, so the Dockerfile builds unchanged.
#
# Usage (as root; needs debootstrap and podman or docker):
#   docker/make-base-image.sh            # skips if the image already exists
#   FORCE=1 docker/make-base-image.sh    # rebuild it
# Environment: CONTAINER_ENGINE (podman|docker, default: whichever works),
#   BASE_IMAGE (default docker.io/library/python:3.11-slim),
#   DEBIAN_MIRROR (default http://deb.debian.org/debian),
#   WORK_DIR (where the root file system is assembled; default: a temporary
#   directory, deleted afterwards).
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-docker.io/library/python:3.11-slim}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
WORK_DIR=${WORK_DIR:-}
ENGINE=${CONTAINER_ENGINE:-}
if [ -z "$ENGINE" ]; then
    for candidate in podman docker; do
        if command -v "$candidate" >/dev/null && "$candidate" info >/dev/null 2>&1; then ENGINE=$candidate; break; fi
    done
fi
[ -n "$ENGINE" ] || { echo "make-base-image: no working podman or docker found" >&2; exit 1; }

if [ -z "${FORCE:-}" ] && "$ENGINE" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "make-base-image: $BASE_IMAGE already exists in $ENGINE; set FORCE=1 to rebuild it"
    exit 0
fi
[ "$(id -u)" = 0 ] || { echo "make-base-image: debootstrap needs root" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "make-base-image: install debootstrap (apt-get install debootstrap)" >&2; exit 1; }

if [ -z "$WORK_DIR" ]; then
    WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/swishnet-base.XXXXXX")
    trap 'rm -rf "$WORK_DIR"' EXIT
else
    mkdir -p "$WORK_DIR"
    trap 'rm -rf "$WORK_DIR/rootfs"' EXIT  # a given WORK_DIR keeps debootstrap.log
fi
rootfs="$WORK_DIR/rootfs"
echo "make-base-image: debootstrap bookworm (minbase) + python3 into $rootfs"
# python3 + python3-venv: Python 3.11 and ensurepip, as the official image offers;
# ca-certificates and netbase because the official slim image carries them too.
debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates,netbase \
    bookworm "$rootfs" "$DEBIAN_MIRROR" >"$WORK_DIR/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK_DIR/debootstrap.log" >&2; exit 1; }

# Slim it as the Debian slim images do: no package lists, caches, docs or man pages.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/* \
       "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
chroot "$rootfs" python3 -c 'import sys, venv, ensurepip; assert sys.version_info[:2] == (3, 11), sys.version'

echo "make-base-image: importing it into $ENGINE as $BASE_IMAGE"
tar -C "$rootfs" --numeric-owner -c . | "$ENGINE" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$BASE_IMAGE"
"$ENGINE" image ls "$BASE_IMAGE"
