package deploy

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// fakeBalancer answers /health and a streamed chat completion like ai-lb.
type fakeBalancer struct {
	healthStatus int    // /health status
	chatStatus   int    // chat/completions status
	done         bool   // end the stream with data: [DONE]
	key          string // when set, chat/completions requires it as a bearer key
}

func (f fakeBalancer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/health":
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(f.healthStatus)
		status := "ok"
		if f.healthStatus != http.StatusOK {
			status = "unavailable"
		}
		fmt.Fprintf(w, `{"status":%q,"nodes_found":2,"models":1,"minimum_required":1,"registry_synced":true}`, status)
	case r.Method == http.MethodPost && r.URL.Path == "/v1/chat/completions" &&
		f.key != "" && r.Header.Get("Authorization") != "Bearer "+f.key:
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, `{"error":{"message":"Incorrect API key provided.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}`)
	case r.Method == http.MethodPost && r.URL.Path == "/v1/chat/completions":
		var req struct {
			Model  string `json:"model"`
			Stream bool   `json:"stream"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Model != "sim-model" || !req.Stream ||
			r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, `{"error":{"message":"bad request"}}`, http.StatusBadRequest)
			return
		}
		if f.chatStatus != http.StatusOK {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(f.chatStatus)
			fmt.Fprint(w, `{"error":{"message":"upstream failed","type":"server_error","code":"upstream_error"}}`)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("X-AI-LB-Node", "node2")
		for _, word := range []string{"Hello", " from", " ai-lb"} {
			fmt.Fprintf(w, "data: {\"object\":\"chat.completion.chunk\",\"model\":\"sim-model\",\"choices\":[{\"index\":0,\"delta\":{\"content\":%q}}]}\n\n", word)
			w.(http.Flusher).Flush()
		}
		if f.done {
			fmt.Fprint(w, "data: [DONE]\n\n")
		}
	default:
		http.NotFound(w, r)
	}
}

// runTestConnection runs test_connection.sh with args and extra
// environment, returning its exit code and combined output.
func runTestConnection(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	_, err := exec.LookPath("bash")
	require.NoError(t, err, "bash is needed to run test_connection.sh")
	_, err = exec.LookPath("curl")
	require.NoError(t, err, "curl is needed to run test_connection.sh --host")
	script, err := filepath.Abs(filepath.Join("openclaw", "test_connection.sh"))
	require.NoError(t, err)
	info, err := os.Stat(script)
	require.NoError(t, err)
	require.NotZero(t, info.Mode()&0o111, "test_connection.sh must be executable")
	cmd := exec.Command("bash", append([]string{script}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if exitErr, ok := err.(*exec.ExitError); ok {
		return exitErr.ExitCode(), string(out)
	}
	require.NoError(t, err)
	return 0, string(out)
}

func TestConnectionScriptHost(t *testing.T) {
	if testing.Short() {
		t.Skip("runs test_connection.sh against a loopback HTTP server: skipped under -short")
	}
	envFile := filepath.Join(t.TempDir(), ".env")
	require.NoError(t, os.WriteFile(envFile, []byte("AI_LB_REDIS_PASSWORD=x\nAI_LB_API_KEY='sk-from-env-file'\n"), 0o600))
	cases := []struct {
		name     string
		fake     fakeBalancer
		env      []string
		code     int
		contains []string
	}{
		{
			name: "success",
			fake: fakeBalancer{healthStatus: 200, chatStatus: 200, done: true},
			contains: []string{
				`✅ Success! Health response: {"status":"ok","nodes_found":2`,
				"✅ Success! Streamed chat completion: 3 chunks, ended with data: [DONE] (node node2)",
			},
		},
		{
			name:     "stream without DONE",
			fake:     fakeBalancer{healthStatus: 200, chatStatus: 200},
			code:     1,
			contains: []string{"✅ Success! Health response:", "❌ Stream did not end with data: [DONE]"},
		},
		{
			name:     "unhealthy",
			fake:     fakeBalancer{healthStatus: 503, chatStatus: 200, done: true},
			code:     1,
			contains: []string{"❌ Health check failed at ", `HTTP 503: {"status":"unavailable"`},
		},
		{
			name:     "key from the environment",
			fake:     fakeBalancer{healthStatus: 200, chatStatus: 200, done: true, key: "sk-from-env"},
			env:      []string{"AI_LB_API_KEY=sk-from-env"},
			contains: []string{"✅ Success! Streamed chat completion: 3 chunks"},
		},
		{
			name:     "key from the stack's .env",
			fake:     fakeBalancer{healthStatus: 200, chatStatus: 200, done: true, key: "sk-from-env-file"},
			env:      []string{"AI_LB_ENV_FILE=" + envFile},
			contains: []string{"✅ Success! Streamed chat completion: 3 chunks"},
		},
		{
			name:     "OPENAI_API_KEY first",
			fake:     fakeBalancer{healthStatus: 200, chatStatus: 200, done: true, key: "sk-openai"},
			env:      []string{"OPENAI_API_KEY=sk-openai", "AI_LB_API_KEY=sk-other", "AI_LB_ENV_FILE=" + envFile},
			contains: []string{"✅ Success! Streamed chat completion: 3 chunks"},
		},
		{
			name:     "wrong key",
			fake:     fakeBalancer{healthStatus: 200, chatStatus: 200, done: true, key: "sk-right"},
			env:      []string{"AI_LB_API_KEY=sk-wrong"},
			code:     1,
			contains: []string{`❌ Streamed chat completion answered HTTP 401: {"error":{"message":"Incorrect API key provided."`},
		},
		{
			name:     "completion fails",
			fake:     fakeBalancer{healthStatus: 200, chatStatus: 502, done: true},
			code:     1,
			contains: []string{"❌ Streamed chat completion answered HTTP 502"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(tc.fake)
			defer srv.Close()
			// A trailing /v1 is accepted, as in OPENAI_BASE_URL.
			env := append([]string{"AI_LB_URL=" + srv.URL + "/v1", "AI_LB_WAIT=0", "OPENAI_API_KEY=", "AI_LB_API_KEY=",
				"AI_LB_ENV_FILE=" + filepath.Join(t.TempDir(), "none")}, tc.env...)
			code, out := runTestConnection(t, env, "--host")
			require.NotContains(t, out, "sk-", "the script never prints the key")
			require.Equal(t, tc.code, code, out)
			for _, s := range tc.contains {
				require.Contains(t, out, s)
			}
			if tc.code == 0 {
				require.NotContains(t, out, "❌")
			}
		})
	}

	t.Run("unreachable", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		url := srv.URL
		srv.Close()
		code, out := runTestConnection(t, []string{"AI_LB_URL=" + url, "AI_LB_WAIT=0"}, "--host")
		require.Equal(t, 1, code, out)
		require.Contains(t, out, "❌ Health check failed at "+url+"/health")
	})

	t.Run("bad argument", func(t *testing.T) {
		code, out := runTestConnection(t, nil, "--nope")
		require.NotZero(t, code)
		require.Contains(t, out, "❌ unknown argument: --nope")
	})
}

// TestConnectionScriptContainer runs the default (in-container) mode with
// a fake `docker` that runs `node -e` on this machine with the container's
// environment. It needs Node.js 18+ (fetch); without it only the fallback
// to the host check is exercised.
func TestConnectionScriptContainer(t *testing.T) {
	if testing.Short() {
		t.Skip("runs test_connection.sh against a loopback HTTP server: skipped under -short")
	}
	srv := httptest.NewServer(fakeBalancer{healthStatus: 200, chatStatus: 200, done: true})
	defer srv.Close()

	dir := t.TempDir()
	fakeDocker := `#!/usr/bin/env bash
# A stand-in for docker: openclaw_agent_platform "runs" on this machine.
set -euo pipefail
case "$1" in
inspect) [ "${FAKE_RUNNING:-true}" = true ] && echo true || { echo false; exit 1; } ;;
exec)
	shift
	envs=()
	while [ "$1" = -e ]; do envs+=("$2"); shift 2; done
	[ "$1" = openclaw_agent_platform ] || { echo "no such container: $1" >&2; exit 125; }
	shift
	exec env OPENAI_BASE_URL="$FAKE_BASE_URL" OPENAI_API_KEY=unused "${envs[@]}" "$@"
	;;
*) echo "fake docker: $*" >&2; exit 125 ;;
esac
`
	require.NoError(t, os.WriteFile(filepath.Join(dir, "docker"), []byte(fakeDocker), 0o755))
	path := "PATH=" + dir + string(os.PathListSeparator) + os.Getenv("PATH")

	// The container is not running: the script falls back to the host check.
	code, out := runTestConnection(t, []string{path, "FAKE_RUNNING=false", "AI_LB_URL=" + srv.URL, "AI_LB_WAIT=0"})
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "openclaw_agent_platform is not running; checking from the host instead")
	require.Contains(t, out, "✅ Success! Streamed chat completion: 3 chunks")

	if _, err := exec.LookPath("node"); err != nil {
		t.Log("node is not installed: the in-container check (node -e) is not exercised")
		return
	}
	code, out = runTestConnection(t, []string{path, "FAKE_BASE_URL=" + srv.URL + "/v1", "AI_LB_WAIT=0"})
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "→ checking from inside openclaw_agent_platform")
	require.Contains(t, out, `✅ Success! Health response: {"status":"ok"`)
	require.Contains(t, out, "✅ Success! Streamed chat completion: 3 chunks, ended with data: [DONE] (node node2)")

	broken := httptest.NewServer(fakeBalancer{healthStatus: 200, chatStatus: 200})
	defer broken.Close()
	code, out = runTestConnection(t, []string{path, "FAKE_BASE_URL=" + broken.URL + "/v1", "AI_LB_WAIT=0"})
	require.Equal(t, 1, code, out)
	require.Contains(t, out, "❌ Stream did not end with data: [DONE]")
}
