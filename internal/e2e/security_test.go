package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ai-lb/ai-lb/registry"
	"github.com/ai-lb/ai-lb/simnode"
)

// egressGuard is the balancer's only way out in these tests: a forward
// proxy on loopback (reverse_proxy's `network_proxy url`) that passes
// requests for loopback addresses on and answers any other with 502
// without dialling it. A test can never reach a refused address, even if
// the allowlist failed, and can tell whether ai-lb tried to.
type egressGuard struct {
	URL string

	mu      sync.Mutex
	refused []string // targets asked for that are not loopback
	passed  int
}

func startEgressGuard(t *testing.T) *egressGuard {
	t.Helper()
	g := new(egressGuard)
	forward := &httputil.ReverseProxy{Rewrite: func(*httputil.ProxyRequest) {}, FlushInterval: -1}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		addr, err := netip.ParseAddr(r.URL.Hostname())
		g.mu.Lock()
		if r.Method == http.MethodConnect || err != nil || !addr.IsLoopback() {
			g.refused = append(g.refused, r.Method+" "+r.Host)
			g.mu.Unlock()
			http.Error(w, "refused by the test's egress guard", http.StatusBadGateway)
			return
		}
		g.passed++
		g.mu.Unlock()
		forward.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	g.URL = srv.URL
	return g
}

// counts returns the requests passed on and the targets refused.
func (g *egressGuard) counts() (int, []string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.passed, append([]string(nil), g.refused...)
}

// guardedCaddyfile is the ai_lb handler before reverse_proxy, whose
// every upstream connection goes through the guard, with globals added to
// the ai_lb global option and site options to the ai_lb handler.
func guardedCaddyfile(t *testing.T, port int, g *egressGuard, globals, site string) string {
	return testCaddyfile(t, fmt.Sprintf(`{
	ai_lb {
		redis {env.REDIS_URL}
		%s
	}
}

:8000 {
	ai_lb {
		%s
	}
	reverse_proxy {
		dynamic ai_lb
		lb_policy p2c
		# Through a proxy, Go names the target by the Host header.
		header_up Host {upstream_hostport}
		transport http {
			network_proxy url %s
		}
	}
}
`, globals, site, g.URL), port)
}

// loggedCaddyfile is a site on port with the given directives, whose
// Caddy logs everything (debug level) to logFile.
func loggedCaddyfile(t *testing.T, port int, logFile, site string) string {
	return testCaddyfile(t, fmt.Sprintf(`{
	log {
		output file %s
		level DEBUG
	}
	ai_lb {
		redis {env.REDIS_URL}
	}
}

:8000 {
	%s
}
`, logFile, site), port)
}

// getBody GETs url and returns the status and body.
func getBody(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(body)
}

// TestRefusedNodesNeitherListedNorRouted registers nodes at cloud metadata
// and link-local addresses (never started, never dialled) next to a real
// node, and checks ai-lb's own answers: /health and /v1/models leave them
// out, requests for their models are answered 404 by ai-lb itself, and
// requests for a model they share with the real node all go to the real
// node. The egress guard shows that no connection toward them was tried.
func TestRefusedNodesNeitherListedNorRouted(t *testing.T) {
	c := newCluster(t)
	c.addNode("good", simnode.Config{Models: []string{"sim-model"}})
	refused := map[string]registry.Node{
		"imds":       {URL: "http://169.254.169.254:80", Models: []string{"secret-model"}},
		"imds-v6":    {URL: "http://[fd00:ec2::254]:80", Models: []string{"secret-model"}},
		"imds-v4in6": {URL: "http://[::ffff:169.254.169.254]:80", Models: []string{"sim-model"}},
		"gce":        {URL: "http://metadata.google.internal:80", Models: []string{"sim-model", "secret-model"}},
		"linklocal":  {URL: "http://169.254.10.20:8000", Models: []string{"sim-model"}},
		"dotless":    {URL: "http://2852039166:80", Models: []string{"sim-model"}},
	}
	ctx := context.Background()
	for id, n := range refused {
		n.ID = id
		require.NoError(t, c.client.Register(ctx, n))
	}
	entries, err := c.client.List(ctx)
	require.NoError(t, err)
	require.Len(t, entries, 1+len(refused), "the registry holds them all")

	g := startEgressGuard(t)
	port := freePort(t)
	startCaddy(t, guardedCaddyfile(t, port, g, "", ""))
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	waitNodes(t, base, 1)

	// First ai-lb's own answers, which dial nothing.
	status, health := getBody(t, base+"/health")
	require.Equal(t, http.StatusOK, status)
	require.Contains(t, health, `"nodes_found":1,"models":1,`)
	status, models := getBody(t, base+"/v1/models")
	require.Equal(t, http.StatusOK, status)
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	require.NoError(t, json.Unmarshal([]byte(models), &list))
	require.Len(t, list.Data, 1, models)
	require.Equal(t, "sim-model", list.Data[0].ID)
	status, body := getBody(t, base+"/v1/models/secret-model")
	require.Equal(t, http.StatusNotFound, status, body)

	// A model only refused nodes list is unknown: 404 from ai-lb.
	status, _, body, err = chat(base, "secret-model")
	require.NoError(t, err)
	require.Equal(t, http.StatusNotFound, status, body)
	require.Contains(t, body, `"code":"model_not_found"`)

	// A model they share with the real node goes to the real node, always.
	for i := range 30 {
		status, node, body, err := chat(base, "sim-model")
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, status, "request %d: %s", i, body)
		require.Equal(t, "good", node)
	}
	passed, tried := g.counts()
	require.Equal(t, 30, passed)
	require.Empty(t, tried, "no connection toward a refused node was tried")
}

