#!/usr/bin/env bash
# Installs buf (pinned: @bufbuild/buf 1.75.0 from npm, which ships the static binary for this platform as an
# optional dependency) into DEST (default: .ci/cache/buf) and prints the path of the buf binary.
set -euo pipefail
version="1.75.0"
dest="${1:-$(cd "$(dirname "$0")/.." && pwd)/.ci/cache/buf}"
bin="$dest/node_modules/.bin/buf"
if [ -x "$bin" ] && [ "$("$bin" --version 2>/dev/null)" = "$version" ]; then
  echo "$bin"
  exit 0
fi
mkdir -p "$dest"
npm install --silent --no-audit --no-fund --no-save --prefix "$dest" "@bufbuild/buf@$version" >&2
"$bin" --version >/dev/null
echo "$bin"
