#!/usr/bin/env bash
# Installs redis-server from the distribution's packages if it is missing
# (Debian/Ubuntu; uses sudo when not root). Tests start their own servers.
set -euo pipefail
command -v redis-server >/dev/null && exit 0
echo "installing redis-server..." >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
