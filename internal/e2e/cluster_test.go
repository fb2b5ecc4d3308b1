package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ai-lb/ai-lb/internal/testredis"
	"github.com/ai-lb/ai-lb/registry"
	"github.com/ai-lb/ai-lb/simnode"
)

// TestClusterRegistryUnderLoad runs ai-lb on a three-master Redis Cluster
// under steady load (streamed and not): a node registered meanwhile gets
// traffic, a deregistered one and one whose heartbeats stop get none, and
// no request fails. ai-lb resyncs only hourly, so every change reaches it
// through the events the registry's Lua scripts publish.
func TestClusterRegistryUnderLoad(t *testing.T) {
	rc := testredis.StartCluster(t)
	c := newClusterOn(t, rc.URL())
	ctx := context.Background()
	a := c.addNode("node-a", simnode.Config{})
	c.addNode("node-b", simnode.Config{})
	base := startEventDrivenCaddy(t)
	waitNodes(t, base, 2)

	// The keys and the channel share one slot, so the scripts and the
	// transactional read run on its master.
	keys := c.client.Keys()
	owner := rc.Owner(t, keys.Nodes)
	for _, key := range []string{keys.Heartbeats, keys.Tombstones, keys.Events} {
		require.Same(t, owner, rc.Owner(t, key), "%s is not in the slot of %s", key, keys.Nodes)
	}
	n, err := owner.Client(t).HLen(ctx, keys.Nodes).Result()
	require.NoError(t, err)
	require.EqualValues(t, 2, n)

	load := startLoad(t, base, 6, 40*time.Second)
	time.Sleep(500 * time.Millisecond)

	nc := c.addNode("node-c", simnode.Config{})
	took := eventually(t, 10*time.Second, func() error { return gotTraffic(nc) })
	t.Logf("a node registered on the cluster got traffic after %v", took)

	found, err := c.client.Deregister(ctx, "node-a")
	require.NoError(t, err)
	require.True(t, found)
	waitNodes(t, base, 2)
	requireNoNewTraffic(t, a)

	// A node that registers once, with a 2 s TTL, expires.
	nd := c.startNode("node-d", simnode.Config{})
	c.register(nd, 2*time.Second)
	eventually(t, 10*time.Second, func() error { return gotTraffic(nd) })
	waitNodes(t, base, 3)
	waitNodes(t, base, 2)
	requireNoNewTraffic(t, nd)

	requireLoadSucceeded(t, load)
}

// newClusterOn is newCluster on the Redis that url names (a Redis Cluster,
// or Sentinel); c.redis is nil.
func newClusterOn(t *testing.T, url string) *cluster {
	t.Helper()
	client, err := registry.Open(url, "")
	require.NoError(t, err)
	t.Cleanup(func() { client.Close() })
	t.Setenv("REDIS_URL", url)
	return &cluster{t: t, client: client}
}

// startEventDrivenCaddy starts Caddyfile.example (on $REDIS_URL) with a
// resync interval of an hour, so that registry changes reach it only as
// events, and returns its base URL.
func startEventDrivenCaddy(t *testing.T) string {
	t.Helper()
	port := freePort(t)
	caddyfile := exampleCaddyfile(t, port)
	require.Contains(t, caddyfile, "\t\tprefix ai-lb\n")
	startCaddy(t, strings.Replace(caddyfile, "\t\tprefix ai-lb\n", "\t\tprefix ai-lb\n\t\tresync_interval 1h\n", 1))
	return fmt.Sprintf("http://127.0.0.1:%d", port)
}

// gotTraffic says whether a node has received a request.
func gotTraffic(n *testNode) error {
	if n.Stats().Received == 0 {
		return fmt.Errorf("no traffic reached %s", n.ID)
	}
	return nil
}

// requireNoNewTraffic checks that a node taken out of routing receives no
// request for a second, once the requests sent before settle.
func requireNoNewTraffic(t *testing.T, n *testNode) {
	t.Helper()
	time.Sleep(200 * time.Millisecond)
	before := n.Stats().Received
	time.Sleep(time.Second)
	require.Equal(t, before, n.Stats().Received, "%s still gets traffic", n.ID)
}

// requireLoadSucceeded stops the load and checks that every request of
// every phase succeeded in full.
func requireLoadSucceeded(t *testing.T, l *load) {
	t.Helper()
	l.stop()
	l.mu.Lock()
	defer l.mu.Unlock()
	total := l.failed
	for p, name := range phaseNames {
		if l.ok[p] > 0 {
			t.Logf("phase %s: %d requests succeeded", name, l.ok[p])
		}
		total += l.ok[p]
	}
	require.Zero(t, l.failed, "%d of %d requests failed; first failures:\n%s", l.failed, total, strings.Join(l.failures, "\n"))
	require.Positive(t, total)
}
