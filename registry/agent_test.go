package registry

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/ai-lb/ai-lb/simnode"
)

func TestAgentRun(t *testing.T) {
	e := newTestEnv(t)
	w, _ := e.watch(WatcherOptions{Resync: time.Hour})
	sim := startNode(t, "m")
	n := Node{ID: "agent-node", URL: sim.URL, Models: []string{"m"}, TTLMillis: 600} // heartbeat every 200ms
	stop := runAgent(t, &Agent{Client: e.client, Node: n, Logger: zaptestLogger(t)})

	waitFor(t, func() bool { return e.entry("agent-node") != nil }, "the agent to register")
	first := e.entry("agent-node")
	require.Equal(t, &n, first.Node)
	require.True(t, first.Live)
	waitFor(t, func() bool { en := e.entry("agent-node"); return en != nil && en.Heartbeat.After(first.Heartbeat) }, "a heartbeat")
	waitFor(t, func() bool { return hasID(w, "agent-node") }, "the watcher to see the node")

	require.NoError(t, stop())
	entries, err := e.client.List(context.Background())
	require.NoError(t, err)
	require.Empty(t, entries, "the node is deregistered")
	waitFor(t, func() bool { return !hasID(w, "agent-node") }, "the watcher to see the deregistration")
}

func TestAgentRunInvalidNode(t *testing.T) {
	e := newTestEnv(t)
	err := (&Agent{Client: e.client, Node: Node{ID: "x", URL: "nope"}}).Run(context.Background())
	require.ErrorContains(t, err, "no host")
}

// TestAgentRunRedisDown checks that an agent keeps trying while Redis is
// down, logging the failure once, and registers once it is back.
func TestAgentRunRedisDown(t *testing.T) {
	e := newTestEnv(t)
	e.redis.Kill()
	core, logs := observedLogger(t)
	sim := startNode(t, "m")
	runAgent(t, &Agent{Client: e.client, Node: Node{ID: "n", URL: sim.URL, Models: []string{"m"}, TTLMillis: 300}, Logger: core})

	waitFor(t, func() bool { return logs.FilterMessage("heartbeat failed; retrying").Len() == 1 }, "the failure to be logged")
	time.Sleep(500 * time.Millisecond) // several heartbeat intervals
	require.Equal(t, 1, logs.FilterMessage("heartbeat failed; retrying").Len())

	e.redis.Restart()
	waitFor(t, func() bool { return logs.FilterMessage("heartbeat restored").Len() == 1 }, "the heartbeat to be restored")
	en := e.entry("n")
	require.NotNil(t, en)
	require.True(t, en.Live)
}

// TestAgentProbesNode checks that an agent takes its node out of routing
// within a heartbeat of it failing /health or hanging (the node stays
// registered and live, its model known), puts it back as soon as it
// recovers, and follows the node's models.
func TestAgentProbesNode(t *testing.T) {
	e := newTestEnv(t)
	w, _ := e.watch(WatcherOptions{Resync: time.Hour})
	sim := startNode(t, "m")
	n := Node{ID: "probed", URL: sim.URL, Models: []string{"m"}, TTLMillis: 900} // heartbeat every 300ms, probe timeout 150ms
	runAgent(t, &Agent{Client: e.client, Node: n, Logger: zaptestLogger(t)})
	waitFor(t, func() bool { return hasID(w, "probed") }, "the node to be registered")

	for _, failure := range []int{http.StatusServiceUnavailable, hang} {
		sim.answer("/health", failure)
		failed := time.Now()
		waitFor(t, func() bool { return !hasID(w, "probed") }, "the failing node to leave routing")
		require.Less(t, time.Since(failed), n.TTL(), "the failing node stayed routed for a TTL")
		require.True(t, w.Snapshot().Known("m"), "an unhealthy node's model is still known")
		time.Sleep(n.TTL()) // heartbeats go on while it fails
		en := e.entry("probed")
		require.True(t, en.Live, "an unhealthy node stays registered and live")
		require.True(t, en.Node.Unhealthy)
		require.False(t, hasID(w, "probed"))

		sim.answer("/health", 0)
		waitFor(t, func() bool { return hasID(w, "probed") }, "the recovered node to be routed again")
		require.False(t, e.entry("probed").Node.Unhealthy)
	}

	sim.Update(func(c *simnode.Config) { c.Models = []string{"m", "m2"} })
	waitFor(t, func() bool { return len(w.Snapshot().ServingModel("m2")) == 1 }, "the node's new model")
	require.Equal(t, []string{"m", "m2"}, e.entry("probed").Node.Models)
}

