#!/usr/bin/env bash
# Builds the ai-lb Caddy binary with xcaddy: Caddy v2.11.9 plus this module
# from the working tree. CI runs this once per run; xcaddy.Dockerfile runs it
# too. Output: $OUTPUT (default bin/ai-lb).
set -euo pipefail
cd "$(dirname "$0")/.."
OUTPUT="${OUTPUT:-bin/ai-lb}"
CADDY_VERSION="${CADDY_VERSION:-v2.11.9}"
mkdir -p "$(dirname "$OUTPUT")"
case "$OUTPUT" in /*) out="$OUTPUT" ;; *) out="$PWD/$OUTPUT" ;; esac

# xcaddy is pinned in go.mod as a tool; the module path comes from go.mod.
# The zero pseudo-version keeps `go get` from asking the module proxy for a
# module that is only here, in the working tree.
module="$(go list -m)"
# The simulated node (`ai-lb simnode`, for the demo, the compose stack and the
# tests) is a package of its own beside the module's, added here with a
# second --with; `xcaddy build --with github.com/ai-lb/ai-lb` alone leaves
# it out.
# Go looks the package path up as a module of its own before it finds it in
# the replaced module; a proxy that answers that lookup with anything but
# 404/410 (some mirrors answer 403) would stop the build, hence every proxy
# in the list falls through on any error ("|"), down to "off".
GOPROXY="$(go env GOPROXY | tr ',' '|')|off" \
go tool xcaddy build "$CADDY_VERSION" --output "$out" \
	--with "$module@v0.0.0-00010101000000-000000000000=$PWD" \
	--with "$module/simnode/simnodecmd@v0.0.0-00010101000000-000000000000"

"$out" version
"$out" list-modules | grep -E '^(ai_lb|http\.handlers\.ai_lb|http\.reverse_proxy\.(upstreams\.ai_lb|selection_policies\.p2c))$' \
	| sort | diff - <(printf '%s\n' ai_lb http.handlers.ai_lb http.reverse_proxy.selection_policies.p2c http.reverse_proxy.upstreams.ai_lb) \
	|| { echo "build.sh: the ai-lb modules are missing from $out" >&2; exit 1; }
"$out" validate --config Caddyfile.example --adapter caddyfile
echo "built $out"
