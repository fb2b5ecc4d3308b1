package simnode

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestMetrics(t *testing.T) {
	n, srv := startNode(t, Config{ID: "n12", Models: []string{"m1", "m2"}, TTFT: time.Minute, Slots: 4, QueueSize: 4})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/v1/chat/completions",
			strings.NewReader(`{"model":"m2","messages":[{"role":"user","content":"hi"}]}`))
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	waitStats(t, n, func(s Stats) bool { return s.InFlight == 1 })

	resp, err := http.Get(srv.URL + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, resp.Header.Get("Content-Type"), "text/plain")
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	m := string(b)
	for _, want := range []string{
		"# TYPE vllm:num_requests_running gauge",
		`vllm:num_requests_running{model_name="m1"} 0`,
		`vllm:num_requests_running{model_name="m2"} 1`,
		`vllm:num_requests_waiting{model_name="m1"} 0`,
		`vllm:num_requests_waiting{model_name="m2"} 0`,
		`vllm:kv_cache_usage_perc{model_name="m1"} 0.25`,
		`vllm:kv_cache_usage_perc{model_name="m2"} 0.25`,
		`vllm:scheduler_config_info{max_num_seqs="4"} 1`,
	} {
		require.Contains(t, m, want)
	}
	cancel()
	waitStats(t, n, func(s Stats) bool { return s.InFlight == 0 })

	// Without a slot limit there is no capacity to state.
	n.Update(func(c *Config) { c.Slots = 0 })
	resp, err = http.Get(srv.URL + "/metrics")
	require.NoError(t, err)
	b, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.NotContains(t, string(b), "max_num_seqs")
	require.Contains(t, string(b), `vllm:num_requests_running{model_name="m2"} 0`)
}

func TestInfoEndpoints(t *testing.T) {
	n, srv := startNode(t, Config{ID: "n13", Models: []string{"a", "b"}, TTFT: NoDelay, InterTokenLatency: NoDelay})

	getJSON := func(path string, v any) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode, path)
		require.Equal(t, "n13", resp.Header.Get("X-Sim-Node"))
		require.NoError(t, json.NewDecoder(resp.Body).Decode(v))
	}

	var health map[string]string
	getJSON("/health", &health)
	require.Equal(t, map[string]string{"status": "ok"}, health)

	var models struct {
		Object string `json:"object"`
		Data   []struct {
			ID, Object string
			Created    int64
			OwnedBy    string `json:"owned_by"`
		} `json:"data"`
	}
	getJSON("/v1/models", &models)
	require.Equal(t, "list", models.Object)
	require.Len(t, models.Data, 2)
	require.Equal(t, "a", models.Data[0].ID)
	require.Equal(t, "model", models.Data[0].Object)
	require.Equal(t, "simnode", models.Data[0].OwnedBy)
	require.NotZero(t, models.Data[0].Created)

	resp := post(t, t.Context(), srv.URL+"/v1/embeddings", `{"model":"b","input":["x","y"]}`)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var emb struct {
		Object string `json:"object"`
		Model  string `json:"model"`
		Data   []struct {
			Object    string    `json:"object"`
			Index     int       `json:"index"`
			Embedding []float32 `json:"embedding"`
		} `json:"data"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&emb))
	require.Equal(t, "list", emb.Object)
	require.Equal(t, "b", emb.Model)
	require.Len(t, emb.Data, 2)
	require.Equal(t, 1, emb.Data[1].Index)
	require.Equal(t, Embed([]byte("x")), emb.Data[0].Embedding)
	require.Len(t, emb.Data[0].Embedding, EmbeddingDim)
	require.NotEqual(t, emb.Data[0].Embedding, emb.Data[1].Embedding)

	var st Stats
	getJSON("/sim/stats", &st)
	require.Equal(t, Stats{Received: 1, Completed: 1}, st)
	var recs []map[string]any
	getJSON("/sim/requests", &recs)
	require.Len(t, recs, 1)
	require.Equal(t, "/v1/embeddings", recs[0]["path"])

	// Partial config update with duration strings.
	resp = post(t, t.Context(), srv.URL+"/sim/config", `{"ttft":"250ms","itl":"0s","slots":3,"tokens":7}`)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	c := n.Config()
	require.Equal(t, 250*time.Millisecond, c.TTFT)
	require.LessOrEqual(t, c.InterTokenLatency, time.Duration(0))
	require.Equal(t, 3, c.Slots)
	require.Equal(t, 7, c.Tokens)
	require.Equal(t, []string{"a", "b"}, c.Models)
	var cj map[string]any
	getJSON("/sim/config", &cj)
	require.Equal(t, "250ms", cj["ttft"])
	require.Equal(t, "0s", cj["inter_token_latency"])

	resp = post(t, t.Context(), srv.URL+"/sim/config", `{"ttfft":"1s"}`)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	decodeError(t, resp)

	resp = post(t, t.Context(), srv.URL+"/sim/reset", ``)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, Stats{}, n.Stats())
	require.Empty(t, n.Requests())
}
