package gateway

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/stretchr/testify/require"

	"github.com/ai-lb/ai-lb/registry"
	"github.com/ai-lb/ai-lb/request"
)

// tagsOf decodes a /api/tags or /api/ps answer into its model names.
func tagsOf(t *testing.T, rec *httptest.ResponseRecorder) []string {
	t.Helper()
	require.Equal(t, http.StatusOK, rec.Code)
	var list struct {
		Models []struct {
			Name, Model, Digest string
			Details             struct{ Families []string }
		}
	}
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &list), rec.Body.String())
	names := []string{}
	for _, m := range list.Models {
		require.Equal(t, m.Name, m.Model)
		require.Len(t, m.Digest, 64)
		require.NotNil(t, m.Details.Families)
		names = append(names, m.Name)
	}
	return names
}

// TestOllamaTagsUnion: /api/tags and /api/ps list the union of the live
// nodes' models, each once under its full name, from the registry alone.
func TestOllamaTagsUnion(t *testing.T) {
	h := testHandler(t, snapshot(true, []string{"sleepy:7b"},
		member("a", "qwen3:8b", "llama3.2:latest"),
		member("b", "qwen3:8b", "gemma3:4b", "llama3.2"),
		member("c", "nomic-embed-text")))
	for _, path := range []string{"/api/tags", "/api/ps"} {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			rec := serveGET(t, h, method, path)
			if method == http.MethodHead {
				require.Equal(t, http.StatusOK, rec.Code)
				continue
			}
			require.Equal(t, []string{"gemma3:4b", "llama3.2:latest", "nomic-embed-text:latest", "qwen3:8b"}, tagsOf(t, rec), path)
		}
	}
	rec := serveGET(t, h, http.MethodGet, "/api/ps")
	require.Contains(t, rec.Body.String(), `"expires_at":"0001-01-01T00:00:00Z"`)
	rec = serveGET(t, h, http.MethodGet, "/api/tags")
	require.NotContains(t, rec.Body.String(), "expires_at")

	// Digests tell models apart, and do not change with the nodes.
	var one, two struct {
		Models []struct{ Name, Digest string }
	}
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &one))
	rec = serveGET(t, testHandler(t, snapshot(true, nil, member("z", "qwen3:8b"))), http.MethodGet, "/api/tags")
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &two))
	require.Equal(t, one.Models[3], two.Models[0])
	require.NotEqual(t, one.Models[0].Digest, one.Models[1].Digest)

	rec = serveGET(t, testHandler(t, snapshot(true, nil)), http.MethodGet, "/api/tags")
	require.JSONEq(t, `{"models":[]}`, rec.Body.String(), "no node: an empty list, not null")
}

func TestOllamaVersion(t *testing.T) {
	rec := serveGET(t, testHandler(t, snapshot(true, nil)), http.MethodGet, "/api/version")
	require.Equal(t, http.StatusOK, rec.Code)
	require.JSONEq(t, `{"version":"`+ollamaVersion+`"}`, rec.Body.String())
}

// serveOllamaPOST posts body to path through h and returns the answer
// and what the rest of the route got.
func serveOllamaPOST(t *testing.T, h *Handler, method, path, body string) (*httptest.ResponseRecorder, *recordingNext) {
	t.Helper()
	return serveThrough(t, h, new(recordingNext), method, path, body)
}

// serveThrough runs a request through h with next as the rest of the route.
func serveThrough(t *testing.T, h *Handler, next *recordingNext, method, path, body string) (*httptest.ResponseRecorder, *recordingNext) {
	t.Helper()
	rec := httptest.NewRecorder()
	require.NoError(t, h.ServeHTTP(rec, httptest.NewRequest(method, path, strings.NewReader(body)), next))
	return rec, next
}

// ollamaErrorOf checks that rec is an Ollama error document with status,
// and returns its message.
func ollamaErrorOf(t *testing.T, rec *httptest.ResponseRecorder, status int) string {
	t.Helper()
	require.Equal(t, status, rec.Code, rec.Body.String())
	require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	var e map[string]any
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &e), rec.Body.String())
	require.Len(t, e, 1, "only an error field: %s", rec.Body.String())
	msg, ok := e["error"].(string)
	require.True(t, ok, "the error is a string: %s", rec.Body.String())
	return msg
}

