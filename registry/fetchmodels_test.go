package registry

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ai-lb/ai-lb/simnode"
)

// TestFetchModelsOllamaTags: a node without /v1/models is read through
// Ollama's /api/tags; other failures of /v1/models are not.
func TestFetchModelsOllamaTags(t *testing.T) {
	ctx := context.Background()
	sim := startNode(t, "llama3.2:latest", "qwen3")
	models, err := FetchModels(ctx, sim.URL)
	require.NoError(t, err)
	require.Equal(t, []string{"llama3.2:latest", "qwen3"}, models, "/v1/models, as listed")

	sim.answer("/v1/models", http.StatusNotFound)
	for _, url := range []string{sim.URL, sim.URL + "/v1", sim.URL + "/v1/"} {
		models, err = FetchModels(ctx, url)
		require.NoError(t, err, url)
		require.Equal(t, []string{"llama3.2:latest", "qwen3:latest"}, models, "/api/tags: Ollama's full names")
	}

	sim.answer("/api/tags", http.StatusNotFound)
	_, err = FetchModels(ctx, sim.URL)
	require.ErrorContains(t, err, "/api/tags: 404 Not Found")

	sim.answer("/v1/models", http.StatusInternalServerError)
	sim.answer("/api/tags", 0)
	_, err = FetchModels(ctx, sim.URL)
	require.ErrorContains(t, err, "/v1/models: 500", "only a missing /v1/models defers to /api/tags")

	empty := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/tags" {
			_, _ = w.Write([]byte(`{"models":[]}`))
			return
		}
		http.NotFound(w, r)
	}))
	defer empty.Close()
	_, err = FetchModels(ctx, empty.URL)
	require.ErrorContains(t, err, "/api/tags: no models listed")
}

// TestAgentOllamaNode: an Ollama server (no /health, no /v1/models) is
// registered with the models of its /api/tags, and they follow the node's.
func TestAgentOllamaNode(t *testing.T) {
	e := newTestEnv(t)
	w, _ := e.watch(WatcherOptions{Resync: time.Hour})
	sim := startNode(t, "qwen3:8b")
	sim.answer("/health", http.StatusNotFound)
	sim.answer("/v1/models", http.StatusNotFound)
	runAgent(t, &Agent{Client: e.client, Node: Node{ID: "ollama", URL: sim.URL, TTLMillis: 600}, Logger: zaptestLogger(t)})
	waitFor(t, func() bool { return hasID(w, "ollama") }, "the node to be registered")
	require.Equal(t, []string{"qwen3:8b"}, e.entry("ollama").Node.Models)

	sim.Update(func(c *simnode.Config) { c.Models = []string{"qwen3:8b", "llama3.2"} })
	waitFor(t, func() bool { return len(w.Snapshot().ServingModel("llama3.2")) == 1 }, "the node's new model")
	require.Equal(t, []string{"qwen3:8b", "llama3.2:latest"}, e.entry("ollama").Node.Models)
}
