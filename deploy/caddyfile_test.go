package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"github.com/stretchr/testify/require"

	_ "github.com/ai-lb/ai-lb"
	"github.com/ai-lb/ai-lb/internal/testredis"
)

// adaptCaddyfile adapts a Caddyfile in-process, as `caddy run --adapter
// caddyfile` in the image does, and requires no error and no warning; it
// then provisions the config without starting it (`caddy validate`).
func adaptCaddyfile(t *testing.T, path string) []byte {
	t.Helper()
	body, err := os.ReadFile(path)
	require.NoError(t, err)
	adapter := caddyconfig.GetAdapter("caddyfile")
	require.NotNil(t, adapter)
	cfg, warnings, err := adapter.Adapt(body, map[string]any{"filename": path})
	require.NoError(t, err, "adapting %s", path)
	require.Empty(t, warnings, "adapting %s", path)

	// Provisioning opens the registry ({env.REDIS_URL}): give it a Redis of
	// its own (an unreachable one would not fail, but costs seconds).
	t.Setenv("REDIS_URL", testredis.Start(t).URL())
	var config caddy.Config
	require.NoError(t, json.Unmarshal(cfg, &config))
	require.NoError(t, caddy.Validate(&config), "validating %s", path)
	return cfg
}

// adaptedConfig is the part of an adapted config these tests look at.
type adaptedConfig struct {
	Admin struct {
		Listen  string   `json:"listen"`
		Origins []string `json:"origins"`
	} `json:"admin"`
	Apps struct {
		AILB *struct {
			Redis         string `json:"redis"`
			Prefix        string `json:"prefix"`
			NodeAllowlist *struct {
				DenyNetworks []string `json:"deny_networks"`
				DenyHosts    []string `json:"deny_hosts"`
			} `json:"node_allowlist"`
		} `json:"ai_lb"`
		HTTP struct {
			Servers map[string]struct {
				Listen []string `json:"listen"`
				Routes []struct {
					Handle []map[string]any `json:"handle"`
				} `json:"routes"`
			} `json:"servers"`
		} `json:"http"`
	} `json:"apps"`
}

func TestOpenClawCaddyfile(t *testing.T) {
	t.Setenv("AI_LB_API_KEYS", testSecrets["AI_LB_API_KEY"])
	cfg := checkDeployCaddyfile(t, filepath.Join("openclaw", "Caddyfile"))
	require.Equal(t, "localhost:2019", cfg.Admin.Listen, "the admin API stays on the container's loopback")

	// One site on :8000 that runs ai_lb -> hedge -> reverse_proxy, and
	// requires the API key OpenClaw is given.
	srv := cfg.Apps.HTTP.Servers["srv0"]
	var handlers []string
	for _, h := range srv.Routes[0].Handle {
		handlers = append(handlers, fmt.Sprint(h["handler"]))
	}
	require.Equal(t, []string{"ai_lb", "hedge", "reverse_proxy"}, handlers)
	require.Equal(t, map[string]any{"env": "AI_LB_API_KEYS"}, srv.Routes[0].Handle[0]["api_keys"])
	rp := srv.Routes[0].Handle[2]
	require.Equal(t, map[string]any{"source": "ai_lb"}, rp["dynamic_upstreams"])
}

// TestRootCaddyfile: the root stack's config is the image's, with the
// deployment's node allowlist.
func TestRootCaddyfile(t *testing.T) {
	cfg := checkDeployCaddyfile(t, filepath.Join("Caddyfile"))
	require.Empty(t, cfg.Admin.Listen, "the image's CADDY_ADMIN (localhost:2019) sets the admin address")
	example := adaptCaddyfile(t, filepath.Join(repoRoot, "Caddyfile.example"))
	var want adaptedConfig
	require.NoError(t, json.Unmarshal(example, &want))
	require.Equal(t, want.Apps.HTTP, cfg.Apps.HTTP, "the same site as Caddyfile.example")
}

// checkDeployCaddyfile checks what every deployment's Caddyfile must do:
// adapt and validate, read the registry from $REDIS_URL, refuse nodes on the
// balancer's loopback (its admin API listens there) and at the names of
// the services that are not nodes, keep the admin API (when it names one)
// on loopback, and serve one site on :8000.
func checkDeployCaddyfile(t *testing.T, path string) adaptedConfig {
	t.Helper()
	var cfg adaptedConfig
	require.NoError(t, json.Unmarshal(adaptCaddyfile(t, path), &cfg))
	if cfg.Admin.Listen != "" {
		require.Regexp(t, `^(localhost|127\.0\.0\.1|\[::1\]):2019$`, cfg.Admin.Listen, "%s: admin", path)
		require.NotContains(t, cfg.Admin.Origins, "0.0.0.0:2019", path)
	}
	require.NotNil(t, cfg.Apps.AILB, path)
	require.Equal(t, "{env.REDIS_URL}", cfg.Apps.AILB.Redis, path)
	allow := cfg.Apps.AILB.NodeAllowlist
	require.NotNil(t, allow, "%s: node_allowlist", path)
	require.Subset(t, allow.DenyNetworks, []string{"127.0.0.0/8", "::1/128"}, "%s: the balancer's loopback is refused", path)
	require.Subset(t, allow.DenyHosts, []string{"localhost", "load_balancer", "redis"}, path)
	srv, ok := cfg.Apps.HTTP.Servers["srv0"]
	require.True(t, ok, path)
	require.Equal(t, []string{":8000"}, srv.Listen, path)
	require.Len(t, srv.Routes, 1, path)
	return cfg
}

// TestExampleCaddyfile: the config the image ships by default (and the
// JSON paths DEPLOYMENT.md patches through the admin API).
func TestExampleCaddyfile(t *testing.T) {
	var cfg adaptedConfig
	require.NoError(t, json.Unmarshal(adaptCaddyfile(t, filepath.Join(repoRoot, "Caddyfile.example")), &cfg))
	require.Empty(t, cfg.Admin.Listen, "the image sets the admin address with CADDY_ADMIN")
	require.NotNil(t, cfg.Apps.AILB)
	require.Equal(t, "ai-lb", cfg.Apps.AILB.Prefix) // PATCH /config/apps/ai_lb/prefix
	srv := cfg.Apps.HTTP.Servers["srv0"]            // /config/apps/http/servers/srv0/...
	require.Equal(t, []string{":8000"}, srv.Listen)
	require.NotEmpty(t, srv.Routes)
	require.Equal(t, "ai_lb", srv.Routes[0].Handle[0]["handler"]) // .../routes/0/handle/0
}
