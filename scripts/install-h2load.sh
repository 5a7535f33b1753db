#!/usr/bin/env bash
# Installs h2load (and nghttp) from Debian's nghttp2-client, pinned, and prints h2load's path.
# scripts/benchmarks.sh uses it as a light, independent gRPC load client (issue J, P1).
set -euo pipefail
version="1.52.0-1+deb12u3"
if command -v h2load >/dev/null 2>&1 && command -v nghttp >/dev/null 2>&1 \
  && [ "$(dpkg-query -W -f='${Version}' nghttp2-client 2>/dev/null || true)" = "$version" ]; then
  command -v h2load
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends "nghttp2-client=$version" >&2
command -v h2load
