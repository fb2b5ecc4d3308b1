#!/usr/bin/env bash
# Runs ai-lb on :8000 in front of three simulated LLM nodes that register
# themselves in Redis. Installs and starts redis-server if needed. Ctrl-C
# stops everything (the nodes deregister on the way out).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh redis-server redis-cli curl

export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
if ! redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1; then
	echo "starting redis-server on 127.0.0.1:6379"
	redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
	for _ in $(seq 50); do redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

echo "building bin/ai-lb..."
go build -o bin/ai-lb ./cmd/ai-lb

pids=()
cleanup() {
	kill -TERM "${pids[@]}" 2>/dev/null || true
	wait "${pids[@]}" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

mkdir -p tmp
for i in 1 2 3; do
	bin/ai-lb ai-lb simnode --listen "127.0.0.1:910$i" --id "node-$i" --register \
		--ttft 150ms --ttft-jitter 0.3 --itl 20ms --tokens 24 --slots 8 --queue 32 \
		--max-concurrency 8 >"tmp/node-$i.log" 2>&1 &
	pids+=($!)
done
bin/ai-lb run --config Caddyfile.example --adapter caddyfile >tmp/ai-lb.log 2>&1 &
pids+=($!)

for _ in $(seq 100); do
	curl -fsS http://127.0.0.1:8000/health 2>/dev/null | grep -q '"nodes_found":3' && break
	sleep 0.1
done
curl -fsS http://127.0.0.1:8000/health >/dev/null || { echo "ai-lb did not come up; see tmp/ai-lb.log" >&2; exit 1; }
bin/ai-lb ai-lb nodes
cat <<MSG

ai-lb is listening on http://127.0.0.1:8000 (logs in tmp/). Try:

  curl -N http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model":"sim-model","stream":true,"messages":[{"role":"user","content":"Hello"}]}'

Press Ctrl-C to stop.
MSG
wait
