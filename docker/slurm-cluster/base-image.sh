#!/usr/bin/env bash
# Make sure the base image named in the Dockerfiles' FROM line exists locally.
#
# Where an image registry is reachable `docker build` pulls debian:bookworm-slim itself and this
# script does nothing. Where none is reachable (offline test machines), it builds an equivalent
# minimal Debian bookworm root file system with debootstrap and imports it under the same tag, so
# the Dockerfiles work unchanged. Debian's package mirrors must be reachable (they are needed by
# the image builds anyway).
#
# Environment: BASE_IMAGE (tag), BASE_SUITE, DEBIAN_MIRROR; BASE_INCLUDE (extra packages for
# debootstrap, e.g. python3,python3-venv); BASE_ROOTFS (an existing root filesystem to import
# instead of running debootstrap); BASE_PULL=0 (a local-only tag: do not try a registry).
# The container tests make their `hpcagent-test-base` image this way (tests/e2e/test_container_e2e.py).
set -euo pipefail

IMAGE="${BASE_IMAGE:-debian:bookworm-slim}"
SUITE="${BASE_SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "base image $IMAGE: present"
    exit 0
fi

# A registry may be reachable after all: a pull is the cheapest way to get the real image.
if [ "${BASE_PULL:-1}" != 0 ] && timeout 60 docker pull "$IMAGE" >/dev/null 2>&1; then
    echo "base image $IMAGE: pulled"
    exit 0
fi

import_rootfs() {
    tar -C "$1" -c . | docker import \
        --change 'CMD ["bash"]' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        - "$IMAGE" >/dev/null
}

if [ -n "${BASE_ROOTFS:-}" ]; then
    import_rootfs "$BASE_ROOTFS"
    echo "base image $IMAGE: imported from $BASE_ROOTFS"
    exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap
    else
        echo "no registry reachable and debootstrap is missing: install debootstrap (as root)" >&2
        exit 1
    fi
fi

root="$(mktemp -d /var/tmp/hpcagent-rootfs.XXXXXX)"
trap 'rm -rf "$root"' EXIT
echo "base image $IMAGE: no registry, building it with debootstrap ($SUITE, minbase)"
include=()
[ -n "${BASE_INCLUDE:-}" ] && include=("--include=$BASE_INCLUDE")
debootstrap --variant=minbase "${include[@]}" "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 \
    || { tail -20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"
# Slim like the official image: no apt lists or caches in the layer.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
import_rootfs "$root"
echo "base image $IMAGE: imported"
