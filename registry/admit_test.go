package registry

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestWatcherAdmit: a node that WatcherOptions.Admit refuses is left out of
// the snapshot as if it were not registered (its models unknown), through
// events and resyncs alike; a new entry of the node is asked again, and the
// refused node costs no rebuilds while it heartbeats.
func TestWatcherAdmit(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	var asked atomic.Int64
	admit := func(n *Node) bool {
		asked.Add(1)
		return !strings.Contains(n.URL, "refused.test")
	}
	w, _ := e.watch(WatcherOptions{Resync: time.Hour, Admit: admit})
	waitFor(t, func() bool { return e.hgetallCalls() == 2 }, "the watcher's two initial reads")

	good := Node{ID: "good", URL: "http://127.0.0.1:9001", Models: []string{"m"}, TTLMillis: 60_000}
	bad := Node{ID: "bad", URL: "http://refused.test:80", Models: []string{"secret"}, TTLMillis: 60_000}
	require.NoError(t, e.client.Register(ctx, bad))
	require.NoError(t, e.client.Register(ctx, good)) // events are in order: bad's is handled first
	waitFor(t, func() bool { return hasID(w, "good") }, "the admitted node")
	require.GreaterOrEqual(t, asked.Load(), int64(2))
	check := func() {
		t.Helper()
		snap := w.Snapshot()
		require.Equal(t, []string{"good"}, ids(snap))
		require.False(t, snap.Known("secret"), "a refused node's models are not known")
		require.Equal(t, []string{"m"}, snap.Models())
	}
	check()
	w.Resync()
	waitFor(t, func() bool { return e.hgetallCalls() == 3 }, "a full read")
	check()

	// Heartbeats of the refused node change nothing.
	snap := w.Snapshot()
	before := asked.Load()
	require.NoError(t, e.client.Register(ctx, bad))
	require.NoError(t, e.client.Register(ctx, good))
	waitFor(t, func() bool { return asked.Load() >= before+2 }, "both heartbeats")
	time.Sleep(200 * time.Millisecond) // a few liveness checks
	require.Same(t, snap, w.Snapshot(), "no rebuild for a refused node's heartbeat")

	// Moved to an address Admit allows, it is routed; moved back, it is
	// refused again.
	bad.URL = "http://127.0.0.1:9002"
	require.NoError(t, e.client.Register(ctx, bad))
	waitFor(t, func() bool { return hasID(w, "bad") && w.Snapshot().Known("secret") }, "the node at an allowed address")
	bad.URL = "http://refused.test:81"
	require.NoError(t, e.client.Register(ctx, bad))
	waitFor(t, func() bool { return !hasID(w, "bad") && !w.Snapshot().Known("secret") }, "the node refused again")
}
