package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/ai-lb/ai-lb/registry"
	"github.com/ai-lb/ai-lb/simnode"
)

// TestRedisKilledUnderLoad kills Redis under steady load, keeps it down for
// longer than the nodes' TTL, and brings it back empty: no request may fail
// at any point, the nodes' agents must re-register by themselves, and a node
// registered afterwards must get traffic.
func TestRedisKilledUnderLoad(t *testing.T) {
	const ttl = 3 * time.Second
	c := newCluster(t)
	agentCtx, stopAgents := context.WithCancel(context.Background())
	var agents sync.WaitGroup
	t.Cleanup(func() { stopAgents(); agents.Wait() })
	var nodes []*testNode
	for _, id := range []string{"node-1", "node-2", "node-3"} {
		n := c.startNode(id, simnode.Config{})
		nodes = append(nodes, n)
		agent := &registry.Agent{
			Client: c.client,
			Node:   registry.Node{ID: n.ID, URL: n.URL, Models: n.Config().Models, TTLMillis: ttl.Milliseconds()},
			Logger: zaptest.NewLogger(t).Named(id),
		}
		agents.Go(func() { _ = agent.Run(agentCtx) })
	}
	port := freePort(t)
	startCaddy(t, exampleCaddyfile(t, port))
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	waitNodes(t, base, 3)

	load := startLoad(t, base, 8, 30*time.Second)
	time.Sleep(time.Second)

	// Redis goes away for longer than the TTL: the balancer keeps routing
	// to the nodes it knew.
	load.setPhase(phaseOutage)
	c.redis.Kill()
	time.Sleep(ttl + 2*time.Second)
	health := getHealth(t, base)
	require.Equal(t, 3, health.NodesFound, "nodes dropped during the outage")

	// Redis comes back empty. The nodes are kept while their agents
	// re-register; by the time that grace (one TTL after the watcher sees
	// Redis again, which its ≤2 s reconnection backoff bounds) is over,
	// they must be registered again.
	c.redis.Restart()
	load.setPhase(phaseRestarted)
	eventually(t, 15*time.Second, func() error {
		entries, err := c.client.List(context.Background())
		if err != nil {
			return err
		}
		live := 0
		for _, e := range entries {
			if e.Live {
				live++
			}
		}
		if live != 3 {
			return fmt.Errorf("%d live nodes in the restarted Redis: %+v", live, entries)
		}
		return nil
	})
	time.Sleep(ttl + 3*time.Second)
	require.Equal(t, 3, getHealth(t, base).NodesFound, "nodes lost after Redis came back")

	// The registry works again: a new node gets traffic, and so do the
	// old ones.
	before := make([]int64, len(nodes))
	for i, n := range nodes {
		before[i] = n.Stats().Received
	}
	n4 := c.startNode("node-4", simnode.Config{})
	eventually(t, 15*time.Second, func() error {
		return c.client.Register(context.Background(), registry.Node{
			ID: n4.ID, URL: n4.URL, Models: n4.Config().Models, TTLMillis: registry.DefaultTTL.Milliseconds(),
		})
	})
	nodes, before = append(nodes, n4), append(before, 0)
	eventually(t, 15*time.Second, func() error {
		for i, n := range nodes {
			if n.Stats().Received == before[i] {
				return fmt.Errorf("no traffic reached %s after the restart", n.ID)
			}
		}
		return nil
	})
	load.stop()

	load.mu.Lock()
	defer load.mu.Unlock()
	for p, name := range phaseNames {
		t.Logf("phase %s: %d requests succeeded", name, load.ok[p])
		require.Positive(t, load.ok[p], "no request completed during phase %s", name)
	}
	require.Zero(t, load.failed, "%d of %d requests failed; first failures:\n%s",
		load.failed, load.failed+load.ok[0]+load.ok[1]+load.ok[2], strings.Join(load.failures, "\n"))
}

// TestRedisDownAtStart starts the balancer while its Redis is down: the
// config loads, the balancer answers 503 with OpenAI-style errors, and it
// routes once Redis is up and a node registers.
func TestRedisDownAtStart(t *testing.T) {
	c := newCluster(t)
	c.redis.Kill()
	port := freePort(t)
	startCaddy(t, exampleCaddyfile(t, port))
	base := fmt.Sprintf("http://127.0.0.1:%d", port)

	resp, err := http.Get(base + "/health")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "%s", body)
	require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	var health healthBody
	require.NoError(t, json.Unmarshal(body, &health), "%s", body)
	require.Equal(t, "unavailable", health.Status)
	require.Zero(t, health.NodesFound)
	require.False(t, health.RegistrySynced)

	for _, stream := range []bool{false, true} {
		reqBody := fmt.Sprintf(`{"model":"sim-model","stream":%t,"messages":[{"role":"user","content":"hi"}]}`, stream)
		resp, err := http.Post(base+"/v1/chat/completions", "application/json", strings.NewReader(reqBody))
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "%s", body)
		require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
		retry, err := strconv.Atoi(resp.Header.Get("Retry-After"))
		require.NoError(t, err, "Retry-After %q", resp.Header.Get("Retry-After"))
		require.Positive(t, retry)
		var apiErr struct {
			Error *struct {
				Message string  `json:"message"`
				Type    string  `json:"type"`
				Param   *string `json:"param"`
				Code    string  `json:"code"`
			} `json:"error"`
		}
		require.NoError(t, json.Unmarshal(body, &apiErr), "%s", body)
		require.NotNil(t, apiErr.Error, "%s", body)
		require.Equal(t, "server_error", apiErr.Error.Type)
		require.Equal(t, "no_nodes_available", apiErr.Error.Code)
		require.NotEmpty(t, apiErr.Error.Message)
	}

	c.redis.Restart()
	c.addNode("node-1", simnode.Config{})
	eventually(t, 15*time.Second, func() error {
		status, node, body, err := chat(base, "sim-model")
		if err != nil || status != http.StatusOK || node != "node-1" {
			return fmt.Errorf("status %d from %q: %s %v", status, node, body, err)
		}
		return nil
	})
	health = getHealth(t, base)
	require.Equal(t, "ok", health.Status)
	require.Equal(t, 1, health.NodesFound)
	require.True(t, health.RegistrySynced)
}

