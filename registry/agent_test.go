package registry

import (
	"context"
	"net/http"
	"testing"
	"time"

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
