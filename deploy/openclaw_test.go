package deploy

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/ai-lb/ai-lb/registry"
)

func TestOpenClawProvider(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("openclaw", "openclaw.provider.json"))
	require.NoError(t, err)
	var doc struct {
		Models struct {
			Providers map[string]struct {
				BaseURL string `json:"baseUrl"`
				APIKey  string `json:"apiKey"`
				API     string `json:"api"`
				Models  []struct {
					ID            string `json:"id"`
					Name          string `json:"name"`
					ContextWindow int    `json:"contextWindow"`
					MaxTokens     int    `json:"maxTokens"`
				} `json:"models"`
			} `json:"providers"`
		} `json:"models"`
		Agents struct {
			Defaults struct {
				Model struct {
					Primary string `json:"primary"`
				} `json:"model"`
			} `json:"defaults"`
		} `json:"agents"`
	}
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	require.NoError(t, dec.Decode(&doc))
	p, ok := doc.Models.Providers["ai-lb"]
	require.True(t, ok, "provider ai-lb")
	require.Equal(t, "openai-completions", p.API)
	require.NotEmpty(t, p.APIKey)

	// The same base URL as the OpenClaw container's OPENAI_BASE_URL.
	c := loadCompose(t, filepath.Join("openclaw", "docker-compose.yml"), "openclaw")
	require.Equal(t, environment(t, c.service(t, "openclaw"))["OPENAI_BASE_URL"], p.BaseURL)

	require.NotEmpty(t, p.Models)
	for _, m := range p.Models {
		require.NotEmpty(t, m.ID)
		require.NotEmpty(t, m.Name)
		require.Positive(t, m.ContextWindow)
		require.Positive(t, m.MaxTokens)
		require.LessOrEqual(t, m.MaxTokens, m.ContextWindow)
	}
	require.Equal(t, "sim-model", p.Models[0].ID)
	require.Equal(t, "ai-lb/sim-model", doc.Agents.Defaults.Model.Primary)

	// The simulated nodes serve that model.
	for _, name := range checkSimNodes(t, c) {
		fs := ParseCaddyCommand(t, stringList(t, c.service(t, name)["command"]))
		models, _ := fs.GetStringSlice("models")
		require.Contains(t, models, "sim-model", "%s serves sim-model", name)
	}
}

// TestOpenClawDoc: the quick start of INTEGRATION.md is the two commands
// the compose file and the script implement, and its compose snippets are
// valid services. (Its links and `caddy` commands are checked with the
// repository's other docs, by TestDocs in the module root.)
func TestOpenClawDoc(t *testing.T) {
	guide := filepath.Join("openclaw", "INTEGRATION.md")
	integration, err := os.ReadFile(guide)
	require.NoError(t, err)
	require.Contains(t, string(integration), "```sh\ndocker compose up -d\n./test_connection.sh\n```")

	// The vLLM and Ollama snippets: valid compose services whose sidecar
	// commands parse and register a valid node.
	var sidecars int
	for _, block := range CodeBlocks(string(integration), "yaml") {
		var doc struct {
			Services map[string]map[string]any `yaml:"services"`
		}
		require.NoError(t, yaml.Unmarshal([]byte(block), &doc), block)
		require.NotEmpty(t, doc.Services, block)
		c := &composeFile{path: guide + " (snippet)", dir: "openclaw", doc: map[string]any{}, services: doc.Services}
		checkNoAdminPort(t, c)
		for name, svc := range doc.Services {
			require.Contains(t, serviceNetworks(t, svc), "llm-mesh", "%s", name)
			args := stringList(t, svc["command"])
			if len(args) == 0 || args[0] != "caddy" {
				continue
			}
			checkBuild(t, c, name)
			require.Contains(t, svc, "healthcheck", "%s must override the image's healthcheck", name)
			require.True(t, dependsOnHealthy(t, svc, "redis"), "%s waits for redis", name)
			fs := ParseCaddyCommand(t, args)
			require.Equal(t, []string{"caddy", "ai-lb", "register"}, args[:3], name)
			flagURL, _ := fs.GetString("redis")
			require.Empty(t, flagURL, "%s: the Redis URL carries a password: it comes from REDIS_URL", name)
			checkRedisURL(t, c, name, environment(t, svc)["REDIS_URL"], "agent")
			url, _ := fs.GetString("url")
			id, _ := fs.GetString("id")
			node := registry.Node{ID: id, URL: url, Models: []string{"m"}}
			require.NoError(t, node.Validate(), "%s", name)
			server, _, _ := strings.Cut(strings.TrimPrefix(url, "http://"), ":")
			require.Contains(t, doc.Services, server, "%s registers a server of the snippet", name)
			require.True(t, dependsOnHealthy(t, svc, server), "%s starts once %s is healthy", name, server)
			sidecars++
		}
	}
	require.Equal(t, 2, sidecars, "the vLLM and the Ollama sidecars")
}
