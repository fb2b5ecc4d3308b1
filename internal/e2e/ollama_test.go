package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ai-lb/ai-lb/simnode"
)

// The Ollama cluster of these tests: three simulated Ollama hosts with
// different model sets. node-a is registered with "llama3.2", without its
// tag, as an operator may name it; it serves and lists it as
// "llama3.2:latest".
var (
	ollamaModelSets = map[string][]string{
		"node-a": {"qwen3:8b", "llama3.2"},
		"node-b": {"qwen3:8b", "gemma3:4b"},
		"node-c": {"nomic-embed-text:latest"},
	}
	// ollamaUnion is what GET /api/tags lists for them.
	ollamaUnion = []string{"gemma3:4b", "llama3.2:latest", "nomic-embed-text:latest", "qwen3:8b"}
)

// startOllamaCluster starts the Ollama cluster behind Caddyfile.example
// (ai_lb → hedge → reverse_proxy) and returns ai-lb's base URL.
func startOllamaCluster(t *testing.T) (*cluster, string) {
	t.Helper()
	c := newCluster(t)
	for _, id := range []string{"node-a", "node-b", "node-c"} {
		c.addNode(id, simnode.Config{Models: ollamaModelSets[id]})
	}
	port := freePort(t)
	startCaddy(t, exampleCaddyfile(t, port))
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	waitNodes(t, base, len(c.nodes))
	return c, base
}

var (
	npmOnce sync.Once
	npmErr  error
)

// runOllamaCompat installs compat/ollama's pinned npm packages (once per
// test binary) and runs one of its scripts with env, returning its JSON
// report.
func runOllamaCompat(t *testing.T, script string, env ...string) map[string]any {
	t.Helper()
	if testing.Short() {
		t.Skip("installs the npm client and runs node: skipped under -short")
	}
	for _, tool := range []string{"node", "npm"} {
		_, err := exec.LookPath(tool)
		require.NoError(t, err, "%s is needed (apt-get install nodejs npm)", tool)
	}
	npmOnce.Do(func() {
		install := exec.Command("npm", "ci", "--no-audit", "--no-fund", "--loglevel=error")
		install.Dir = repoPath("compat/ollama")
		if out, err := install.CombinedOutput(); err != nil {
			npmErr = fmt.Errorf("npm ci: %v\n%s", err, out)
		}
	})
	require.NoError(t, npmErr)
	run := exec.Command("node", script)
	run.Dir = repoPath("compat/ollama")
	run.Env = append(os.Environ(), env...)
	out, err := run.Output()
	var stderr string
	if ee, ok := err.(*exec.ExitError); ok {
		stderr = string(ee.Stderr)
	}
	require.NoError(t, err, "%s: %s%s", script, out, stderr)
	var report map[string]any
	require.NoError(t, json.Unmarshal(out, &report), "%s", out)
	require.Equal(t, true, report["ok"], "%s", out)
	return report
}

// servesModel reports whether the cluster node id serves model, by
// Ollama's names.
func servesModel(id, model string) bool {
	for _, m := range ollamaModelSets[id] {
		if m == model || m+":latest" == model {
			return true
		}
	}
	return false
}

// TestOllamaWithNPMClient: the official ollama npm client against ai-lb in
// front of Ollama hosts with different model sets: list is the union on
// every call, show reaches a node serving the model, a streamed chat with
// tools and its tool-result turn come whole from such a node (with the
// model named without its tag), embed works, and an unknown model and a
// pull get Ollama's errors.
func TestOllamaWithNPMClient(t *testing.T) {
	c, base := startOllamaCluster(t)
	report := runOllamaCompat(t, "ollama_client.mjs", "AI_LB_URL="+base,
		"AI_LB_MODELS="+strings.Join(ollamaUnion, ","), "AI_LB_EMBED_MODEL=nomic-embed-text")
	chats := report["chats"].(map[string]any)
	require.Len(t, chats, 3, "the chat models (not the embedding one): %v", chats)
	for model, nodes := range chats {
		for _, n := range nodes.([]any) {
			require.True(t, servesModel(n.(string), model), "%s answered a chat with %s, which it does not serve", n, model)
		}
	}
	var chatsServed int
	for _, n := range c.nodes {
		for _, r := range n.Requests() {
			if r.Path == "/api/chat" && r.Status == http.StatusOK {
				chatsServed++
			}
		}
	}
	require.Equal(t, 6, chatsServed, "two turns per chat model, each served once")
}

