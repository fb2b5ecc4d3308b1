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
go tool xcaddy build "$CADDY_VERSION" --output "$out" \
	--with "$module@v0.0.0-00010101000000-000000000000=$PWD"

"$out" version
"$out" list-modules | grep -E '^(ai_lb|http\.handlers\.ai_lb|http\.reverse_proxy\.(upstreams\.ai_lb|selection_policies\.p2c))$' \
	| sort | diff - <(printf '%s\n' ai_lb http.handlers.ai_lb http.reverse_proxy.selection_policies.p2c http.reverse_proxy.upstreams.ai_lb) \
	|| { echo "build.sh: the ai-lb modules are missing from $out" >&2; exit 1; }
"$out" validate --config Caddyfile.example --adapter caddyfile
echo "built $out"
