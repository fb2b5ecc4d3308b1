package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ai-lb/ai-lb/registry"
	"github.com/ai-lb/ai-lb/simnode"
)

// reconfigCaddyfile is a hedged site with a real grace period, so that a
// reload lets in-flight streams finish on the old config.
func reconfigCaddyfile(port int, prefix, policy, hedge string) string {
	return fmt.Sprintf(`{
	admin localhost:%d
	http_port 9080
	https_port 9443
	grace_period 30s
	skip_install_trust
	ai_lb {
		redis {env.REDIS_URL}
		prefix %s
	}
}

:%d {
	ai_lb
	hedge {
		%s
	}
	reverse_proxy {
		dynamic ai_lb
		lb_policy %s
	}
}
`, adminPort, prefix, port, hedge, policy)
}

// adminDo sends a request to the admin API and fails the test on a non-200.
func adminDo(t *testing.T, method, path, contentType, body string) {
	t.Helper()
	req, err := http.NewRequest(method, fmt.Sprintf("http://localhost:%d%s", adminPort, path), strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", contentType)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	msg, _ := io.ReadAll(resp.Body)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s %s: %s", method, path, msg)
}

func TestLiveReconfigurationUnderStreamingLoad(t *testing.T) {
	c := newCluster(t)
	a := c.startNode("node-a", simnode.Config{TTFT: 10 * time.Millisecond, Tokens: 20, InterTokenLatency: 2 * time.Millisecond})
	b := c.startNode("node-b", simnode.Config{TTFT: 10 * time.Millisecond, Tokens: 20, InterTokenLatency: 2 * time.Millisecond})
	// The same nodes are registered under two prefixes, so switching the
	// registry prefix keeps routing.
	other, err := registry.Open(c.redis.URL(), "other")
	require.NoError(t, err)
	defer other.Close()
	for _, n := range []*testNode{a, b} {
		c.register(n, time.Hour)
		require.NoError(t, other.Register(context.Background(), registry.Node{ID: n.ID, URL: n.URL, Models: []string{"sim-model"}, TTLMillis: time.Hour.Milliseconds()}))
	}

	port := freePort(t)
	startCaddy(t, reconfigCaddyfile(port, "ai-lb", "p2c", "delay 200ms"))
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	waitNodes(t, base, 2)

	// Streamed traffic from 4 clients until the reconfiguration is done.
	var (
		stop     atomic.Bool
		wg       sync.WaitGroup
		done     atomic.Int64
		mu       sync.Mutex
		failures []string
	)
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				if err := streamOnce(base); err != nil {
					mu.Lock()
					failures = append(failures, err.Error())
					mu.Unlock()
				}
				done.Add(1)
			}
		}()
	}
	waitDone := func(n int64) {
		target := done.Load() + n
		eventually(t, 30*time.Second, func() error {
			if done.Load() < target {
				return fmt.Errorf("%d requests done", done.Load())
			}
			return nil
		})
	}
	waitDone(20)

	// 1. POST /load with a Caddyfile: another registry prefix, other hedge options.
	adminDo(t, http.MethodPost, "/load", "text/caddyfile", reconfigCaddyfile(port, "other", "p2c", "delay 50ms\n\t\tmax_attempts 3"))
	waitDone(20)

	// 2. PATCH one setting of the running config: the prefix back.
	adminDo(t, http.MethodPatch, "/config/apps/ai_lb/prefix", "application/json", `"ai-lb"`)
	waitDone(20)

	// 3. `caddy reload`: another selection policy and hedging options.
	file := filepath.Join(t.TempDir(), "Caddyfile")
	require.NoError(t, os.WriteFile(file, []byte(reconfigCaddyfile(port, "ai-lb", "least_conn", "percentile 90\n\t\tdelay 100ms")), 0o600))
	out, err := exec.Command(binary(t), "reload", "--config", file, "--adapter", "caddyfile",
		"--address", fmt.Sprintf("localhost:%d", adminPort)).CombinedOutput()
	require.NoError(t, err, string(out))
	waitDone(20)

	stop.Store(true)
	wg.Wait()
	require.Empty(t, failures, "requests failed during reconfiguration")
	require.Positive(t, a.Stats().Completed)
	require.Positive(t, b.Stats().Completed)
}

// streamOnce sends one streamed chat completion and checks it ends with
// [DONE]. Like the OpenAI SDKs, it sends an Idempotency-Key, which lets
// Go's transport resend a request whose idle connection the server had
// just closed (as a reload does).
func streamOnce(base string) error {
	req, err := http.NewRequest(http.MethodPost, base+"/v1/chat/completions",
		strings.NewReader(`{"model":"sim-model","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", fmt.Sprint(time.Now().UnixNano()))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	var last string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			last = data
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if last != "[DONE]" {
		return fmt.Errorf("stream ended with %q", last)
	}
	return nil
}
