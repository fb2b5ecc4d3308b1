package registry

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
)

func member(id, dial string, models ...string) *Member {
	return &Member{Node: &Node{ID: id, URL: "http://" + dial, Models: models}, Dial: dial}
}

func TestSnapshotIndexes(t *testing.T) {
	a := member("a", "10.0.0.1:80", "llama", "qwen")
	b := member("b", "10.0.0.2:80", "qwen", "mistral")
	c := member("c", "10.0.0.3:80")                      // serves nothing listed
	dup := member("d-dup", "10.0.0.1:80", "qwen", "phi") // a second ID for a's address
	s := NewSnapshot([]*Member{dup, c, b, a}, map[string]bool{"sleepy": true}, true)

	require.True(t, s.Synced)
	require.Equal(t, []string{"a", "b", "c", "d-dup"}, ids(s), "members sorted by ID")

	tests := []struct {
		model string
		want  []string
		known bool
	}{
		{"llama", []string{"a"}, true},
		{"qwen", []string{"a", "b"}, true}, // a's address once, not again as d-dup
		{"mistral", []string{"b"}, true},
		{"phi", []string{"d-dup"}, true}, // only the second ID lists it
		{"sleepy", nil, true},
		{"", nil, false},
		{"unknown", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.model, func(t *testing.T) {
			var got []string
			for _, m := range s.ServingModel(tt.model) {
				got = append(got, m.ID)
			}
			require.Equal(t, tt.want, got)
			require.Equal(t, tt.known, s.Known(tt.model))
		})
	}

	require.Equal(t, []string{"llama", "mistral", "phi", "qwen"}, s.Models())
	require.Same(t, a, s.ByDial("10.0.0.1:80"))
	require.Same(t, b, s.ByDial("10.0.0.2:80"))
	require.Same(t, c, s.ByDial("10.0.0.3:80"))
	require.Nil(t, s.ByDial("10.0.0.9:80"))
	require.True(t, s.has(b))
	require.False(t, s.has(member("b", "10.0.0.2:80")), "has compares members, not IDs")

	empty := NewSnapshot(nil, nil, false)
	require.Empty(t, empty.Members)
	require.Empty(t, empty.Models())
	require.Nil(t, empty.ServingModel("llama"))
	require.Nil(t, empty.ByDial("10.0.0.1:80"))
	require.False(t, empty.Known("llama"))
	require.False(t, empty.Synced)
}

func BenchmarkSnapshotServingModel(b *testing.B) {
	members := make([]*Member, 1000)
	for i := range members {
		members[i] = member(fmt.Sprintf("node-%04d", i), fmt.Sprintf("10.0.%d.%d:8000", i/250, i%250),
			fmt.Sprintf("model-%d", i%10), "shared")
	}
	s := NewSnapshot(members, nil, true)
	require.Len(b, s.ServingModel("model-3"), 100)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if len(s.ServingModel("model-3")) != 100 {
			b.Fatal("wrong members")
		}
	}
}

// TestSnapshotMatchesLatest: a name without a tag is its ":latest", for
// the nodes serving it, the models known, and the listing.
func TestSnapshotMatchesLatest(t *testing.T) {
	a := member("a", "10.0.0.1:80", "llama3.2:latest", "qwen3:8b")
	b := member("b", "10.0.0.2:80", "llama3.2", "qwen3")
	both := member("c", "10.0.0.3:80", "gemma3", "gemma3:latest") // one node, both names
	s := NewSnapshot([]*Member{b, both, a}, map[string]bool{"sleepy:latest": true}, true)

	for model, want := range map[string][]string{
		"llama3.2":        {"a", "b"},
		"llama3.2:latest": {"a", "b"},
		"qwen3:8b":        {"a"},
		"qwen3":           {"b"},
		"qwen3:latest":    {"b"},
		"gemma3":          {"c"},
		"gemma3:latest":   {"c"},
		"llama3.2:3b":     nil,
	} {
		var got []string
		for _, m := range s.ServingModel(model) {
			got = append(got, m.ID)
		}
		require.Equal(t, want, got, model)
	}
	require.True(t, s.Known("sleepy"))
	require.True(t, s.Known("sleepy:latest"))
	require.False(t, s.Known("sleepy:7b"))
	require.Equal(t, []string{"gemma3", "llama3.2:latest", "qwen3", "qwen3:8b"}, s.Models(),
		"each model once, named as the first node by ID lists it")
}
