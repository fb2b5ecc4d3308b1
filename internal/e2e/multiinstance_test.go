package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ai-lb/ai-lb/registry"
	"github.com/ai-lb/ai-lb/simnode"
)

// Propagation polling: one small request per instance every pollInterval,
// and a node counts as gone once avoidStreak requests in a row avoid it.
const (
	pollInterval = 5 * time.Millisecond
	avoidStreak  = 20
)

// TestTwoInstances runs two ai-lb replicas on one Redis (the test process's
// Caddy and a subprocess of the built binary, both with Caddyfile.example)
// and checks that registrations, deregistrations and TTL expiries reach
// both. It measures how long each took to show in routing and logs it as
// PROPAGATION lines (also appended to $AI_LB_PROPAGATION_OUT when set).
func TestTwoInstances(t *testing.T) {
	c := newCluster(t)
	portA := freePort(t)
	startCaddy(t, exampleCaddyfile(t, portA))
	portB := freePort(t)
	startCaddyProcess(t, processCaddyfile(t, portB), portB, "REDIS_URL="+c.redis.URL())
	insts := []*lbInstance{
		newInstance(t, "A", fmt.Sprintf("http://127.0.0.1:%d", portA)),
		newInstance(t, "B", fmt.Sprintf("http://127.0.0.1:%d", portB)),
	}
	for _, in := range insts {
		in.waitSynced(t)
		status, _, err := in.route()
		require.NoError(t, err)
		require.Equal(t, http.StatusServiceUnavailable, status, "instance %s routes with no node registered", in.name)
	}

	// Nodes answer at once, so that a poll's duration is mostly routing.
	fast := simnode.Config{TTFT: simnode.NoDelay, InterTokenLatency: simnode.NoDelay, Tokens: 1}
	var report []string
	record := func(ds []time.Duration, event, extra string) {
		for i, d := range ds {
			report = append(report, fmt.Sprintf("PROPAGATION instance=%s event=%s ms=%.1f%s",
				insts[i].name, event, float64(d.Microseconds())/1000, extra))
		}
	}

	// a. A registration reaches both instances.
	n1 := c.startNode("node-1", fast)
	c.register(n1, registry.DefaultTTL)
	since := time.Now()
	record(onEach(t, insts, func(in *lbInstance) (time.Duration, error) {
		return in.untilRouted(since, "node-1", 15*time.Second)
	}), "register", "")

	// b. Once node-2 serves too, a deregistration of node-1 reaches both
	// instances, and no request fails meanwhile.
	n2 := c.startNode("node-2", fast)
	c.register(n2, time.Minute)
	since = time.Now()
	onEach(t, insts, func(in *lbInstance) (time.Duration, error) {
		return in.untilRouted(since, "node-2", 15*time.Second)
	})
	ok, err := c.client.Deregister(t.Context(), "node-1")
	require.NoError(t, err)
	require.True(t, ok, "node-1 was not registered")
	since = time.Now()
	record(onEach(t, insts, func(in *lbInstance) (time.Duration, error) {
		return in.untilAvoided(since, "node-1", 15*time.Second)
	}), "deregister", "")

	// c. A node registered once with a short TTL is routed to by both
	// instances, then leaves both about one TTL later (never before).
	const ttl = 2 * time.Second
	n3 := c.startNode("node-3", fast)
	c.register(n3, ttl)
	since = time.Now()
	expired := onEach(t, insts, func(in *lbInstance) (time.Duration, error) {
		if _, err := in.untilRouted(since, "node-3", ttl); err != nil {
			return 0, err
		}
		return in.untilAvoided(since, "node-3", 15*time.Second)
	})
	for i, d := range expired {
		require.GreaterOrEqual(t, d, ttl-250*time.Millisecond,
			"instance %s dropped node-3 %v after registering it, before its TTL of %v", insts[i].name, d, ttl)
	}
	record(expired, "expire", fmt.Sprintf(" ttl_ms=%d", ttl.Milliseconds()))

	for _, line := range report {
		t.Log(line)
	}
	if path := os.Getenv("AI_LB_PROPAGATION_OUT"); path != "" {
		f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		require.NoError(t, err)
		_, err = io.WriteString(f, strings.Join(report, "\n")+"\n")
		require.NoError(t, err)
		require.NoError(t, f.Close())
	}
}

// lbInstance is one ai-lb replica under test.
type lbInstance struct {
	name   string
	base   string
	client *http.Client
}

func newInstance(t *testing.T, name, base string) *lbInstance {
	transport := &http.Transport{MaxIdleConnsPerHost: 4}
	t.Cleanup(transport.CloseIdleConnections)
	return &lbInstance{name: name, base: base, client: &http.Client{Transport: transport, Timeout: 10 * time.Second}}
}

// waitSynced waits until the instance has read the registry.
func (in *lbInstance) waitSynced(t *testing.T) {
	t.Helper()
	eventually(t, 30*time.Second, func() error {
		resp, err := in.client.Get(in.base + "/health")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil || !strings.Contains(string(body), `"registry_synced":true`) {
			return fmt.Errorf("instance %s health: %s %v", in.name, body, err)
		}
		return nil
	})
}

