package gateway

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ai-lb/ai-lb/registry"
)

// serveGET runs a GET of path through h and checks that the registry
// answered it, without the rest of the route.
func serveGET(t *testing.T, h *Handler, method, path string) *httptest.ResponseRecorder {
	t.Helper()
	next := new(recordingNext)
	rec := httptest.NewRecorder()
	require.NoError(t, h.ServeHTTP(rec, httptest.NewRequest(method, path, nil), next))
	require.Zero(t, next.calls, "%s %s went on to the rest of the route", method, path)
	require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	return rec
}

func TestModels(t *testing.T) {
	h := testHandler(t, snapshot(true, []string{"sleepy"}, member("b", "qwen", "llama"), member("a", "llama")))
	rec := serveGET(t, h, http.MethodGet, "/v1/models")
	require.Equal(t, http.StatusOK, rec.Code)
	require.JSONEq(t, `{"object":"list","data":[
		{"id":"llama","object":"model","created":0,"owned_by":"ai-lb"},
		{"id":"qwen","object":"model","created":0,"owned_by":"ai-lb"}]}`, rec.Body.String(),
		"the live nodes' models, sorted, once each; not those of nodes that are not live")

	rec = serveGET(t, testHandler(t, snapshot(true, nil)), http.MethodGet, "/v1/models")
	require.Equal(t, http.StatusOK, rec.Code)
	require.JSONEq(t, `{"object":"list","data":[]}`, rec.Body.String(), "no node: an empty list, not null")
}

func TestModel(t *testing.T) {
	h := testHandler(t, snapshot(true, []string{"sleepy"}, member("a", "llama", "org/qwen")))
	for _, id := range []string{"llama", "org/qwen"} {
		rec := serveGET(t, h, http.MethodGet, "/v1/models/"+id)
		require.Equal(t, http.StatusOK, rec.Code)
		require.JSONEq(t, `{"id":"`+id+`","object":"model","created":0,"owned_by":"ai-lb"}`, rec.Body.String())
	}
	for _, id := range []string{"mistral", "sleepy", ""} {
		rec := serveGET(t, h, http.MethodGet, "/v1/models/"+id)
		e := decodeError(t, rec, http.StatusNotFound, "model_not_found")
		require.Equal(t, "The model '"+id+"' does not exist or you do not have access to it.", e.Error.Message)
		require.NotNil(t, e.Error.Param)
		require.Equal(t, "model", *e.Error.Param)
	}
}

func TestHealth(t *testing.T) {
	two := 2
	live := []*registry.Member{member("a", "llama"), member("b", "llama", "qwen")}
	for _, tc := range []struct {
		name   string
		snap   *registry.Snapshot
		status int
		want   string
	}{
		{name: "enough nodes", snap: snapshot(true, nil, live...), status: http.StatusOK,
			want: `{"status":"ok","nodes_found":2,"models":2,"minimum_required":2,"registry_synced":true}`},
		{name: "too few nodes", snap: snapshot(true, []string{"qwen"}, live[0]), status: http.StatusServiceUnavailable,
			want: `{"status":"unavailable","nodes_found":1,"models":1,"minimum_required":2,"registry_synced":true}`},
		{name: "not synced", snap: snapshot(false, nil), status: http.StatusServiceUnavailable,
			want: `{"status":"unavailable","nodes_found":0,"models":0,"minimum_required":2,"registry_synced":false}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := testHandler(t, tc.snap)
			h.MinNodes = &two
			h.setDefaults() // again, for MinNodes
			for _, method := range []string{http.MethodGet, http.MethodHead} {
				rec := serveGET(t, h, method, "/health")
				require.Equal(t, tc.status, rec.Code, method)
				require.JSONEq(t, tc.want, rec.Body.String(), method)
			}
		})
	}
}

// TestRegistryOnlyForGET checks that only GET and HEAD of the registry's
// paths are answered from it.
func TestRegistryOnlyForGET(t *testing.T) {
	h := testHandler(t, snapshot(true, nil, member("a", "llama")))
	next := new(recordingNext)
	rec := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodPost, "/v1/models", strings.NewReader(`{"model":"llama"}`))
	require.NoError(t, h.ServeHTTP(rec, r, next))
	require.Equal(t, 1, next.calls)
	require.Equal(t, "ok", rec.Body.String())
}