// TestOpenClawOllamaProviderReplay replays OpenClaw's Ollama provider in
// its order through ai-lb, with the base URL as configured
// (http://load_balancer:8000/v1 works as http://load_balancer:8000):
// tags, show per model, streamed chats with tools, options, think and
// keep_alive, a tool-result turn, and memory's embed.
func TestOpenClawOllamaProviderReplay(t *testing.T) {
	c, base := startOllamaCluster(t)
	report := runOllamaCompat(t, "openclaw_replay.mjs", "AI_LB_URL="+base+"/v1", "AI_LB_EMBED_MODEL=nomic-embed-text")

	want := []any{"GET /api/tags"}
	for _, m := range ollamaUnion {
		want = append(want, "POST /api/show "+m)
	}
	chatModels := []string{"gemma3:4b", "llama3.2:latest", "qwen3:8b"}
	for _, m := range chatModels {
		want = append(want, "POST /api/chat "+m, "POST /api/chat "+m)
	}
	want = append(want, "POST /api/embed nomic-embed-text")
	require.Equal(t, want, report["calls"])

	catalog := report["catalog"].(map[string]any)
	require.Len(t, catalog, len(chatModels), "the embedding-only model is dropped: %v", catalog)
	for _, m := range chatModels {
		entry := catalog[m].(map[string]any)
		require.EqualValues(t, 32768, entry["contextTokens"], m)
		require.Equal(t, true, entry["reasoning"], m)
		chat := report["chats"].(map[string]any)[m].(map[string]any)
		require.Equal(t, "list_dir", chat["tool"], "tools are sent sorted: the node calls the first")
		require.Equal(t, "stop", chat["doneReason"])
		node := strings.SplitN(chat["text"].(string), "-tok", 2)[0]
		require.True(t, servesModel(node, m), "%s answered %s", node, m)
	}

	// What the nodes got: OpenClaw's bodies, unchanged.
	var bodies int
	for _, n := range c.nodes {
		for _, r := range n.Requests() {
			if r.Path == "/api/chat" {
				require.True(t, r.Stream)
				require.Equal(t, http.StatusOK, r.Status)
				bodies++
			}
		}
	}
	require.Equal(t, 6, bodies)
}

// TestOllamaTagsUnion: /api/tags (and /api/ps) is the same union of the
// live nodes' models on every call, from the registry, however many
// nodes there are; /api/version one answer; and it follows the registry.
func TestOllamaTagsUnion(t *testing.T) {
	c, base := startOllamaCluster(t)
	var first string
	for i := range 20 {
		for _, path := range []string{"/api/tags", "/api/ps"} {
			body := rawJSON(t, base+path)
			var list struct{ Models []struct{ Name string } }
			require.NoError(t, json.Unmarshal([]byte(body), &list))
			var names []string
			for _, m := range list.Models {
				names = append(names, m.Name)
			}
			require.Equal(t, ollamaUnion, names, "%s, call %d", path, i)
			if path == "/api/tags" {
				if first == "" {
					first = body
				}
				require.Equal(t, first, body, "the same answer on every call")
			}
		}
	}
	require.JSONEq(t, `{"version":"0.12.0"}`, rawJSON(t, base+"/api/version"))
	for _, n := range c.nodes {
		require.Zero(t, n.Stats().Received, "%s was asked; the registry answers", n.ID)
	}

	// A node leaves: its only model leaves the list.
	_, err := c.client.Deregister(context.Background(), "node-c")
	require.NoError(t, err)
	eventually(t, 5*time.Second, func() error {
		if body := rawJSON(t, base+"/api/tags"); strings.Contains(body, "nomic-embed-text") {
			return fmt.Errorf("still listed: %s", body)
		}
		return nil
	})
}

// rawJSON returns a 200 answer's JSON document as it was sent.
func rawJSON(t *testing.T, url string) string {
	t.Helper()
	var raw json.RawMessage
	getJSON(t, url, &raw)
	return string(raw)
}

// ollamaChat posts a streamed /api/chat (or, with stream false, a whole one).
func ollamaChat(ctx context.Context, base, id, model string, stream bool) (answer, error) {
	body, _ := json.Marshal(map[string]any{"model": model, "stream": stream,
		"messages": []map[string]string{{"role": "user", "content": "hi"}}})
	return postTo(ctx, base+"/api/chat", id, string(body))
}

// checkOllamaStream checks that an NDJSON body is exactly one node's whole
// answer of tokens tokens: one record per token, then the final record.
func checkOllamaStream(body, node string, tokens int) error {
	var records []map[string]any
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			return fmt.Errorf("line %q: %v", sc.Text(), err)
		}
		records = append(records, rec)
	}
	if len(records) != tokens+1 {
		return fmt.Errorf("%d records, want %d: %s", len(records), tokens+1, body)
	}
	for i, rec := range records {
		msg, _ := rec["message"].(map[string]any)
		want := ""
		if i < tokens {
			want = simnode.TokenText(node, i)
		}
		if msg == nil || msg["content"] != want || rec["done"] != (i == tokens) {
			return fmt.Errorf("record %d is %v, want content %q", i, rec, want)
		}
	}
	return nil
}

