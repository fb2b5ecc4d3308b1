package ollamaapi

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestNameDigest(t *testing.T) {
	require.Len(t, NameDigest("qwen3:8b"), 64)
	require.Equal(t, NameDigest("qwen3:8b"), NameDigest("qwen3:8b"))
	require.NotEqual(t, NameDigest("qwen3:8b"), NameDigest("qwen3:4b"))
}

func TestListJSON(t *testing.T) {
	b, err := json.Marshal(List{Models: []Model{{Name: "m:latest", Model: "m:latest", Details: Details{Families: []string{}}}}})
	require.NoError(t, err)
	require.JSONEq(t, `{"models":[{"name":"m:latest","model":"m:latest","modified_at":"0001-01-01T00:00:00Z","size":0,"digest":"",
		"details":{"parent_model":"","format":"","family":"","families":[],"parameter_size":"","quantization_level":""}}]}`, string(b),
		"without the /api/ps fields")
	expires := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	b, err = json.Marshal(Model{ExpiresAt: &expires, SizeVRAM: 1, ContextLength: 2})
	require.NoError(t, err)
	require.Contains(t, string(b), `"expires_at":"2026-01-02T03:04:05Z","size_vram":1,"context_length":2`)
}
