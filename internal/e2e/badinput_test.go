package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ai-lb/ai-lb/registry"
	"github.com/ai-lb/ai-lb/simnode"
)

// apiErrorBody is the OpenAI error format.
type apiErrorBody struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    *string `json:"code"`
	} `json:"error"`
}

func TestBadInputAnswers(t *testing.T) {
	c := newCluster(t)
	c.addNode("node-a", simnode.Config{})
	gone := c.startNode("node-gone", simnode.Config{Models: []string{"gone-model"}})
	gone.srv.Close() // registered, live, but nothing answers
	c.register(gone, time.Hour)
	expiring := c.startNode("node-expiring", simnode.Config{Models: []string{"expired-model"}})
	c.register(expiring, 2*time.Second) // expired before the cases run, pruned (three TTLs) after

	port := freePort(t)
	startCaddy(t, testCaddyfile(t, fmt.Sprintf(`{
	ai_lb {
		redis {env.REDIS_URL}
	}
}

:8000 {
	ai_lb {
		max_body_size 2KiB
		min_nodes 5
		retry_after 3s
	}
	reverse_proxy {
		dynamic ai_lb
		lb_policy p2c
	}
}
`), port))
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	waitNodes(t, base, 2) // node-a and node-gone; node-expiring has expired

	big := `{"model":"sim-model","messages":[{"role":"user","content":"` + strings.Repeat("x", 4096) + `"}]}`
	cases := []struct {
		name, path, body string
		status           int
		errType, code    string
		retryAfter       string
	}{
		{"malformed JSON", "/v1/chat/completions", `{"model":"sim-model",`, 400, "invalid_request_error", "invalid_json", ""},
		{"not an object", "/v1/chat/completions", `["sim-model"]`, 400, "invalid_request_error", "invalid_json", ""},
		{"model not a string", "/v1/completions", `{"model":42,"prompt":"x"}`, 400, "invalid_request_error", "invalid_json", ""},
		{"missing model", "/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}]}`, 400, "invalid_request_error", "missing_model", ""},
		{"missing model, embeddings", "/v1/embeddings", `{"input":"hi"}`, 400, "invalid_request_error", "missing_model", ""},
		{"unknown model", "/v1/chat/completions", `{"model":"no-such-model","messages":[]}`, 404, "invalid_request_error", "model_not_found", ""},
		{"body too large", "/v1/chat/completions", big, 413, "invalid_request_error", "request_too_large", ""},
		{"model of an expired node", "/v1/chat/completions", `{"model":"expired-model","messages":[]}`, 503, "server_error", "no_nodes_available", "3"},
		{"node not answering", "/v1/chat/completions", `{"model":"gone-model","messages":[]}`, 502, "server_error", "upstream_error", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := http.Post(base+tc.path, "application/json", strings.NewReader(tc.body))
			require.NoError(t, err)
			defer resp.Body.Close()
			require.Equal(t, tc.status, resp.StatusCode)
			require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
			require.Equal(t, tc.retryAfter, resp.Header.Get("Retry-After"))
			var body apiErrorBody
			require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
			require.Equal(t, tc.errType, body.Error.Type)
			require.NotNil(t, body.Error.Code)
			require.Equal(t, tc.code, *body.Error.Code)
			require.NotEmpty(t, body.Error.Message)
		})
	}

	t.Run("models list", func(t *testing.T) {
		resp, err := http.Get(base + "/v1/models")
		require.NoError(t, err)
		defer resp.Body.Close()
		var list struct {
			Object string `json:"object"`
			Data   []struct {
				ID     string `json:"id"`
				Object string `json:"object"`
			} `json:"data"`
		}
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&list))
		require.Equal(t, "list", list.Object)
		var ids []string
		for _, m := range list.Data {
			require.Equal(t, "model", m.Object)
			ids = append(ids, m.ID)
		}
		require.Equal(t, []string{"gone-model", "sim-model"}, ids)
	})
	t.Run("one model", func(t *testing.T) {
		resp, err := http.Get(base + "/v1/models/sim-model")
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		resp, err = http.Get(base + "/v1/models/expired-model")
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, http.StatusNotFound, resp.StatusCode)
		var body apiErrorBody
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
		require.Equal(t, "model_not_found", *body.Error.Code)
	})
	t.Run("health below min_nodes", func(t *testing.T) {
		resp, err := http.Get(base + "/health")
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
		var h map[string]any
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&h))
		require.Equal(t, "unavailable", h["status"])
		require.EqualValues(t, 2, h["nodes_found"])
		require.EqualValues(t, 5, h["minimum_required"])
	})
	t.Run("good request still works", func(t *testing.T) {
		status, node, body, err := chat(base, "sim-model")
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, status, body)
		require.Equal(t, "node-a", node)
	})
}