// TestNodeAllowlistOption: an allowlist that leaves out the only node's
// network leaves ai-lb with no node (503, nothing tried); deny_networks
// works the same way.
func TestNodeAllowlistOption(t *testing.T) {
	for name, option := range map[string]string{
		"networks":      "node_allowlist {\n networks 10.0.0.0/8\n }",
		"deny_networks": "node_allowlist {\n deny_networks 127.0.0.0/8 ::1/128\n }",
	} {
		t.Run(name, func(t *testing.T) {
			c := newCluster(t)
			c.addNode("loopback", simnode.Config{Models: []string{"sim-model"}})
			g := startEgressGuard(t)
			port := freePort(t)
			startCaddy(t, guardedCaddyfile(t, port, g, option, ""))
			base := fmt.Sprintf("http://127.0.0.1:%d", port)
			status, health := getBody(t, base+"/health")
			require.Equal(t, http.StatusServiceUnavailable, status, health)
			require.Contains(t, health, `"nodes_found":0,"models":0,`)
			require.Contains(t, health, `"registry_synced":true`)
			status, _, body, err := chat(base, "sim-model")
			require.NoError(t, err)
			require.Equal(t, http.StatusServiceUnavailable, status, body)
			passed, tried := g.counts()
			require.Zero(t, passed)
			require.Empty(t, tried)
		})
	}
}

// keyNode is an OpenAI-compatible node that records the Authorization
// headers it is sent.
type keyNode struct {
	mu   sync.Mutex
	auth []string
	srv  *httptest.Server
}

