#!/usr/bin/env bash
# Build docker/slurm-cluster/wheelhouse/ from the checkout: the hpcagent wheel and the wheels of
# all its dependencies, so that the image installs hpcagent with `pip install --no-index`.
# Runs on the host (which can reach PyPI or a local index); the image build never needs PyPI.
#
# The image's Python is Debian bookworm's 3.11. When the host's Python differs, the dependency
# wheels are fetched for CPython 3.11 / manylinux instead of the host's interpreter.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
py="${PYTHON:-python3}"
out="$here/wheelhouse"

rm -rf "$out.new"
mkdir -p "$out.new"
host_ver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$host_ver" = "3.11" ]; then
    "$py" -m pip wheel -q --disable-pip-version-check "$repo" -w "$out.new"
else
    echo "host Python $host_ver != 3.11: fetching dependency wheels for the image's Python 3.11"
    "$py" -m pip wheel -q --disable-pip-version-check --no-deps "$repo" -w "$out.new"
    arch="$(uname -m)"
    "$py" -m pip download -q --disable-pip-version-check --only-binary=:all: \
        --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
        --platform "manylinux2014_$arch" --platform "manylinux_2_28_$arch" --platform any \
        -d "$out.new" "$out.new"/hpcagent-*.whl
fi
rm -rf "$out"
mv "$out.new" "$out"
echo "wheelhouse: $(find "$out" -name "*.whl" | wc -l) wheels in $out"
