#!/usr/bin/env bash
# A local base image for docker/Dockerfile, for a Docker engine that cannot pull images
# (no registry access, an air-gapped host): Debian (minbase) with python3, a venv at
# /opt/venv first on PATH and CPU torch in it, made with debootstrap and `docker import`.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: sudo bash docker/build-base.sh

Builds the local image TAG (default ffp-base:bookworm): Debian SUITE (minbase) with
python3 (bookworm: 3.11), a venv at /opt/venv on PATH and torch installed in it. The image
is made from a debootstrap tree, so no registry image is pulled. Then build ff-pipeline on it:

  docker build --network host --build-arg BASE_IMAGE=ffp-base:bookworm \
      -t ff-pipeline:latest -f docker/Dockerfile .
  cd docker && BASE_IMAGE=ffp-base:bookworm docker compose build    # or docker-compose build

Needs root (debootstrap, chroot), a running Docker engine, debootstrap
(apt-get install debootstrap) and a Debian mirror. Takes a few minutes the first time;
the tree is kept in WORK, so a second run only re-imports it.

Environment:
  TAG              name of the image to build (default ffp-base:bookworm)
  SUITE            Debian release (default bookworm); its python3 must be 3.11 or newer
  MIRROR           Debian mirror (default http://deb.debian.org/debian)
  TORCH_WHEEL      a torch wheel file to install (for the image's python, e.g. cp311 on
                   bookworm) instead of downloading one
  TORCH_INDEX_URL  where pip finds torch otherwise (default the CPU wheels,
                   https://download.pytorch.org/whl/cpu)
  WORK             working folder (default ${TMPDIR:-/tmp}/ffp-base)
USAGE
}

for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    *) echo "build-base.sh: error: no arguments expected, got '$arg' (settings are environment variables; see --help)" >&2; exit 2 ;;
  esac
done

die() { echo "build-base.sh: error: $*" >&2; exit 2; }
TAG=${TAG:-ffp-base:bookworm}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
TORCH_WHEEL=${TORCH_WHEEL:-}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
WORK=${WORK:-${TMPDIR:-/tmp}/ffp-base}
rootfs=$WORK/rootfs-$SUITE

[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap and chroot need it): sudo bash $0"
command -v docker >/dev/null || die "no docker client on PATH"
docker info >/dev/null 2>&1 || die "no Docker engine answers \`docker info\`; start it first"
[ -z "$TORCH_WHEEL" ] || [ -f "$TORCH_WHEEL" ] || die "TORCH_WHEEL=$TORCH_WHEEL is not a file"

if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "build-base.sh: $TAG exists already; remove it first (docker image rm $TAG) to rebuild"
else
  command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap"
  mkdir -p "$WORK"
  if [ ! -x "$rootfs/opt/venv/bin/python" ]; then
    if [ ! -x "$rootfs/usr/bin/python3" ]; then
      echo "build-base.sh: debootstrap $SUITE into $rootfs (log: $WORK/debootstrap.log)"
      debootstrap --variant=minbase \
        --include=python3,python3-venv,ca-certificates,procps "$SUITE" "$rootfs" "$MIRROR" \
        >"$WORK/debootstrap.log" 2>&1 || die "debootstrap failed; see $WORK/debootstrap.log"
    fi
    # The host's name servers and trusted certificates (a proxy's CA, if the host trusts
    # one), so pip inside the tree reaches the index the way the host does.
    cp -L /etc/resolv.conf "$rootfs/etc/resolv.conf"
    [ ! -f /etc/ssl/certs/ca-certificates.crt ] \
      || cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    if [ -n "$TORCH_WHEEL" ]; then
      cp "$TORCH_WHEEL" "$rootfs/tmp/"
      install="/tmp/$(basename "$TORCH_WHEEL")"
    else
      install="--index-url $TORCH_INDEX_URL torch"
    fi
    echo "build-base.sh: installing torch into /opt/venv (log: $WORK/chroot.log)"
    chroot "$rootfs" /bin/sh -c "python3 -m venv /opt/venv && \
      PIP_CERT=/etc/ssl/certs/ca-certificates.crt /opt/venv/bin/pip install -q $install && \
      rm -f /tmp/*.whl && rm -rf /root/.cache" >"$WORK/chroot.log" 2>&1 \
      || { rm -rf "$rootfs/opt/venv"; die "installing torch failed; see $WORK/chroot.log"; }
  fi
  echo "build-base.sh: importing $rootfs as $TAG"
  tar -C "$rootfs" -c . | docker import \
    -c 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' - "$TAG" >/dev/null
fi
docker run --rm --network none "$TAG" python -W ignore -c \
  "import sys, torch; print('$TAG: python', sys.version.split()[0], 'torch', torch.__version__)"