// TestOllamaLatestMatching: a name without a tag reaches the nodes of its
// ":latest" and the other way round, and names in errors are full.
func TestOllamaLatestMatching(t *testing.T) {
	c, base := startOllamaCluster(t)
	for _, model := range []string{"llama3.2", "llama3.2:latest"} {
		a, err := ollamaChat(context.Background(), base, "latest-"+model, model, true)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, a.status, a.body)
		require.Equal(t, "node-a", a.simNode(), "only node-a serves %s", model)
		require.NoError(t, checkOllamaStream(a.body, "node-a", 8))
	}
	// "gemma3" is gemma3:latest, which no node serves (node-b has gemma3:4b).
	a, err := ollamaChat(context.Background(), base, "gemma3", "gemma3", true)
	require.NoError(t, err)
	require.Equal(t, http.StatusNotFound, a.status)
	require.JSONEq(t, `{"error":"model \"gemma3:latest\" not found"}`, a.body)
	require.EqualValues(t, 2, c.received(), "only the two chats reached nodes")

	// The OpenAI listing keeps the names as registered.
	require.Contains(t, rawJSON(t, base+"/v1/models"), `"id":"llama3.2"`)
}

// TestOllamaErrorsAndRefusals: errors on /api/* are Ollama's
// {"error":"..."} with the statuses of the OpenAI paths, and model
// management is refused without reaching a node.
func TestOllamaErrorsAndRefusals(t *testing.T) {
	c, base := startOllamaCluster(t)
	send := func(method, path, body string) (int, string, http.Header) {
		req, err := http.NewRequest(method, base+path, strings.NewReader(body))
		require.NoError(t, err)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		require.Equal(t, "application/json", resp.Header.Get("Content-Type"), "%s %s: %s", method, path, b)
		return resp.StatusCode, string(b), resp.Header
	}
	for _, tc := range []struct {
		method, path, body string
		status             int
		error              string // the whole message, or with a trailing "…" its start
	}{
		{"POST", "/api/chat", `{"model":"mistral","messages":[]}`, 404, `model "mistral:latest" not found`},
		{"POST", "/api/show", `{"model":"qwen3:4b"}`, 404, `model "qwen3:4b" not found`},
		{"POST", "/api/embed", `{"model":"all-minilm","input":"x"}`, 404, `model "all-minilm:latest" not found`},
		{"POST", "/api/chat", `{"model":"qwen3:8b","messages":`, 400, "the request body is not valid JSON"},
		{"POST", "/api/generate", `{"prompt":"hi"}`, 400, "model is required"},
		{"POST", "/api/pull", `{"model":"mistral"}`, 403, "ai-lb balances requests over several Ollama servers and does not pull models…"},
		{"POST", "/api/push", `{"model":"qwen3:8b"}`, 403, "ai-lb balances requests over several Ollama servers and does not push models…"},
		{"POST", "/api/create", `{"model":"mine","from":"qwen3:8b"}`, 403, "ai-lb balances requests over several Ollama servers and does not create models…"},
		{"POST", "/api/copy", `{"source":"qwen3:8b","destination":"q"}`, 403, "ai-lb balances requests over several Ollama servers and does not copy models…"},
		{"DELETE", "/api/delete", `{"model":"qwen3:8b"}`, 403, "ai-lb balances requests over several Ollama servers and does not delete models…"},
	} {
		status, body, _ := send(tc.method, tc.path, tc.body)
		require.Equal(t, tc.status, status, "%s %s: %s", tc.method, tc.path, body)
		var e map[string]string
		require.NoError(t, json.Unmarshal([]byte(body), &e), body)
		require.Len(t, e, 1, body)
		if prefix, ok := strings.CutSuffix(tc.error, "…"); ok {
			require.True(t, strings.HasPrefix(e["error"], prefix), "%s %s: %s", tc.method, tc.path, body)
		} else {
			require.Equal(t, tc.error, e["error"], "%s %s", tc.method, tc.path)
		}
	}
	require.Zero(t, c.received(), "no request reached a node")

	// No node left: 503 with Retry-After, in Ollama's shape.
	for _, n := range c.nodes {
		_, err := c.client.Deregister(context.Background(), n.ID)
		require.NoError(t, err)
	}
	eventually(t, 5*time.Second, func() error {
		status, body, hdr := send("POST", "/api/chat", `{"model":"qwen3:8b","messages":[]}`)
		if status != http.StatusServiceUnavailable || body != `{"error":"no inference node is available"}` || hdr.Get("Retry-After") != "2" {
			return fmt.Errorf("%d %s %v", status, body, hdr)
		}
		return nil
	})
}

