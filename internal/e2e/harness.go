// Package e2e holds ai-lb's end-to-end tests: real redis-server processes,
// simulated LLM nodes on loopback listeners, and Caddy configured by
// Caddyfile or JSON, in the test process (caddytest) or as a process of the
// ai-lb binary. This file is the harness the tests share.
package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
	"github.com/stretchr/testify/require"

	_ "github.com/ai-lb/ai-lb"
	"github.com/ai-lb/ai-lb/internal/testredis"
	"github.com/ai-lb/ai-lb/registry"
	"github.com/ai-lb/ai-lb/simnode"
)

// root is the repository root, relative to this package's directory, where
// go test runs its tests.
const root = "../.."

// repoPath returns the path of a file of the repository.
func repoPath(name string) string { return filepath.Join(root, name) }

var (
	buildOnce  sync.Once
	builtPath  string
	buildError error
	buildDir   string
)

// binary returns the ai-lb binary, for tests that run ai-lb as a process
// (caddytest runs one Caddy per test process): $AI_LB_BINARY when CI has
// built it with xcaddy (scripts/build.sh), else built once per test binary,
// on first use. Such tests need a build, so they skip under -short.
func binary(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("runs the ai-lb binary: skipped under -short")
	}
	buildOnce.Do(func() {
		if prebuilt := os.Getenv("AI_LB_BINARY"); prebuilt != "" {
			builtPath = prebuilt
			return
		}
		buildDir, buildError = os.MkdirTemp("", "ai-lb-test")
		if buildError != nil {
			return
		}
		builtPath = filepath.Join(buildDir, "ai-lb")
		out, err := exec.Command("go", "build", "-o", builtPath, "github.com/ai-lb/ai-lb/cmd/ai-lb").CombinedOutput()
		if err != nil {
			buildError = fmt.Errorf("building ai-lb: %v\n%s", err, out)
		}
	})
	require.NoError(t, buildError)
	return builtPath
}

// removeBuild removes the binary that binary built, if any.
func removeBuild() {
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
}

// adminPort is the admin port of the test process's Caddy: caddytest's 2999
// unless AI_LB_TEST_ADMIN_PORT says otherwise, so that two test processes
// of this package can run side by side.
var adminPort = 2999

func init() {
	if p, err := strconv.Atoi(os.Getenv("AI_LB_TEST_ADMIN_PORT")); err == nil {
		adminPort = p
	}
}

// cluster is one test's Redis, simulated nodes and registry client.
type cluster struct {
	t      *testing.T
	redis  *testredis.Server
	client *registry.Client
	nodes  []*testNode
}

// testNode is a simulated LLM node on a real loopback listener.
type testNode struct {
	*simnode.Node
	ID  string
	URL string
	srv *httptest.Server
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	rs := testredis.Start(t)
	client, err := registry.Open(rs.URL(), "")
	require.NoError(t, err)
	t.Cleanup(func() { client.Close() })
	t.Setenv("REDIS_URL", rs.URL())
	return &cluster{t: t, redis: rs, client: client}
}

// addNode starts a simulated node and registers it (TTL 15s).
func (c *cluster) addNode(id string, cfg simnode.Config) *testNode {
	c.t.Helper()
	n := c.startNode(id, cfg)
	c.register(n, registry.DefaultTTL)
	return n
}

// startNode starts a simulated node without registering it.
func (c *cluster) startNode(id string, cfg simnode.Config) *testNode {
	c.t.Helper()
	cfg.ID = id
	if cfg.TTFT == 0 {
		cfg.TTFT = 5 * time.Millisecond
	}
	if cfg.InterTokenLatency == 0 {
		cfg.InterTokenLatency = time.Millisecond
	}
	if cfg.Tokens == 0 {
		cfg.Tokens = 8
	}
	node := simnode.New(cfg)
	srv := httptest.NewServer(node)
	c.t.Cleanup(srv.Close)
	n := &testNode{Node: node, ID: id, URL: srv.URL, srv: srv}
	c.nodes = append(c.nodes, n)
	return n
}

