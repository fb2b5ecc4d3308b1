package ailb

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/stretchr/testify/require"

	"github.com/ai-lb/ai-lb/deploy"
)

// TestDocs: in README.md, BENCHMARKS.md, DEPLOYMENT.md and
// deploy/openclaw/INTEGRATION.md, relative
// links (and their #anchors) resolve and every `caddy ...` command in a sh
// block parses with the command line of the binary the image ships; and
// DEPLOYMENT.md builds the image as xcaddy.Dockerfile expects and points to
// the OpenClaw guide. (The guide's quick start and compose snippets are
// checked in deploy, with the compose files: TestOpenClawDoc.)
func TestDocs(t *testing.T) {
	docs := []string{"README.md", "BENCHMARKS.md", "DEPLOYMENT.md", filepath.Join("deploy", "openclaw", "INTEGRATION.md")}
	link := regexp.MustCompile(`\]\(([^)#\s]*)(?:#([^)\s]*))?\)`)
	for _, doc := range docs {
		raw, err := os.ReadFile(doc)
		require.NoError(t, err)
		for _, m := range link.FindAllStringSubmatch(string(raw), -1) {
			target, anchor := m[1], m[2]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			path := doc
			if target != "" {
				path = filepath.Join(filepath.Dir(doc), target)
			}
			_, err := os.Stat(path)
			require.NoError(t, err, "%s links to %s", doc, target)
			if anchor != "" {
				require.Contains(t, headingAnchors(t, path), anchor, "%s links to %s#%s", doc, target, anchor)
			}
		}
		for _, line := range codeBlockLines(string(raw), "sh") {
			if args := caddyCommandIn(line); args != nil {
				deploy.ParseCaddyCommand(t, args)
			}
		}
	}
	deployment, err := os.ReadFile("DEPLOYMENT.md")
	require.NoError(t, err)
	require.Contains(t, string(deployment), "(deploy/openclaw/INTEGRATION.md)")
	require.Contains(t, string(deployment), "docker build -f xcaddy.Dockerfile -t ai-lb .")
}

// codeBlockLines returns the commands of the code blocks in lang, with
// continued lines joined.
func codeBlockLines(md, lang string) []string {
	var lines []string
	for _, block := range deploy.CodeBlocks(md, lang) {
		joined := strings.ReplaceAll(block, "\\\n", " ")
		lines = append(lines, strings.Split(joined, "\n")...)
	}
	return lines
}

// caddyCommandIn returns the `caddy <command> ...` a shell line runs, up
// to the first shell operator, or nil.
func caddyCommandIn(line string) []string {
	fields := strings.Fields(line)
	for i, f := range fields {
		if f != "caddy" || i+1 >= len(fields) {
			continue
		}
		if _, ok := caddycmd.Commands()[fields[i+1]]; !ok {
			continue
		}
		var args []string
		for _, a := range fields[i:] {
			if slices.Contains([]string{"|", "||", "&&", ";", ">", "2>&1"}, a) {
				break
			}
			args = append(args, a)
		}
		return args
	}
	return nil
}

// headingAnchors returns GitHub's anchors for the headings of a Markdown file.
func headingAnchors(t *testing.T, path string) []string {
	t.Helper()
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	var anchors []string
	inCode := false
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(line, "```") {
			inCode = !inCode
		}
		if inCode || !strings.HasPrefix(line, "#") {
			continue
		}
		title := strings.TrimSpace(strings.TrimLeft(line, "#"))
		var b strings.Builder
		for _, r := range strings.ToLower(title) {
			switch {
			case r == ' ':
				b.WriteRune('-')
			case r == '-' || r == '_' || ('a' <= r && r <= 'z') || ('0' <= r && r <= '9') || r > 127:
				b.WriteRune(r)
			}
		}
		anchors = append(anchors, b.String())
	}
	return anchors
}