func startKeyNode(t *testing.T) *keyNode {
	n := new(keyNode)
	n.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.mu.Lock()
		n.auth = append(n.auth, r.Header.Values("Authorization")...)
		n.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}`)
	}))
	t.Cleanup(n.srv.Close)
	return n
}

// TestAPIKeysEndToEnd: with api_keys from a file, the environment and the
// registry, ai-lb accepts each key, refuses others with OpenAI's 401, keeps
// /health open, follows key changes in the registry, and no key reaches a
// node, Caddy's logs or its access log.
func TestAPIKeysEndToEnd(t *testing.T) {
	c := newCluster(t)
	node := startKeyNode(t)
	require.NoError(t, c.client.Register(context.Background(), registry.Node{ID: "n", URL: node.srv.URL, Models: []string{"m"}}))

	const (
		fileKey     = "sk-e2e-file-0123456789abcdef"
		envKey      = "sk-e2e-env-0123456789abcdef"
		registryKey = "sk-e2e-registry-0123456789abcdef"
		wrongKey    = "sk-e2e-wrong-0123456789abcdef"
	)
	dir := t.TempDir()
	keyFile, logFile, accessLog := filepath.Join(dir, "keys"), filepath.Join(dir, "caddy.log"), filepath.Join(dir, "access.log")
	require.NoError(t, os.WriteFile(keyFile, []byte(fileKey+"\n"), 0o600))
	t.Setenv("AI_LB_TEST_API_KEYS", envKey)

	port := freePort(t)
	startCaddy(t, loggedCaddyfile(t, port, logFile, fmt.Sprintf(`
	log {
		output file %s
	}
	ai_lb {
		api_keys {
			file %s
			env AI_LB_TEST_API_KEYS
			registry
			refresh 100ms
		}
	}
	reverse_proxy {
		dynamic ai_lb
	}`, accessLog, keyFile)))
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	waitNodes(t, base, 1)

	send := func(key string) (int, string) {
		req, err := http.NewRequest(http.MethodPost, base+"/v1/chat/completions",
			strings.NewReader(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`))
		require.NoError(t, err)
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(body)
	}
	status, body := send("")
	require.Equal(t, http.StatusUnauthorized, status)
	require.JSONEq(t, `{"error":{"message":"You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).","type":"invalid_request_error","param":null,"code":null}}`, body)
	status, body = send(wrongKey)
	require.Equal(t, http.StatusUnauthorized, status)
	require.JSONEq(t, `{"error":{"message":"Incorrect API key provided.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}`, body)
	for _, key := range []string{fileKey, envKey} {
		status, body = send(key)
		require.Equal(t, http.StatusOK, status, body)
	}
	status, _ = getBody(t, base+"/health")
	require.Equal(t, http.StatusOK, status, "/health stays open")
	status, _ = getBody(t, base+"/v1/models")
	require.Equal(t, http.StatusUnauthorized, status)

	// Registry keys: added, then removed, without a reload.
	rdb := c.redis.Client(t)
	set := "{" + registry.DefaultPrefix + "}:api_keys"
	status, _ = send(registryKey)
	require.Equal(t, http.StatusUnauthorized, status)
	require.NoError(t, rdb.SAdd(context.Background(), set, registry.APIKeyDigest(registryKey)).Err())
	eventually(t, 5*time.Second, func() error {
		if status, body := send(registryKey); status != http.StatusOK {
			return fmt.Errorf("%d %s", status, body)
		}
		return nil
	})
	require.NoError(t, rdb.SRem(context.Background(), set, registry.APIKeyDigest(registryKey)).Err())
	eventually(t, 5*time.Second, func() error {
		if status, _ := send(registryKey); status != http.StatusUnauthorized {
			return fmt.Errorf("still %d", status)
		}
		return nil
	})

	node.mu.Lock()
	require.Empty(t, node.auth, "the node never saw a client's key")
	node.mu.Unlock()

	// The access log has every request, with the header redacted; no log
	// has a key.
	eventually(t, 5*time.Second, func() error {
		raw, err := os.ReadFile(accessLog)
		if err != nil || !strings.Contains(string(raw), `"status":401`) || !strings.Contains(string(raw), `"Authorization":["REDACTED"]`) {
			return fmt.Errorf("access log: %v\n%s", err, raw)
		}
		return nil
	})
	for _, path := range []string{logFile, accessLog} {
		raw, err := os.ReadFile(path)
		require.NoError(t, err)
		for _, key := range []string{fileKey, envKey, registryKey, wrongKey} {
			require.NotContains(t, string(raw), key, path)
		}
	}
	raw, err := os.ReadFile(logFile)
	require.NoError(t, err)
	require.Contains(t, string(raw), "API keys required", "the log tells that keys are checked")
}

// TestRedisPasswordNeverLogged: the balancer logs the registry's URL with
// its password hidden, and a Redis that refuses the password is logged
// without it.
func TestRedisPasswordNeverLogged(t *testing.T) {
	c := newCluster(t) // a Redis without ACL users: it refuses the credentials
	const password = "hunter2-registry-secret"
	t.Setenv("REDIS_URL", strings.Replace(c.redis.URL(), "redis://", "redis://ai-lb:"+password+"@", 1))
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	startCaddy(t, loggedCaddyfile(t, freePort(t), logFile, "ai_lb"))
	eventually(t, 10*time.Second, func() error {
		raw, err := os.ReadFile(logFile)
		if err != nil || !strings.Contains(string(raw), "redis unreachable") {
			return fmt.Errorf("no outage logged yet: %v", err)
		}
		return nil
	})
	raw, err := os.ReadFile(logFile)
	require.NoError(t, err)
	require.Contains(t, string(raw), "redis://ai-lb:xxxxx@127.0.0.1:")
	require.NotContains(t, string(raw), password)
}
