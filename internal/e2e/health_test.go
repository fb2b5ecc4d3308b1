package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ai-lb/ai-lb/registry"
)

// nodeTokens is how many tokens the node processes of these tests send.
const nodeTokens = 8

// nodeProcess is a simulated node running as its own process
// (`ai-lb simnode --register`), so that a test can SIGKILL it.
type nodeProcess struct {
	c    *cluster
	id   string
	port int
	args []string
	cmd  *exec.Cmd
	out  *syncBuffer
}

// startNodeProcess runs a registered simulated node on port (0: a free
// one) with extra simnode flags, and waits until the registry lists it.
func (c *cluster) startNodeProcess(id string, port int, flags ...string) *nodeProcess {
	c.t.Helper()
	if port == 0 {
		port = freePort(c.t)
	}
	p := &nodeProcess{c: c, id: id, port: port}
	p.args = append([]string{"ai-lb", "simnode", "--listen", fmt.Sprintf("127.0.0.1:%d", port),
		"--id", id, "--register", "--redis", c.redis.URL(), "--ttl", "15s",
		"--ttft", "20ms", "--itl", "5ms", "--tokens", fmt.Sprint(nodeTokens)}, flags...)
	p.start()
	c.t.Cleanup(p.kill)
	return p
}

func (p *nodeProcess) start() {
	t := p.c.t
	t.Helper()
	p.out = new(syncBuffer)
	p.cmd = exec.Command(binary(t), p.args...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	require.NoError(t, p.cmd.Start())
	eventually(t, 15*time.Second, func() error {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/health", p.port))
		if err != nil {
			return err
		}
		resp.Body.Close()
		entries, err := p.c.client.List(context.Background())
		if err != nil {
			return err
		}
		for _, e := range entries {
			if e.ID == p.id && e.Live {
				return nil
			}
		}
		return fmt.Errorf("%s not registered yet", p.id)
	})
}

// kill stops the node at once (SIGKILL): no deregistration, no goodbye.
func (p *nodeProcess) kill() {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Kill()
	_ = p.cmd.Wait()
	p.cmd = nil
}

// served is how many requests the node has completed, from its own count.
func (p *nodeProcess) served(t *testing.T) int {
	var stats struct {
		Completed int `json:"completed"`
	}
	getJSON(t, fmt.Sprintf("http://127.0.0.1:%d/sim/stats", p.port), &stats)
	return stats.Completed
}

// result is one request of a load run.
type result struct {
	start time.Time
	answer
	err error
}

// openLoad sends streamed chat completions to the bases in turn at rate
// per second until stop is closed, each in its own goroutine, and returns
// every result once all have ended.
func openLoad(bases []string, rate int, stop <-chan struct{}) []result {
	var mu sync.Mutex
	var results []result
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-stop:
			wg.Wait()
			return results
		case <-tick.C:
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
			defer cancel()
			start := time.Now()
			a, err := post(ctx, bases[i%len(bases)], fmt.Sprintf("load-%d", i), chatBody("sim-model", true, "hi"))
			mu.Lock()
			results = append(results, result{start: start, answer: a, err: err})
			mu.Unlock()
		}()
	}
}

// loadFor runs openLoad for d and returns its results.
func loadFor(bases []string, rate int, d time.Duration) []result {
	stop := make(chan struct{})
	time.AfterFunc(d, func() { close(stop) })
	return openLoad(bases, rate, stop)
}

// untilServed runs load on bases until node p has completed a request
// more, and returns how long that took; every request must succeed.
func (p *nodeProcess) untilServed(t *testing.T, bases []string) time.Duration {
	before := p.served(t)
	stop := make(chan struct{})
	done := make(chan []result)
	go func() { done <- openLoad(bases, 20, stop) }()
	took := eventually(t, 30*time.Second, func() error {
		if p.served(t) > before {
			return nil
		}
		return fmt.Errorf("%s has served nothing", p.id)
	})
	close(stop)
	for _, r := range <-done {
		require.NoError(t, r.complete())
	}
	return took
}

// startExample starts Caddyfile.example in the test process on a free
// port and waits until it sees n nodes; it returns the base URL.
func startExample(t *testing.T, n int) string {
	port := freePort(t)
	startCaddy(t, exampleCaddyfile(t, port))
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	waitNodes(t, base, n)
	return base
}

// complete reports whether a result is a whole, clean answer of one node.
func (r result) complete() error {
	if r.err != nil {
		return r.err
	}
	if r.status != http.StatusOK {
		return fmt.Errorf("status %d: %s", r.status, r.body)
	}
	return checkStream(r.body, r.simNode(), nodeTokens)
}

