package deploy

import "slices"

const (
	repoRoot   = ".."
	modulePath = "github.com/ai-lb/ai-lb"
	dockerfile = "xcaddy.Dockerfile"
	// adminPort is Caddy's admin API: never published on the host.
	adminPort = 2019
	apiPort   = 8000
)

// keys returns the keys of m, sorted.
func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
