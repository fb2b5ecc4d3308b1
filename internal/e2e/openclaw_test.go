package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ai-lb/ai-lb/simnode"
)

// TestOpenClawTrafficWithNPMClient sends OpenClaw's real traffic shape
// through ai-lb with the official openai npm client (pinned in
// compat/openclaw/package.json, installed here): streamed turns with usage,
// 20-60 KB bodies, a dozen tools, and a tool-call round trip.
func TestOpenClawTrafficWithNPMClient(t *testing.T) {
	if testing.Short() {
		t.Skip("installs the npm client and runs node: skipped under -short")
	}
	for _, tool := range []string{"node", "npm"} {
		_, err := exec.LookPath(tool)
		require.NoError(t, err, "%s is needed (apt-get install nodejs npm)", tool)
	}
	install := exec.Command("npm", "ci", "--no-audit", "--no-fund", "--loglevel=error")
	install.Dir = repoPath("compat/openclaw")
	out, err := install.CombinedOutput()
	require.NoError(t, err, "npm ci: %s", out)

	c := newCluster(t)
	c.addNode("node-a", simnode.Config{})
	c.addNode("node-b", simnode.Config{})
	port := freePort(t)
	startCaddy(t, exampleCaddyfile(t, port))
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	waitNodes(t, base, 2)

	run := exec.Command("node", "openclaw_traffic.mjs", "6")
	run.Dir = repoPath("compat/openclaw")
	run.Env = append(os.Environ(), "AI_LB_URL="+base)
	out, err = run.CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.True(t, strings.Contains(string(out), `"ok":true`), "%s", out)
	require.Positive(t, c.nodes[0].Stats().Completed+c.nodes[1].Stats().Completed)
}