func (c *cluster) register(n *testNode, ttl time.Duration) {
	c.t.Helper()
	require.NoError(c.t, c.client.Register(context.Background(), registry.Node{
		ID: n.ID, URL: n.URL, Models: n.Config().Models, TTLMillis: ttl.Milliseconds(),
	}))
}

// exampleCaddyfile is Caddyfile.example with caddytest's global options
// added and the site on port.
func exampleCaddyfile(t testing.TB, port int) string {
	t.Helper()
	raw, err := os.ReadFile(repoPath("Caddyfile.example"))
	require.NoError(t, err)
	return testCaddyfile(t, string(raw), port)
}

// testCaddyfile adds caddytest's global options to a Caddyfile whose first
// block is its global options, and moves its :8000 site to port.
func testCaddyfile(t testing.TB, caddyfile string, port int) string {
	t.Helper()
	i := strings.Index(caddyfile, "{\n")
	require.GreaterOrEqual(t, i, 0, "the Caddyfile starts with a global options block")
	globals := fmt.Sprintf("{\n\tadmin localhost:%d\n\thttp_port 9080\n\thttps_port 9443\n\tgrace_period 1ns\n\tskip_install_trust\n", adminPort)
	caddyfile = caddyfile[:i] + globals + caddyfile[i+2:]
	return strings.Replace(caddyfile, ":8000", fmt.Sprintf(":%d", port), 1)
}

// startCaddy loads a Caddyfile into the test process's Caddy and returns the
// site's base URL.
func startCaddy(t testing.TB, caddyfile string) *caddytest.Tester {
	t.Helper()
	if testing.Short() {
		t.Skip("runs Caddy with its admin API: skipped under -short")
	}
	tester := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{AdminPort: adminPort})
	tester.InitServer(caddyfile, "caddyfile")
	require.False(t, t.Failed(), "config did not load")
	return tester
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// eventually retries f until it returns nil or the (generous) deadline
// passes; it returns how long that took.
func eventually(t *testing.T, timeout time.Duration, f func() error) time.Duration {
	t.Helper()
	start := time.Now()
	var err error
	for time.Since(start) < timeout {
		if err = f(); err == nil {
			return time.Since(start)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("condition not met after %v: %v", timeout, err)
	return 0
}

// chat sends a non-streamed chat completion and returns the status, the
// answering node (X-Sim-Node) and the body.
func chat(base, model string) (int, string, string, error) {
	body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"hi"}]}`, model)
	resp, err := http.Post(base+"/v1/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		return 0, "", "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("X-Sim-Node"), string(b), err
}

// sseEvents reads an SSE body into its data payloads.
func sseEvents(t *testing.T, r io.Reader) []string {
	t.Helper()
	var events []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			events = append(events, data)
		}
	}
	require.NoError(t, sc.Err())
	return events
}

// ourGoroutines returns the stacks of goroutines running ai-lb or go-redis
// code, other than tests themselves.
func ourGoroutines() []string {
	buf := make([]byte, 8<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var ours []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "testing.tRunner") || strings.Contains(g, "testing.(*M)") {
			continue
		}
		if strings.Contains(g, "github.com/ai-lb/ai-lb/") || strings.Contains(g, "github.com/redis/go-redis/") {
			ours = append(ours, g)
		}
	}
	return ours
}

// unloadAndRequireNoGoroutines loads an empty config and waits until no
// goroutine of ours is left.
func unloadAndRequireNoGoroutines(t *testing.T) {
	t.Helper()
	caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{AdminPort: adminPort}).
		InitServer(fmt.Sprintf(`{"admin":{"listen":"localhost:%d"}}`, adminPort), "json")
	eventually(t, 10*time.Second, func() error {
		if g := ourGoroutines(); len(g) > 0 {
			return fmt.Errorf("%d goroutines left, first:\n%s", len(g), g[0])
		}
		return nil
	})
}
