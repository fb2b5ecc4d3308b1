package deploy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// readDockerignore returns the exclusion patterns of .dockerignore.
func readDockerignore(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot, ".dockerignore"))
	require.NoError(t, err)
	var patterns []string
	for _, line := range strings.Split(string(raw), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		require.False(t, strings.HasPrefix(line, "!"), ".dockerignore: keep it a plain exclusion list (%s)", line)
		patterns = append(patterns, filepath.Clean(strings.TrimPrefix(line, "/")))
	}
	return patterns
}

// ignored reports whether a path of the build context, or a directory
// containing it, matches a .dockerignore pattern (`**/` matches any depth).
func ignored(patterns []string, rel string) bool {
	parts := strings.Split(filepath.ToSlash(rel), "/")
	for _, p := range patterns {
		p = filepath.ToSlash(p)
		for i := 1; i <= len(parts); i++ {
			prefix := strings.Join(parts[:i], "/")
			if ok, _ := filepath.Match(p, prefix); ok {
				return true
			}
			if rest, ok := strings.CutPrefix(p, "**/"); ok {
				for j := 0; j < i; j++ {
					if m, _ := filepath.Match(rest, strings.Join(parts[j:i], "/")); m {
						return true
					}
				}
			}
		}
	}
	return false
}

func TestDockerignore(t *testing.T) {
	patterns := readDockerignore(t)
	for _, junk := range []string{".git", "bin/ai-lb", "tmp/ai-lb.log", "gateway/gateway.test", ".env", "deploy/openclaw/.env"} {
		require.True(t, ignored(patterns, junk), ".dockerignore should exclude %s", junk)
	}
	for _, kept := range []string{"go.mod", "module.go", "gateway/handler.go", "scripts/build.sh", "Caddyfile.example"} {
		require.False(t, ignored(patterns, kept), ".dockerignore must not exclude %s", kept)
	}
}
