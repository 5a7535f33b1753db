#!/usr/bin/env bash
# Installs PgBouncer from Debian (pinned: 1.18.0-1+deb12u1, Debian 12's) and prints the binary's path.
# The package's service is not started (policy-rc.d refuses it during the install): the tests run
# their own pgbouncer on loopback with their own configuration.
set -euo pipefail
version="1.18.0-1+deb12u1"
bin=/usr/sbin/pgbouncer
if [ -x "$bin" ] && dpkg-query -W -f='${Version}' pgbouncer 2>/dev/null | grep -qx "$version"; then
  echo "$bin"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-pgbouncer: needs root for apt-get (or install pgbouncer=$version yourself)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
created_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod 0755 /usr/sbin/policy-rc.d
  created_policy=1
fi
cleanup() { if [ -n "$created_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT
apt-get install -y -qq "pgbouncer=$version" >/dev/null 2>&1 || {
  apt-get update -qq >&2
  apt-get install -y -qq "pgbouncer=$version" >&2
}
echo "$bin"
