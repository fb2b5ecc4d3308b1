package e2e

import (
	"fmt"
	"io"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/ai-lb/ai-lb/internal/testredis"
)

// TestAdminAddressFromEnv: the image sets no `admin` option and relies on
// Caddy taking its admin address from $CADDY_ADMIN; the binary built from
// this module does.
func TestAdminAddressFromEnv(t *testing.T) {
	rs := testredis.Start(t)
	port, admin := freePort(t), freePort(t)
	caddyfile := fmt.Sprintf(`{
	http_port %d
	https_port %d
	grace_period 1ns
	skip_install_trust
	ai_lb {
		redis %s
	}
}
:%d {
	ai_lb
}
`, freePort(t), freePort(t), rs.URL(), port)
	startCaddyProcess(t, caddyfile, port, fmt.Sprintf("CADDY_ADMIN=127.0.0.1:%d", admin))

	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/config/apps/ai_lb", admin))
	require.NoError(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	require.Contains(t, string(body), rs.URL())
}
