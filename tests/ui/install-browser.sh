#!/bin/bash
# Install what the web UI's browser tests need: Debian's chromium and chromium-driver.
# Called by `make test` (CI runs it as root on a clean machine); does nothing when both exist.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "install-browser.sh: chromium/chromedriver missing and not root; run: sudo $0" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -q
apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends chromium chromium-driver