// TestOllamaErrors: errors on /api/* in Ollama's shape and statuses.
func TestOllamaErrors(t *testing.T) {
	live := snapshot(true, []string{"sleepy"}, member("a", "llama3.2:latest"))
	for _, tc := range []struct {
		name, path, body string
		snap             *registry.Snapshot
		status           int
		message          string
		retryAfter       string
	}{
		{name: "unknown model", path: "/api/chat", body: `{"model":"mistral","messages":[]}`, snap: live,
			status: 404, message: `model "mistral:latest" not found`},
		{name: "unknown tag", path: "/api/chat", body: `{"model":"llama3.2:1b"}`, snap: live,
			status: 404, message: `model "llama3.2:1b" not found`},
		{name: "unknown model, show", path: "/api/show", body: `{"model":"qwen3:8b"}`, snap: live,
			status: 404, message: `model "qwen3:8b" not found`},
		{name: "unknown model, embed", path: "/api/embed", body: `{"model":"nomic-embed-text","input":"x"}`, snap: live,
			status: 404, message: `model "nomic-embed-text:latest" not found`},
		{name: "bad JSON", path: "/api/chat", body: `{"model":`, snap: live,
			status: 400, message: request.ErrMalformedJSON.Error()},
		{name: "model not a string", path: "/api/generate", body: `{"model":5}`, snap: live,
			status: 400, message: request.ErrModelNotText.Error()},
		{name: "missing model", path: "/api/generate", body: `{"prompt":"hi"}`, snap: live,
			status: 400, message: "model is required"},
		{name: "empty model", path: "/api/embeddings", body: `{"model":"","prompt":"hi"}`, snap: live,
			status: 400, message: "model is required"},
		{name: "too large", path: "/api/chat", body: `{"model":"llama3.2","messages":"` + strings.Repeat("x", 64) + `"}`, snap: live,
			status: 413, message: "the request body exceeds the limit of 64 bytes"},
		{name: "model of a node that is not live", path: "/api/chat", body: `{"model":"sleepy:latest"}`, snap: live,
			status: 503, message: "no node serving the model 'sleepy:latest' is available", retryAfter: "3"},
		{name: "no node", path: "/api/chat", body: `{"model":"llama3.2"}`, snap: snapshot(true, nil),
			status: 503, message: "no inference node is available", retryAfter: "3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := testHandler(t, tc.snap)
			h.MaxBodySize = 64
			h.RetryAfter = caddy.Duration(3 * time.Second)
			rec, next := serveOllamaPOST(t, h, http.MethodPost, tc.path, tc.body)
			require.Zero(t, next.calls, "the rest of the route was called")
			require.Equal(t, tc.message, ollamaErrorOf(t, rec, tc.status))
			require.Equal(t, tc.retryAfter, rec.Header().Get("Retry-After"))
		})
	}

	// A proxy failure too.
	h := testHandler(t, live)
	failing := &recordingNext{handler: func(http.ResponseWriter, *http.Request) error {
		return caddyhttp.Error(http.StatusBadGateway, errors.New("dial"))
	}}
	rec, _ := serveThrough(t, h, failing, http.MethodPost, "/api/chat", `{"model":"llama3.2"}`)
	require.Equal(t, "the inference node failed: Bad Gateway", ollamaErrorOf(t, rec, http.StatusBadGateway))

	// The OpenAI paths keep the OpenAI shape.
	rec, _ = serveOllamaPOST(t, h, http.MethodPost, "/v1/chat/completions", `{"model":"mistral"}`)
	decodeError(t, rec, http.StatusNotFound, "model_not_found")
}

