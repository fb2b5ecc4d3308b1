package request

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestModelNameAndKey(t *testing.T) {
	for _, tc := range []struct{ name, full, key string }{
		{"llama3.2", "llama3.2:latest", "llama3.2"},
		{"llama3.2:latest", "llama3.2:latest", "llama3.2"},
		{"qwen3:8b", "qwen3:8b", "qwen3:8b"},
		{"library/qwen3", "library/qwen3:latest", "library/qwen3"},
		{"registry.local:5000/team/qwen3", "registry.local:5000/team/qwen3:latest", "registry.local:5000/team/qwen3"},
		{"registry.local:5000/team/qwen3:latest", "registry.local:5000/team/qwen3:latest", "registry.local:5000/team/qwen3"},
		{"registry.local:5000/team/qwen3:4b", "registry.local:5000/team/qwen3:4b", "registry.local:5000/team/qwen3:4b"},
		{"meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B-Instruct:latest", "meta-llama/Llama-3.1-8B-Instruct"},
		{"sim-model", "sim-model:latest", "sim-model"},
		{":latest", ":latest", ":latest"},
		{"x:latest:latest", "x:latest:latest", "x:latest:latest"},
		{"", "", ""},
	} {
		require.Equal(t, tc.full, ModelName(tc.name), "ModelName(%q)", tc.name)
		require.Equal(t, tc.key, ModelKey(tc.name), "ModelKey(%q)", tc.name)
	}
}

// TestModelKeyMatchesModelName: keys are equal exactly when full names are.
func TestModelKeyMatchesModelName(t *testing.T) {
	names := []string{"llama3.2", "llama3.2:latest", "llama3.2:3b", "llama3.2:latest:latest", "a/llama3.2",
		"a/llama3.2:latest", "h:1/a", "h:1/a:latest", "h:1/a:1", "sim-model", "sim-model:latest", "x:", "x", ":latest", ""}
	for _, a := range names {
		for _, b := range names {
			require.Equal(t, ModelName(a) == ModelName(b), ModelKey(a) == ModelKey(b), "%q and %q", a, b)
		}
	}
}

func TestModelKeyAllocatesNothing(t *testing.T) {
	require.Zero(t, testing.AllocsPerRun(100, func() {
		_ = ModelKey("llama3.2:latest")
		_ = ModelKey("llama3.2")
	}))
}