// pollBody is the chat completion the propagation polls send.
const pollBody = `{"model":"sim-model","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}`

// route sends one small non-streamed chat completion and returns the
// status and the answering node.
func (in *lbInstance) route() (int, string, error) {
	resp, err := in.client.Post(in.base+"/v1/chat/completions", "application/json", strings.NewReader(pollBody))
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, resp.Header.Get("X-Sim-Node"), err
}

// untilRouted polls until a request is answered by node id, and returns the
// time from since to the end of that request.
func (in *lbInstance) untilRouted(since time.Time, id string, timeout time.Duration) (time.Duration, error) {
	var last string
	for {
		next := time.Now().Add(pollInterval)
		status, node, err := in.route()
		at := time.Since(since)
		if err == nil && status == http.StatusOK && node == id {
			return at, nil
		}
		last = fmt.Sprintf("status %d from %q, error %v", status, node, err)
		if at > timeout {
			return 0, fmt.Errorf("instance %s: no request reached %s within %v; last: %s", in.name, id, timeout, last)
		}
		time.Sleep(time.Until(next))
	}
}

// untilAvoided polls until avoidStreak requests in a row are answered by
// other nodes than id, and returns the time from since to the end of the
// first of them. Every request must succeed.
func (in *lbInstance) untilAvoided(since time.Time, id string, timeout time.Duration) (time.Duration, error) {
	streak := 0
	var streakStart time.Duration
	for {
		next := time.Now().Add(pollInterval)
		status, node, err := in.route()
		at := time.Since(since)
		if err != nil || status != http.StatusOK {
			return 0, fmt.Errorf("instance %s: request failed after %v: status %d, error %v", in.name, at, status, err)
		}
		if node == id {
			streak = 0
		} else {
			if streak == 0 {
				streakStart = at
			}
			if streak++; streak == avoidStreak {
				return streakStart, nil
			}
		}
		if at > timeout {
			return 0, fmt.Errorf("instance %s: still routing to %s after %v", in.name, id, timeout)
		}
		time.Sleep(time.Until(next))
	}
}

// onEach runs f for every instance at once and returns its results in
// order; it fails the test if any f failed.
func onEach(t *testing.T, insts []*lbInstance, f func(*lbInstance) (time.Duration, error)) []time.Duration {
	t.Helper()
	res := make([]time.Duration, len(insts))
	errs := make([]error, len(insts))
	var wg sync.WaitGroup
	for i, in := range insts {
		wg.Go(func() { res[i], errs[i] = f(in) })
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	return res
}

// processCaddyfile is Caddyfile.example for a Caddy subprocess: its own
// admin, HTTP and HTTPS ports, and the site on port.
func processCaddyfile(t *testing.T, port int) string {
	t.Helper()
	raw, err := os.ReadFile(repoPath("Caddyfile.example"))
	require.NoError(t, err)
	caddyfile := string(raw)
	i := strings.Index(caddyfile, "{\n")
	require.GreaterOrEqual(t, i, 0, "the Caddyfile starts with a global options block")
	globals := fmt.Sprintf("{\n\tadmin localhost:%d\n\thttp_port %d\n\thttps_port %d\n\tgrace_period 1ns\n\tskip_install_trust\n",
		freePort(t), freePort(t), freePort(t))
	caddyfile = caddyfile[:i] + globals + caddyfile[i+2:]
	return strings.Replace(caddyfile, ":8000", fmt.Sprintf(":%d", port), 1)
}

// startCaddyProcess runs the ai-lb binary with a Caddyfile whose site
// listens on port, with env added to the environment, and waits until the
// site answers. The process is stopped when the test ends; its output is
// logged if the test failed.
func startCaddyProcess(t *testing.T, caddyfile string, port int, env ...string) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "Caddyfile")
	require.NoError(t, os.WriteFile(path, []byte(caddyfile), 0o644))
	bin := binary(t)
	cmd := exec.Command(bin, "run", "--config", path, "--adapter", "caddyfile")
	// Its own config and data directories: no autosave.json or storage
	// shared with any other Caddy.
	cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+filepath.Join(dir, "config"), "XDG_DATA_HOME="+filepath.Join(dir, "data"))
	cmd.Env = append(cmd.Env, env...)
	output := new(syncBuffer)
	cmd.Stdout, cmd.Stderr = output, output
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			// A clean shutdown has nothing to wait for (grace_period 1ns).
			t.Errorf("%s did not exit within 10s of SIGINT; killed", filepath.Base(bin))
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("----------- output of %s -----------\n%s", filepath.Base(bin), output.String())
		}
	})
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	eventually(t, 30*time.Second, func() error {
		select {
		case err := <-exited:
			exited <- err // for the cleanup
			t.Fatalf("%s exited early: %v\n%s", bin, err, output.String())
		default:
		}
		resp, err := http.Get(base + "/health")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