// TestOllamaRefusals: model management is refused, whatever the method,
// without reaching a node.
func TestOllamaRefusals(t *testing.T) {
	h := testHandler(t, snapshot(true, nil, member("a", "llama3.2:latest")))
	for _, tc := range []struct{ method, path, op string }{
		{http.MethodPost, "/api/pull", "pull"},
		{http.MethodPost, "/api/push", "push"},
		{http.MethodPost, "/api/create", "create"},
		{http.MethodPost, "/api/copy", "copy"},
		{http.MethodDelete, "/api/delete", "delete"},
		{http.MethodPost, "/api/blobs/sha256:0123", "create"},
		{http.MethodHead, "/api/blobs/sha256:0123", "create"},
		{http.MethodGet, "/api/pull", "pull"},
	} {
		rec, next := serveOllamaPOST(t, h, tc.method, tc.path, `{"model":"llama3.2"}`)
		require.Zero(t, next.calls, "%s %s reached a node", tc.method, tc.path)
		if tc.method == http.MethodHead {
			require.Equal(t, http.StatusForbidden, rec.Code)
			continue
		}
		msg := ollamaErrorOf(t, rec, http.StatusForbidden)
		require.Contains(t, msg, "does not "+tc.op+" models")
		require.Contains(t, msg, "manage models on each server")
	}
}

// TestOllamaRouted: Ollama's model endpoints reach the rest of the route
// with the body unchanged, the model by its full name, and the stream flag
// as Ollama defaults it.
func TestOllamaRouted(t *testing.T) {
	h := testHandler(t, snapshot(true, nil, member("a", "llama3.2:latest", "qwen3:8b")))
	for _, tc := range []struct {
		name, path, body string
		model            string
		stream           bool
	}{
		{"chat streams by default", "/api/chat", `{"model":"llama3.2","messages":[]}`, "llama3.2:latest", true},
		{"chat stream false", "/api/chat", `{"model":"qwen3:8b","stream":false}`, "qwen3:8b", false},
		{"chat stream true", "/api/chat", `{"model":"llama3.2:latest","stream":true}`, "llama3.2:latest", true},
		{"generate streams by default", "/api/generate", `{"model":"qwen3:8b","prompt":"hi"}`, "qwen3:8b", true},
		{"embed does not stream", "/api/embed", `{"model":"llama3.2","input":"hi"}`, "llama3.2:latest", false},
		{"legacy embeddings", "/api/embeddings", `{"model":"llama3.2","prompt":"hi"}`, "llama3.2:latest", false},
		{"show", "/api/show", `{"model":"llama3.2"}`, "llama3.2:latest", false},
		{"show by its legacy name field", "/api/show", `{"name":"qwen3:8b"}`, "qwen3:8b", false},
		{"another /api path", "/api/experimental/web_search", `{"query":"x"}`, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec, next := serveOllamaPOST(t, h, http.MethodPost, tc.path, tc.body)
			require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
			require.Equal(t, 1, next.calls)
			require.Equal(t, []string{tc.body}, next.bodies, "the body goes on unchanged")
			req := request.FromContext(next.last.Context())
			require.Equal(t, tc.model, req.Model)
			require.Equal(t, tc.stream, req.Stream)
		})
	}
}

// TestOllamaLatestMatching: a name without a tag reaches the nodes of its
// ":latest", and a ":latest" name those registered without a tag.
func TestOllamaLatestMatching(t *testing.T) {
	h := testHandler(t, snapshot(true, nil, member("a", "llama3.2:latest"), member("b", "gemma3")))
	for _, body := range []string{`{"model":"llama3.2"}`, `{"model":"llama3.2:latest"}`, `{"model":"gemma3"}`, `{"model":"gemma3:latest"}`} {
		rec, next := serveOllamaPOST(t, h, http.MethodPost, "/api/chat", body)
		require.Equal(t, http.StatusOK, rec.Code, "%s: %s", body, rec.Body.String())
		require.Equal(t, 1, next.calls, body)
	}
	rec := serveGET(t, h, http.MethodGet, "/api/tags")
	require.Equal(t, []string{"gemma3:latest", "llama3.2:latest"}, tagsOf(t, rec))
}