// TestAgentProbeWithoutHealth checks the nodes without /health (Ollama):
// a 404 there defers to /v1/models. It also checks KeepModels.
func TestAgentProbeWithoutHealth(t *testing.T) {
	e := newTestEnv(t)
	w, _ := e.watch(WatcherOptions{Resync: time.Hour})
	sim := startNode(t, "m")
	sim.answer("/health", http.StatusNotFound)
	n := Node{ID: "ollama", URL: sim.URL + "/v1", Models: []string{"alias"}, TTLMillis: 600}
	runAgent(t, &Agent{Client: e.client, Node: n, Logger: zaptestLogger(t), KeepModels: true})
	waitFor(t, func() bool { return hasID(w, "ollama") }, "the node to be registered")
	require.Equal(t, []string{"alias"}, e.entry("ollama").Node.Models, "KeepModels keeps the models given")

	sim.answer("/v1/models", http.StatusInternalServerError)
	waitFor(t, func() bool { return !hasID(w, "ollama") }, "the node to leave routing")
	require.True(t, e.entry("ollama").Node.Unhealthy)
	sim.answer("/v1/models", 0)
	waitFor(t, func() bool { return hasID(w, "ollama") }, "the node to be routed again")
}

// TestDrain checks Client.Drain and the agent's Drain signal: a draining
// node leaves routing at once while it stays registered, live and its
// models known; its agent's heartbeats keep the drain, and only a new agent
// ends it.
func TestDrain(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	w, _ := e.watch(WatcherOptions{Resync: time.Hour})
	sim := startNode(t, "m")
	n := Node{ID: "n", URL: sim.URL, Models: []string{"m"}, TTLMillis: 600}
	stop := runAgent(t, &Agent{Client: e.client, Node: n, Logger: zaptestLogger(t)})
	waitFor(t, func() bool { return hasID(w, "n") }, "the node to be registered")

	found, err := e.client.Drain(ctx, "n")
	require.NoError(t, err)
	require.True(t, found)
	waitFor(t, func() bool { return !hasID(w, "n") }, "the drained node to leave routing")
	require.True(t, w.Snapshot().Known("m"), "a draining node's model is still known")
	time.Sleep(n.TTL()) // heartbeats
	en := e.entry("n")
	require.True(t, en.Live)
	require.True(t, en.Node.Draining, "a heartbeat ended the drain")
	require.False(t, hasID(w, "n"))

	// A new agent ends the drain, also one left by an agent that died.
	require.NoError(t, stop())
	n.Draining = true
	require.NoError(t, e.client.Register(ctx, n))
	n.Draining = false
	drain := make(chan os.Signal, 1)
	runAgent(t, &Agent{Client: e.client, Node: n, Logger: zaptestLogger(t), Drain: drain})
	waitFor(t, func() bool { return hasID(w, "n") }, "a new agent to end the drain")

	drain <- syscall.SIGUSR1
	drained := time.Now()
	waitFor(t, func() bool { return !hasID(w, "n") }, "the agent to drain its node")
	require.Less(t, time.Since(drained), HeartbeatInterval(n.TTL())+ProbeTimeout)
	require.True(t, e.entry("n").Node.Draining)
	require.True(t, w.Snapshot().Known("m"))

	found, err = e.client.Drain(ctx, "unknown")
	require.NoError(t, err)
	require.False(t, found)
}

// TestDrainScriptChecksEntry checks that the drain is written only over
// the entry it was computed from: an entry changed meanwhile (a heartbeat
// with new models) is left alone, so Drain reads it again.
func TestDrainScriptChecksEntry(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	n := Node{ID: "n", URL: "http://127.0.0.1:1", Models: []string{"old"}}
	require.NoError(t, e.client.Register(ctx, n))
	read, err := json.Marshal(n)
	require.NoError(t, err)
	n.Models = []string{"new"}
	require.NoError(t, e.client.Register(ctx, n))

	stale := n
	stale.Models, stale.Draining = []string{"old"}, true
	staleJSON, err := json.Marshal(stale)
	require.NoError(t, err)
	err = upScript.Run(ctx, e.client.rdb, e.client.scriptKeys(), "n", staleJSON, staleJSON, e.client.Keys().Events, upDrain, read).Err()
	require.ErrorIs(t, err, redis.Nil)
	require.Equal(t, &n, e.entry("n").Node, "a drain computed from a stale entry was written")

	found, err := e.client.Drain(ctx, "n")
	require.NoError(t, err)
	require.True(t, found)
	n.Draining = true
	require.Equal(t, &n, e.entry("n").Node)
}
