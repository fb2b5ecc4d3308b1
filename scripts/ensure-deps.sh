#!/usr/bin/env bash
# Installs the commands named as arguments from the distribution's packages
# when they are missing (Debian/Ubuntu; uses sudo when not root):
#   scripts/ensure-deps.sh redis-server node npm
set -euo pipefail
declare -A package=([redis-server]=redis-server [redis-cli]=redis-tools [node]=nodejs [npm]=npm [curl]=curl)
missing=()
for cmd in "$@"; do
	command -v "$cmd" >/dev/null || missing+=("${package[$cmd]:-$cmd}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing ${missing[*]}..." >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