// TestPrunedNodeModelAnswers404: once an expired node's entry is pruned
// (registry.PruneAfterTTLs), its model is no longer known: 404, not the 503
// of a model whose nodes are down.
func TestPrunedNodeModelAnswers404(t *testing.T) {
	c := newCluster(t)
	c.addNode("node-a", simnode.Config{})
	const ttl = 500 * time.Millisecond
	c.register(c.startNode("node-dead", simnode.Config{Models: []string{"dead-model"}}), ttl)
	registered := time.Now()
	port := freePort(t)
	startCaddy(t, proxyCaddyfile(t, port, "resync_interval 100ms"))
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	eventually(t, 15*time.Second, func() error {
		status, _, body, err := chat(base, "dead-model")
		if err != nil || status != http.StatusNotFound || !strings.Contains(body, "model_not_found") {
			return fmt.Errorf("%d %s %v", status, body, err)
		}
		return nil
	})
	require.GreaterOrEqual(t, time.Since(registered), registry.PruneAfterTTLs*ttl, "404 before the node was pruned")
	status, node, body, err := chat(base, "sim-model")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, "node-a", node)
}

// proxyCaddyfile is the ai_lb handler in front of reverse_proxy on port,
// with options added to the global ai_lb block.
func proxyCaddyfile(t *testing.T, port int, options string) string {
	return testCaddyfile(t, fmt.Sprintf(`{
	ai_lb {
		redis {env.REDIS_URL}
		%s
	}
}

:8000 {
	ai_lb
	reverse_proxy {
		dynamic ai_lb
		lb_policy p2c
	}
}
`, options), port)
}

func TestNoNodesAnswers503(t *testing.T) {
	newCluster(t) // an empty registry
	port := freePort(t)
	startCaddy(t, exampleCaddyfile(t, port))
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	eventually(t, 10*time.Second, func() error {
		status, _, body, err := chat(base, "sim-model")
		if err != nil || status != http.StatusServiceUnavailable {
			return fmt.Errorf("%d %s %v", status, body, err)
		}
		return nil
	})
	resp, err := http.Post(base+"/tokenize", "application/json", strings.NewReader(`{"prompt":"x"}`))
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	require.Equal(t, "2", resp.Header.Get("Retry-After"))
	var body apiErrorBody
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
	require.Equal(t, "no_nodes_available", *body.Error.Code)
}

func TestNodesAtMaxConcurrencyAnswer503(t *testing.T) {
	c := newCluster(t)
	busy := c.startNode("node-busy", simnode.Config{TTFT: 3 * time.Second})
	require.NoError(t, c.client.Register(context.Background(), registry.Node{
		ID: busy.ID, URL: busy.URL, Models: []string{"sim-model"}, MaxConcurrency: 1,
		TTLMillis: time.Hour.Milliseconds(),
	}))
	port := freePort(t)
	startCaddy(t, proxyCaddyfile(t, port, ""))
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	waitNodes(t, base, 1)

	// One request holds the node's only slot...
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/chat/completions",
			strings.NewReader(`{"model":"sim-model","messages":[{"role":"user","content":"hi"}]}`))
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	eventually(t, 10*time.Second, func() error {
		if busy.Stats().InFlight != 1 {
			return fmt.Errorf("in flight: %d", busy.Stats().InFlight)
		}
		return nil
	})
	// ...so the next one finds no available node.
	resp, err := http.Post(base+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"model":"sim-model","messages":[{"role":"user","content":"hi"}]}`))
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	require.Equal(t, "2", resp.Header.Get("Retry-After"))
	var body apiErrorBody
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
	require.Equal(t, "server_error", body.Error.Type)
	require.Equal(t, "no_nodes_available", *body.Error.Code)
}
