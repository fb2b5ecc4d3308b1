package registry

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestAgentRun(t *testing.T) {
	e := newTestEnv(t)
	w, _ := e.watch(WatcherOptions{Resync: time.Hour})
	n := Node{ID: "agent-node", URL: "http://127.0.0.1:9001", Models: []string{"m"}, TTLMillis: 600} // heartbeat every 200ms
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- (&Agent{Client: e.client, Node: n, Logger: zaptestLogger(t)}).Run(ctx) }()

	entry := func() *Entry {
		entries, err := e.client.List(context.Background())
		require.NoError(t, err)
		if len(entries) != 1 {
			return nil
		}
		return &entries[0]
	}
	waitFor(t, func() bool { return entry() != nil }, "the agent to register")
	first := entry()
	require.Equal(t, &n, first.Node)
	require.True(t, first.Live)
	waitFor(t, func() bool { en := entry(); return en != nil && en.Heartbeat.After(first.Heartbeat) }, "a heartbeat")
	waitFor(t, func() bool { return hasID(w, "agent-node") }, "the watcher to see the node")

	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(deadline):
		t.Fatal("Run did not return after its context ended")
	}
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
	n := Node{ID: "n", URL: "http://127.0.0.1:9001", TTLMillis: 300}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&Agent{Client: e.client, Node: n, Logger: core}).Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()

	waitFor(t, func() bool { return logs.FilterMessage("heartbeat failed; retrying").Len() == 1 }, "the failure to be logged")
	time.Sleep(500 * time.Millisecond) // several heartbeat intervals
	require.Equal(t, 1, logs.FilterMessage("heartbeat failed; retrying").Len())

	e.redis.Restart()
	waitFor(t, func() bool { return logs.FilterMessage("heartbeat restored").Len() == 1 }, "the heartbeat to be restored")
	entries, err := e.client.List(context.Background())
	require.NoError(t, err)
	require.Len(t, entries, 1)
	require.True(t, entries[0].Live)
}
