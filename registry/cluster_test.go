package registry

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ai-lb/ai-lb/internal/testredis"
)

// TestRegistryOnCluster runs the registry's scripts (register, drain,
// deregister, prune), its transactional read and its events on a
// three-master Redis Cluster.
func TestRegistryOnCluster(t *testing.T) {
	c := testredis.StartCluster(t)
	e := newHAEnv(t, c.URL(), c.Masters)
	e.exercise()
}

// TestRegistryBehindSentinel does the same through Sentinel, then fails the
// master over with SENTINEL FAILOVER, which leaves the old master running:
// the watcher's subscription must move to the new master at once, without
// waiting for Sentinel to reconfigure the old one.
func TestRegistryBehindSentinel(t *testing.T) {
	s := testredis.StartSentinel(t)
	e := newHAEnv(t, s.URL(), s.Redis)
	e.exercise()

	start := time.Now()
	s.Failover()
	t.Logf("SENTINEL FAILOVER took %v", time.Since(start))
	ctx := context.Background()
	for _, id := range []string{"after-1", "after-2"} {
		n := Node{ID: id, URL: "http://127.0.0.1:9009", Models: []string{"m"}, TTLMillis: 60_000}
		waitFor(t, func() bool { return e.agent.Register(ctx, n) == nil }, "a registration on the new master")
		registered := time.Now()
		// Sentinel itself drops the old master's clients only 8 s or more
		// after the failover.
		require.Eventually(t, func() bool { return hasID(e.w, id) }, 3*time.Second, 10*time.Millisecond,
			"the watcher did not see %s, registered on the new master", id)
		t.Logf("%s registered %v after the failover started, seen %v later", id, registered.Sub(start), time.Since(registered))
	}
}

// haEnv is a watcher that reads the registry only when it (re)subscribes,
// and a separate client that writes, as a node's agent would, on a Redis
// Cluster or behind Sentinel.
type haEnv struct {
	t       *testing.T
	client  *Client // the watcher's
	agent   *Client
	w       *Watcher
	servers []*testredis.Server
}

func newHAEnv(t *testing.T, url string, servers []*testredis.Server) *haEnv {
	e := &haEnv{t: t, servers: servers}
	for _, c := range []**Client{&e.client, &e.agent} {
		client, err := Open(url, "test")
		require.NoError(t, err)
		t.Cleanup(func() { client.Close() })
		*c = client
	}
	e.w = e.watch(time.Hour)
	return e
}

// watch starts a watcher with the given resync period, waits until it has
// read the registry and subscribed to its events, and closes it when the
// test ends.
func (e *haEnv) watch(resync time.Duration) *Watcher {
	before := e.subscribers()
	w := NewWatcher(e.client, WatcherOptions{Resync: resync}, zaptestLogger(e.t))
	e.t.Cleanup(w.Close)
	waitFor(e.t, func() bool { return w.Snapshot().Synced && e.subscribers() > before }, "the watcher's first read and subscription")
	return w
}

// subscribers counts the clients subscribed to the events channel on all
// the servers (a cluster node or a replica counts only its own).
func (e *haEnv) subscribers() int64 {
	var n int64
	channel := e.client.Keys().Events
	for _, s := range e.servers {
		if !s.Running() {
			continue
		}
		subs, err := s.Client(e.t).PubSubNumSub(context.Background(), channel).Result()
		require.NoError(e.t, err)
		n += subs[channel]
	}
	return n
}

// exercise registers, drains, deregisters and prunes nodes, and checks
// that the watcher follows each change through events: it reads the
// registry only once more, when its subscription is confirmed, which can
// explain the first change at most.
func (e *haEnv) exercise() {
	t, ctx := e.t, context.Background()
	a := Node{ID: "a", URL: "http://127.0.0.1:9001", Models: []string{"a-model"}, TTLMillis: 60_000}
	b := Node{ID: "b", URL: "http://127.0.0.1:9002", Models: []string{"b-model"}, TTLMillis: 60_000}
	require.NoError(t, e.agent.Register(ctx, a))
	waitFor(t, func() bool { return hasID(e.w, "a") }, "a to be registered")
	require.NoError(t, e.agent.Register(ctx, b))
	waitFor(t, func() bool { return hasID(e.w, "b") }, "b to be registered")

	found, err := e.agent.Drain(ctx, "a")
	require.NoError(t, err)
	require.True(t, found)
	waitFor(t, func() bool { return !hasID(e.w, "a") }, "a to be drained")
	require.True(t, e.w.Snapshot().Known("a-model"), "a draining node's models stay known")
	require.NoError(t, e.agent.Register(ctx, a)) // a heartbeat keeps the drain
	entries, err := e.agent.List(ctx)
	require.NoError(t, err)
	require.Len(t, entries, 2)
	require.True(t, entries[0].Live)
	require.True(t, entries[0].Node.Draining)

	found, err = e.agent.Deregister(ctx, "b")
	require.NoError(t, err)
	require.True(t, found)
	waitFor(t, func() bool { return !e.w.Snapshot().Known("b-model") }, "b to be deregistered")

	// A node that stops heartbeating expires, then a watcher that resyncs
	// often prunes it: the prune script's event reaches the first watcher.
	const ttl = 200 * time.Millisecond
	dead := Node{ID: "dead", URL: "http://127.0.0.1:9003", Models: []string{"dead-model"}, TTLMillis: ttl.Milliseconds()}
	require.NoError(t, e.agent.Register(ctx, dead))
	waitFor(t, func() bool { return hasID(e.w, "dead") }, "dead to be registered")
	waitFor(t, func() bool { return !hasID(e.w, "dead") }, "dead to expire")
	require.True(t, e.w.Snapshot().Known("dead-model"), "an expired node's models stay known")
	e.watch(50 * time.Millisecond)
	waitFor(t, func() bool { return !e.w.Snapshot().Known("dead-model") }, "dead to be pruned")
	entries, err = e.agent.List(ctx)
	require.NoError(t, err)
	require.Len(t, entries, 1)
	require.Equal(t, "a", entries[0].ID)
}
