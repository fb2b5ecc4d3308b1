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
			Redis  string `json:"redis"`
			Prefix string `json:"prefix"`
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
	var cfg adaptedConfig
	require.NoError(t, json.Unmarshal(adaptCaddyfile(t, filepath.Join("openclaw", "Caddyfile")), &cfg))

	// The admin API listens on the container network, and lets `caddy
	// reload` in (inside the container, and --address load_balancer:2019).
	require.Equal(t, "0.0.0.0:2019", cfg.Admin.Listen)
	require.Subset(t, cfg.Admin.Origins, []string{"load_balancer:2019", "0.0.0.0:2019"})

	require.NotNil(t, cfg.Apps.AILB)
	require.Equal(t, "{env.REDIS_URL}", cfg.Apps.AILB.Redis)

	// One site on :8000 that runs ai_lb -> hedge -> reverse_proxy.
	srv, ok := cfg.Apps.HTTP.Servers["srv0"]
	require.True(t, ok)
	require.Equal(t, []string{":8000"}, srv.Listen)
	require.Len(t, srv.Routes, 1)
	var handlers []string
	for _, h := range srv.Routes[0].Handle {
		handlers = append(handlers, fmt.Sprint(h["handler"]))
	}
	require.Equal(t, []string{"ai_lb", "hedge", "reverse_proxy"}, handlers)
	rp := srv.Routes[0].Handle[2]
	require.Equal(t, map[string]any{"source": "ai_lb"}, rp["dynamic_upstreams"])
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
