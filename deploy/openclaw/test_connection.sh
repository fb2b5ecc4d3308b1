#!/usr/bin/env bash
# Checks the path OpenClaw uses: GET /health on ai-lb, then one streamed chat
# completion through it, which must end with `data: [DONE]`.
#
# By default the check runs inside the OpenClaw container (docker exec
# openclaw_agent_platform node -e '...fetch...'), against its
# OPENAI_BASE_URL, exactly as the agent platform sees the balancer. When that
# container is not running, or with --host, it runs from this machine with
# curl against $AI_LB_URL.
#
# Usage: ./test_connection.sh [--host | --container]
#
# Environment:
#   AI_LB_URL           balancer URL for --host (default http://localhost:8000;
#                       a trailing /v1 is accepted)
#   AI_LB_MODEL         model to ask (default sim-model)
#   AI_LB_WAIT          seconds to wait for /health to answer 200 (default 60)
#   OPENCLAW_CONTAINER  container for the in-container check
#                       (default openclaw_agent_platform)
#   OPENAI_API_KEY      API key sent in --host mode (default: AI_LB_API_KEY
#                       from the environment, else from AI_LB_ENV_FILE)
#   AI_LB_ENV_FILE      the stack's .env, whose AI_LB_API_KEY is the key the
#                       balancer requires (default: .env next to this script)
set -euo pipefail

CONTAINER="${OPENCLAW_CONTAINER:-openclaw_agent_platform}"
AI_LB_URL="${AI_LB_URL:-http://localhost:8000}"
MODEL="${AI_LB_MODEL:-sim-model}"
WAIT="${AI_LB_WAIT:-60}"
TMP_HEADERS=""
trap 'rm -f "$TMP_HEADERS"' EXIT

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p;}' "$0"; }

fail() {
	echo "❌ $*" >&2
	exit 1
}

mode=auto
for arg in "$@"; do
	case "$arg" in
	--host) mode=host ;;
	--container) mode=container ;;
	-h | --help)
		usage
		exit 0
		;;
	*)
		usage >&2
		fail "unknown argument: $arg"
		;;
	esac
done
[[ "$WAIT" =~ ^[0-9]+$ ]] || fail "AI_LB_WAIT must be a whole number of seconds, not '$WAIT'"

# The check run inside the container, by Node's built-in fetch.
read -r -d '' NODE_CHECK <<'JS' || true
const base = (process.env.OPENAI_BASE_URL || "http://load_balancer:8000/v1").replace(/\/+$/, "");
const root = base.replace(/\/v1$/, "");
const key = process.env.OPENAI_API_KEY || "unused";
const model = process.env.AI_LB_MODEL || "sim-model";
const waitMs = Number(process.env.AI_LB_WAIT || "60") * 1000;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const fail = (msg) => {
  console.error("❌ " + msg);
  process.exit(1);
};
const describe = (e) => String((e && e.cause) || e);

(async () => {
  const deadline = Date.now() + waitMs;
  let health, last;
  for (;;) {
    try {
      const r = await fetch(root + "/health", { signal: AbortSignal.timeout(5000) });
      const text = await r.text();
      if (r.ok) {
        health = text;
        break;
      }
      last = "HTTP " + r.status + ": " + text;
    } catch (e) {
      last = describe(e);
    }
    if (Date.now() >= deadline) fail("Health check failed at " + root + "/health: " + last);
    await sleep(1000);
  }
  console.log("✅ Success! Health response: " + health);

  let r, text;
  try {
    r = await fetch(base + "/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: "Bearer " + key },
      body: JSON.stringify({
        model,
        stream: true,
        max_tokens: 16,
        messages: [{ role: "user", content: "Say hello in five words." }],
      }),
      signal: AbortSignal.timeout(60000),
    });
    text = await r.text();
  } catch (e) {
    fail("Streamed chat completion to " + base + "/chat/completions failed: " + describe(e));
  }
  if (!r.ok) fail("Streamed chat completion answered HTTP " + r.status + ": " + text.trim());
  const data = text.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.trim());
  const lastData = data.length ? data[data.length - 1] : "(no data: lines)";
  if (lastData !== "data: [DONE]") fail("Stream did not end with data: [DONE]; last line: " + lastData);
  const chunks = data.filter((l) => l.startsWith("data: {")).length;
  if (chunks === 0) fail("Stream ended with data: [DONE] but carried no chunk");
  const node = r.headers.get("x-ai-lb-node");
  console.log(
    "✅ Success! Streamed chat completion: " + chunks + " chunks, ended with data: [DONE]" +
      (node ? " (node " + node + ")" : "")
  );
})().catch((e) => fail(describe(e)));
JS