// healthBody is the JSON of GET /health.
type healthBody struct {
	Status         string `json:"status"`
	NodesFound     int    `json:"nodes_found"`
	RegistrySynced bool   `json:"registry_synced"`
}

func getHealth(t *testing.T, base string) healthBody {
	t.Helper()
	resp, err := http.Get(base + "/health")
	require.NoError(t, err)
	defer resp.Body.Close()
	var h healthBody
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&h))
	return h
}

// Load phases of TestRedisKilledUnderLoad.
const (
	phaseBefore = iota
	phaseOutage
	phaseRestarted
)

var phaseNames = []string{"before-outage", "outage", "after-restart"}

// load is a set of clients sending chat completions (alternately streamed
// and not) back to back, and what became of them.
type load struct {
	phase    atomic.Int32
	done     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup

	mu       sync.Mutex
	ok       [3]int
	failed   int
	failures []string // the first few
}

// startLoad starts clients that run until stop or for at most limit. It is
// stopped at the latest when the test ends.
func startLoad(t *testing.T, base string, clients int, limit time.Duration) *load {
	l := &load{done: make(chan struct{})}
	transport := &http.Transport{MaxIdleConnsPerHost: clients}
	httpClient := &http.Client{Transport: transport, Timeout: 20 * time.Second}
	deadline := time.Now().Add(limit)
	for i := range clients {
		l.wg.Go(func() {
			for n := i; time.Now().Before(deadline); n++ {
				select {
				case <-l.done:
					return
				default:
				}
				phase := l.phase.Load()
				err := loadRequest(httpClient, base, n%2 == 0)
				l.mu.Lock()
				if err == nil {
					l.ok[phase]++
				} else {
					l.failed++
					if len(l.failures) < 10 {
						l.failures = append(l.failures, fmt.Sprintf("%s: %v", phaseNames[phase], err))
					}
				}
				l.mu.Unlock()
			}
		})
	}
	t.Cleanup(func() { l.stop(); transport.CloseIdleConnections() })
	return l
}

func (l *load) setPhase(p int32) { l.phase.Store(p) }

// stop ends the load and waits for the requests in flight.
func (l *load) stop() {
	l.stopOnce.Do(func() { close(l.done) })
	l.wg.Wait()
}

// loadRequest sends one chat completion and checks that it succeeded in
// full: status 200 and an answer generated by one node, ending with
// `data: [DONE]` when streamed.
func loadRequest(client *http.Client, base string, stream bool) error {
	reqBody := fmt.Sprintf(`{"model":"sim-model","stream":%t,"messages":[{"role":"user","content":"hi"}]}`, stream)
	resp, err := client.Post(base+"/v1/chat/completions", "application/json", strings.NewReader(reqBody))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	node := resp.Header.Get("X-Sim-Node")
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("stream=%t: status %d: %s", stream, resp.StatusCode, body)
	}
	var text string
	if stream {
		var events []string
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				events = append(events, data)
			}
		}
		if err := sc.Err(); err != nil {
			return fmt.Errorf("stream from %s: %v after %d events", node, err, len(events))
		}
		if len(events) == 0 || events[len(events)-1] != "[DONE]" {
			return fmt.Errorf("stream from %s does not end with [DONE]: %q", node, events)
		}
		text = strings.Join(events, "")
	} else {
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return fmt.Errorf("answer from %s: %v", node, err)
		}
		var out struct {
			Choices []struct {
				FinishReason string `json:"finish_reason"`
				Message      struct {
					Content string `json:"content"`
				} `json:"message"`
			} `json:"choices"`
		}
		if err := json.Unmarshal(body, &out); err != nil || len(out.Choices) != 1 || out.Choices[0].FinishReason != "stop" {
			return fmt.Errorf("answer from %s: %v: %s", node, err, body)
		}
		text = out.Choices[0].Message.Content
	}
	if node == "" || !fromOneNode(text, node) {
		return fmt.Errorf("stream=%t: answer not generated by X-Sim-Node %q: %q", stream, node, text)
	}
	return nil
}
