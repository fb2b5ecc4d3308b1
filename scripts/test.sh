#!/usr/bin/env bash
# Runs the whole test suite under the race detector, against real
# redis-server processes that the tests start themselves. Fails if any test
# was skipped: caddytest skips silently when its Caddy cannot start.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh redis-server node npm curl bash

test -z "$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
go vet ./...

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
go test -race -count=1 -timeout 15m -v ./... >"$log" 2>&1 || status=$?
# Package results and failures; the full log only when something failed.
grep -E '^(ok|FAIL|---|panic:)|^\s+--- (FAIL|SKIP)' "$log" | grep -v -- '--- PASS' || true
if [ "$status" -ne 0 ]; then
	echo "--- full log of the failed run:"
	cat "$log"
	exit "$status"
fi
if grep -qE '^\s*--- SKIP' "$log"; then
	echo "test.sh: some tests were skipped; every test must run" >&2
	exit 1
fi
passed="$(grep -cE '^\s*--- PASS' "$log" || true)"
echo "$passed passed, 0 failed"