// TestNodeKilledUnderLoad: SIGKILL a registered node under streamed load
// on two replicas (this process's Caddy and a Caddy process) on one Redis.
// Only streams running on it may be cut, and never end in a clean [DONE];
// every request started after the kill succeeds; the node, restarted,
// gets traffic again.
func TestNodeKilledUnderLoad(t *testing.T) {
	c := newCluster(t)
	nodes := []*nodeProcess{
		c.startNodeProcess("node-a", 0, "--itl", "50ms"),
		c.startNodeProcess("node-b", 0, "--itl", "50ms"),
		c.startNodeProcess("node-c", 0, "--itl", "50ms"),
	}
	port, port2 := freePort(t), freePort(t)
	startCaddy(t, exampleCaddyfile(t, port))
	startCaddyProcess(t, processCaddyfile(t, port2), port2)
	bases := []string{fmt.Sprintf("http://127.0.0.1:%d", port), fmt.Sprintf("http://127.0.0.1:%d", port2)}
	for _, b := range bases {
		waitNodes(t, b, 3)
	}

	stop := make(chan struct{})
	done := make(chan []result)
	go func() { done <- openLoad(bases, 20, stop) }()
	time.Sleep(2 * time.Second)
	killed := time.Now()
	nodes[0].kill()
	time.Sleep(4 * time.Second)
	close(stop)
	results := <-done

	var cut, after int
	for _, r := range results {
		err := r.complete()
		if r.start.After(killed) {
			after++
			require.NoError(t, err, "a request started %v after the kill failed", r.start.Sub(killed))
			continue
		}
		if err != nil {
			// Cut on the killed node: an error or a stream that stops,
			// never one that ends as if whole.
			require.NotContains(t, r.body, "[DONE]", "a cut stream ended with [DONE]: %v", err)
			cut++
		}
	}
	t.Logf("%d requests, %d started after the kill, %d cut by it", len(results), after, cut)
	require.Greater(t, after, 50)

	// Restarted, the node is probed and gets traffic again.
	nodes[0].start()
	t.Logf("the restarted node got traffic after %v", nodes[0].untilServed(t, bases))
}

// TestNodeFailingFast: a node answering 503 at once to everything is
// ejected; at least 99%% of requests succeed (all of them, in practice);
// healed, it gets traffic again within 15 s.
func TestNodeFailingFast(t *testing.T) {
	c := newCluster(t)
	bad := c.startNodeProcess("node-bad", 0, "--fail-rate", "1", "--fail-status", "503", "--ttft", "2ms")
	c.startNodeProcess("node-b", 0)
	c.startNodeProcess("node-c", 0)
	base := startExample(t, 3)
	results := loadFor([]string{base}, 20, 8*time.Second)
	failed := 0
	for _, r := range results {
		if r.complete() != nil {
			failed++
		}
	}
	t.Logf("%d of %d requests failed", failed, len(results))
	require.LessOrEqual(t, failed*100, len(results), "more than 1%% failed")

	postJSON(t, fmt.Sprintf("http://127.0.0.1:%d/sim/config", bad.port), `{"fail_rate":0}`)
	took := bad.untilServed(t, []string{base})
	t.Logf("the healed node got traffic after %v", took)
	require.Less(t, took, 15*time.Second)
}

// TestNodeHung: a node that accepts connections and never answers. Every
// request ends within the hedge's bounds, served by another node.
func TestNodeHung(t *testing.T) {
	c := newCluster(t)
	c.startNodeProcess("node-b", 0)
	c.startNodeProcess("node-c", 0)
	hung, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { hung.Close() })
	var conns sync.WaitGroup
	go func() {
		for {
			conn, err := hung.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() { // read and never answer, until the balancer hangs up
				defer conns.Done()
				buf := make([]byte, 4096)
				for {
					if _, err := conn.Read(buf); err != nil {
						conn.Close()
						return
					}
				}
			}()
		}
	}()
	require.NoError(t, c.client.Register(context.Background(), registry.Node{
		ID: "node-hung", URL: "http://" + hung.Addr().String(), Models: []string{"sim-model"},
		TTLMillis: registry.DefaultTTL.Milliseconds(),
	}))
	base := startExample(t, 3)
	results := loadFor([]string{base}, 20, 6*time.Second)
	// A request that met the hung node moves on after the hedge delay (1 s
	// until the adaptive delay has samples) when the hedge budget allows,
	// and after stream_header_timeout (30 s) at the latest.
	var slowest time.Duration
	slow := 0
	for _, r := range results {
		require.NoError(t, r.complete())
		slowest = max(slowest, r.took)
		if r.took > 3*time.Second {
			slow++
		}
	}
	t.Logf("slowest request: %v; %d of %d over 3 s", slowest, slow, len(results))
	require.Less(t, slowest, 32*time.Second)
	require.LessOrEqual(t, slow*20, len(results), "more than 5%% of requests waited on the hung node")
}

// TestFullNodes: six nodes of max_concurrency 1, five of them busy with
// long streams; requests meanwhile go to the free one, none gets 503.
func TestFullNodes(t *testing.T) {
	c := newCluster(t)
	for i := range 6 {
		c.startNodeProcess(fmt.Sprintf("node-%d", i), 0, "--max-concurrency", "1", "--tokens", "200", "--itl", "20ms")
	}
	base := startExample(t, 6)

	// Five long streams (200 tokens, 20 ms apart: 4 s) fill five nodes.
	var long sync.WaitGroup
	for i := range 5 {
		long.Add(1)
		go func() {
			defer long.Done()
			a, err := post(context.Background(), base, fmt.Sprintf("long-%d", i), chatBody("sim-model", true, "long"))
			if err != nil || a.status != http.StatusOK {
				t.Errorf("long stream %d: %v %d %s", i, err, a.status, a.body)
			}
		}()
	}
	time.Sleep(500 * time.Millisecond)
	short := `{"model":"sim-model","max_tokens":2,"messages":[{"role":"user","content":"short"}]}`
	for i := range 60 {
		a, err := post(context.Background(), base, fmt.Sprintf("short-%d", i), short)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, a.status, "request %d: %s", i, a.body)
	}
	long.Wait()
}

// getJSON decodes a GET answer into v.
func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.NoError(t, json.NewDecoder(resp.Body).Decode(v))
}

// postJSON posts a JSON body and requires a 2xx answer.
func postJSON(t *testing.T, url, body string) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	require.NoError(t, err)
	resp.Body.Close()
	require.Less(t, resp.StatusCode, 300, "POST %s", url)
}