container_running() {
	command -v docker >/dev/null 2>&1 &&
		[ "$(docker inspect -f '{{.State.Running}}' "$CONTAINER" 2>/dev/null || true)" = true ]
}

check_in_container() {
	container_running || fail "Container $CONTAINER is not running (docker compose up -d, or use --host)"
	echo "→ checking from inside $CONTAINER (its OPENAI_BASE_URL)"
	local status=0
	docker exec -e AI_LB_MODEL="$MODEL" -e AI_LB_WAIT="$WAIT" "$CONTAINER" node -e "$NODE_CHECK" || status=$?
	# The check exits 1 after printing its own ❌ line; anything else is docker's.
	case "$status" in
	0) ;;
	1) exit 1 ;;
	*) fail "docker exec $CONTAINER node failed (exit $status)" ;;
	esac
}

# host_key prints the API key for the check from the host.
host_key() {
	local env_file="${AI_LB_ENV_FILE:-$(dirname "$0")/.env}" key="${OPENAI_API_KEY:-${AI_LB_API_KEY:-}}"
	if [ -z "$key" ] && [ -f "$env_file" ]; then
		key="$(sed -n 's/^AI_LB_API_KEY=//p' "$env_file" | tail -n 1 | tr -d "\"'\r")"
	fi
	printf '%s' "${key:-unused}"
}

check_from_host() {
	local url="${AI_LB_URL%/}"
	url="${url%/v1}"
	command -v curl >/dev/null 2>&1 || fail "curl is needed for the check from the host"
	echo "→ checking from this machine at $url"

	# 1. GET /health, retried until it answers 200 or AI_LB_WAIT runs out.
	local deadline=$((SECONDS + WAIT)) out code body last
	while :; do
		if out="$(curl -sS --max-time 5 -w '\n%{http_code}' "$url/health" 2>&1)"; then
			code="${out##*$'\n'}"
			body="${out%$'\n'*}"
			[ "$code" = 200 ] && break
			last="HTTP $code: $body"
		else
			last="$(printf '%s' "${out%$'\n'*}")" # curl's error, without the status line
		fi
		((SECONDS < deadline)) || fail "Health check failed at $url/health: $last"
		sleep 1
	done
	echo "✅ Success! Health response: $body"

	# 2. One streamed chat completion; the stream must end with data: [DONE].
	local payload node last_data chunks
	payload="$(printf '{"model":"%s","stream":true,"max_tokens":16,"messages":[{"role":"user","content":"Say hello in five words."}]}' "$MODEL")"
	TMP_HEADERS="$(mktemp)"
	# The key goes to curl through a file descriptor, not its command line.
	out="$(curl -sS -N --max-time 60 -D "$TMP_HEADERS" -w '\n%{http_code}' \
		-H 'Content-Type: application/json' \
		-H @<(printf 'Authorization: Bearer %s\n' "$(host_key)") \
		--data-binary "$payload" "$url/v1/chat/completions" 2>&1)" ||
		fail "Streamed chat completion to $url/v1/chat/completions failed: $(printf '%s' "${out%$'\n'*}")"
	code="${out##*$'\n'}"
	body="$(printf '%s' "${out%$'\n'*}" | tr -d '\r')"
	[ "$code" = 200 ] || fail "Streamed chat completion answered HTTP $code: $body"
	last_data="$(printf '%s\n' "$body" | grep '^data:' | tail -n 1 || true)"
	[ "$last_data" = "data: [DONE]" ] ||
		fail "Stream did not end with data: [DONE]; last line: ${last_data:-(no data: lines)}"
	chunks="$(printf '%s\n' "$body" | grep -c '^data: {' || true)"
	[ "$chunks" -gt 0 ] || fail "Stream ended with data: [DONE] but carried no chunk"
	node="$(tr -d '\r' <"$TMP_HEADERS" | grep -i '^x-ai-lb-node:' | tail -n 1 | cut -d: -f2- | sed 's/^ *//' || true)"
	echo "✅ Success! Streamed chat completion: $chunks chunks, ended with data: [DONE]${node:+ (node $node)}"
}

case "$mode" in
host) check_from_host ;;
container) check_in_container ;;
auto)
	if container_running; then
		check_in_container
	else
		echo "→ $CONTAINER is not running; checking from the host instead"
		check_from_host
	fi
	;;
esac