// TestOllamaChatHedgedLoserCancelled: a streamed /api/chat whose first
// node is slow to its first token is hedged on another; the first record
// with content wins and the slow attempt is cancelled before the winner's
// stream ends. Nothing of the loser reaches the client.
func TestOllamaChatHedgedLoserCancelled(t *testing.T) {
	c := newCluster(t)
	const tokens = 16
	models := []string{"qwen3:8b"}
	fast := simnode.Config{Models: models, TTFT: 5 * time.Millisecond, InterTokenLatency: 15 * time.Millisecond, Tokens: tokens}
	c.addNode("fast-a", fast)
	c.addNode("fast-b", fast)
	slow := c.addNode("slow", simnode.Config{Models: models, TTFT: 5 * time.Second, Tokens: tokens})
	base := c.startHedged("delay 150ms\n\t\tbudget 100%", "")

	answers := make(map[string]answer)
	for i := 0; i < 200 && len(slow.Requests()) < 3; i++ {
		id := fmt.Sprintf("ollama-%d", i)
		a, err := ollamaChat(context.Background(), base, id, "qwen3:8b", true)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, a.status, a.body)
		require.Equal(t, "application/x-ndjson", a.header.Get("Content-Type"))
		require.NotEqual(t, "slow", a.simNode())
		require.NoError(t, checkOllamaStream(a.body, a.simNode(), tokens), "request %s", id)
		answers[id] = a
	}
	slowRecs, winners := c.settled(t, slow)
	require.GreaterOrEqual(t, len(slowRecs), 3, "too few requests went to the slow node first")
	for _, r := range slowRecs {
		a := answers[r.RequestID]
		require.True(t, r.Aborted, "the slow attempt of %s was not cancelled", r.RequestID)
		require.Equal(t, "/api/chat", r.Path)
		require.Equal(t, "true", a.hedged())
		require.Equal(t, "2", a.attempts())
		w, ok := winners[r.RequestID]
		require.True(t, ok)
		require.True(t, r.End.Before(w.End), "request %s: the loser ended after the winner's stream", r.RequestID)
	}
	require.Zero(t, slow.Stats().Completed)
}

// TestOllamaErrorRecordFailsOver: a node whose streams begin with an error
// record (and whose whole answers fail with a 5xx) is failed over: every
// client gets a whole answer from the healthy node.
func TestOllamaErrorRecordFailsOver(t *testing.T) {
	c := newCluster(t)
	models := []string{"qwen3:8b"}
	broken := c.addNode("broken", simnode.Config{Models: models, FailRate: 1})
	c.addNode("good", simnode.Config{Models: models})
	port := freePort(t)
	startCaddy(t, exampleCaddyfile(t, port))
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	waitNodes(t, base, 2)

	for i := range 20 {
		stream := i%2 == 0
		a, err := ollamaChat(context.Background(), base, fmt.Sprintf("fo-%d", i), "qwen3:8b", stream)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, a.status, a.body)
		require.Equal(t, "good", a.simNode())
		require.NotContains(t, a.body, "error")
		if stream {
			require.NoError(t, checkOllamaStream(a.body, "good", 8))
		} else {
			require.Contains(t, a.body, simnode.Text("good", 8))
		}
	}
	var streamed int
	for _, r := range broken.Requests() {
		if r.Stream {
			streamed++
		}
	}
	require.Positive(t, streamed, "no streamed request tried the broken node first")
	t.Logf("%d requests (%d streamed) went to the broken node first", len(broken.Requests()), streamed)
}

// TestOllamaRegisterDiscoversTags: `ai-lb register --url` of an Ollama
// without /v1/models (and without /health) registers the models of its
// /api/tags, by their full names, and ai-lb routes them.
func TestOllamaRegisterDiscoversTags(t *testing.T) {
	c := newCluster(t)
	sim := simnode.New(simnode.Config{ID: "ollama-1", Models: []string{"qwen3:8b", "llama3.2"}})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/api/") {
			http.NotFound(w, r) // an Ollama with its native API only
			return
		}
		sim.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	out, err := aiLB(t, []string{"REDIS_URL=" + c.redis.URL()}, "register", "--once", "--url", srv.URL, "--id", "ollama-1")
	require.NoError(t, err, out)
	nodes := listNodes(t, c.redis.URL())
	require.Len(t, nodes, 1)
	require.Equal(t, []string{"qwen3:8b", "llama3.2:latest"}, nodes[0].Node.Models)
	require.Equal(t, "live", nodes[0].State)

	port := freePort(t)
	startCaddy(t, exampleCaddyfile(t, port))
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	waitNodes(t, base, 1)
	a, err := ollamaChat(context.Background(), base, "reg", "llama3.2", true)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, a.status, a.body)
	require.NoError(t, checkOllamaStream(a.body, "ollama-1", simnode.DefaultTokens))
	require.True(t, slices.Contains(strings.Split(rawJSON(t, base+"/api/tags"), `"`), "llama3.2:latest"))
}
