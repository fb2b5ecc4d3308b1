package simnode

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestRequestErrors(t *testing.T) {
	n, srv := startNode(t, fast("n6"))

	resp := post(t, t.Context(), srv.URL+"/v1/chat/completions",
		`{"model":"nope","messages":[{"role":"user","content":"hi"}]}`)
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	require.Equal(t, "n6", resp.Header.Get("X-Sim-Node"))
	e := decodeError(t, resp)
	require.Equal(t, "invalid_request_error", e.Error.Type)
	require.NotNil(t, e.Error.Code)
	require.Equal(t, "model_not_found", *e.Error.Code)

	resp = post(t, t.Context(), srv.URL+"/v1/chat/completions", `{"model":"sim-model","messages":[`)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	require.Equal(t, "invalid_request_error", decodeError(t, resp).Error.Type)

	resp = post(t, t.Context(), srv.URL+"/v1/chat/completions", `{"model":"sim-model","messages":[]}`)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	decodeError(t, resp)

	resp = post(t, t.Context(), srv.URL+"/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}],"max_tokens":0}`)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	decodeError(t, resp)

	resp, err := http.Get(srv.URL + "/v1/chat/completions")
	require.NoError(t, err)
	require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
	decodeError(t, resp)

	resp, err = http.Get(srv.URL + "/v2/unknown")
	require.NoError(t, err)
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	decodeError(t, resp)

	st := n.Stats()
	require.Equal(t, int64(4), st.Received)
	require.Equal(t, int64(4), st.Failed)
	recs := n.Requests()
	require.Len(t, recs, 4)
	require.Equal(t, http.StatusNotFound, recs[0].Status)
	require.Equal(t, "nope", recs[0].Model)
	require.Equal(t, "sim-model", recs[3].Model, "a missing model defaults to the first served one")
}

func TestFailRate(t *testing.T) {
	n, srv := startNode(t, Config{ID: "n7", TTFT: 2 * time.Millisecond, FailRate: 1, FailStatus: 503})
	resp := post(t, t.Context(), srv.URL+"/v1/chat/completions",
		`{"model":"sim-model","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	e := decodeError(t, resp)
	require.Equal(t, "server_error", e.Error.Type)
	require.NotNil(t, e.Error.Code)
	st := n.Stats()
	require.Equal(t, int64(1), st.Failed)
	require.Zero(t, st.InFlight)
	require.True(t, n.Requests()[0].FirstToken.IsZero())
}
