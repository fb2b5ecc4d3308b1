package simnode

import (
	"io"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestArrayOfPartsContent(t *testing.T) {
	_, srv := startNode(t, fast("n5"))
	resp := post(t, t.Context(), srv.URL+"/v1/chat/completions",
		`{"model":"sim-model","messages":[{"role":"user","content":[{"type":"text","text":"describe"},{"type":"image_url","image_url":{"url":"data:,"}}]}]}`)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Contains(t, string(b), Text("n5", 4))

	resp2 := post(t, t.Context(), srv.URL+"/v1/chat/completions",
		`{"model":"sim-model","messages":[{"role":"user","content":42}]}`)
	require.Equal(t, http.StatusBadRequest, resp2.StatusCode)
	require.Equal(t, "invalid_request_error", decodeError(t, resp2).Error.Type)
}
