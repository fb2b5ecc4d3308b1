package gateway

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/ai-lb/ai-lb/registry"
)

// testHandler returns a handler with its defaults, as Provision leaves it,
// whose registry is snap.
func testHandler(t *testing.T, snap *registry.Snapshot) *Handler {
	t.Helper()
	h := &Handler{logger: zap.NewNop()}
	require.NoError(t, h.Validate())
	h.setDefaults()
	h.snapshot = func() *registry.Snapshot { return snap }
	return h
}

// member returns a live node serving models.
func member(id string, models ...string) *registry.Member {
	dial := id + ".test:8000"
	return &registry.Member{Node: &registry.Node{ID: id, URL: "http://" + dial, Models: models}, Dial: dial}
}

// snapshot returns a snapshot of the members; dormant models are known
// from registered nodes that are not live.
func snapshot(synced bool, dormant []string, members ...*registry.Member) *registry.Snapshot {
	known := make(map[string]bool, len(dormant))
	for _, m := range dormant {
		known[m] = true
	}
	return registry.NewSnapshot(members, known, synced)
}

// wireError is an OpenAI error document as a client decodes it, through
// apiError's own field names.
type wireError struct {
	Error struct {
		apiError
		Code any `json:"code"` // a string, or nil for null
	} `json:"error"`
}

// decodeError checks that rec holds a JSON error with status and code,
// and returns it.
func decodeError(t *testing.T, rec *httptest.ResponseRecorder, status int, code string) wireError {
	t.Helper()
	require.Equal(t, status, rec.Code, rec.Body.String())
	require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	var e wireError
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &e), rec.Body.String())
	got, _ := e.Error.Code.(string) // "" for a null code
	require.Equal(t, code, got)
	return e
}

// recordingNext is the rest of the route: it records the requests it gets
// and answers with its handler (200 "ok" when nil).
type recordingNext struct {
	calls   int
	bodies  []string
	handler caddyhttp.HandlerFunc
	last    *http.Request
}

func (n *recordingNext) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	n.calls++
	n.last = r
	if r.Body != nil {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return err
		}
		n.bodies = append(n.bodies, string(body))
	}
	if n.handler != nil {
		return n.handler(w, r)
	}
	w.WriteHeader(http.StatusOK)
	_, err := w.Write([]byte("ok"))
	return err
}
