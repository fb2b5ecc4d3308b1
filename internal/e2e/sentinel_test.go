package e2e

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/ai-lb/ai-lb/internal/testredis"
	"github.com/ai-lb/ai-lb/registry"
	"github.com/ai-lb/ai-lb/simnode"
)

// TestSentinelFailoverUnderLoad runs ai-lb behind Sentinel under steady load
// (streamed and not), with three nodes kept registered by their agents
// (TTL 3 s), and fails the master over: by SENTINEL FAILOVER (the old
// master is demoted, still running) and by killing it. No request may fail:
// ai-lb keeps the last known nodes while Redis switches. Afterwards the
// agents heartbeat on the new master, and a node registered there gets
// traffic; ai-lb resyncs only hourly, so that proves its subscription
// moved to the new master. The test logs how long each step took.
func TestSentinelFailoverUnderLoad(t *testing.T) {
	for name, failover := range map[string]func(*testredis.Sentinel) *testredis.Server{
		"SENTINEL FAILOVER": (*testredis.Sentinel).Failover,
		"master killed":     (*testredis.Sentinel).KillMaster,
	} {
		t.Run(name, func(t *testing.T) { sentinelFailoverUnderLoad(t, failover) })
	}
}

func sentinelFailoverUnderLoad(t *testing.T, failover func(*testredis.Sentinel) *testredis.Server) {
	const ttl = 3 * time.Second
	s := testredis.StartSentinel(t)
	c := newClusterOn(t, s.URL())
	ctx := context.Background()
	var nodes []*testNode
	for _, id := range []string{"node-1", "node-2", "node-3"} {
		nodes = append(nodes, c.startNode(id, simnode.Config{}))
	}
	stopAgents := c.runAgents(ttl, nodes...)
	base := startEventDrivenCaddy(t)
	waitNodes(t, base, 3)
	load := startLoad(t, base, 8, 40*time.Second)
	time.Sleep(time.Second)

	load.setPhase(phaseOutage)
	start := time.Now()
	master := failover(s)
	announced := time.Since(start)
	n4 := c.startNode("node-4", simnode.Config{})
	eventually(t, 15*time.Second, func() error {
		return c.client.Register(ctx, registry.Node{
			ID: n4.ID, URL: n4.URL, Models: n4.Config().Models, TTLMillis: registry.DefaultTTL.Milliseconds(),
		})
	})
	writable := time.Since(start)
	eventually(t, 15*time.Second, func() error { return gotTraffic(n4) })
	routed := time.Since(start)
	load.setPhase(phaseRestarted)
	t.Logf("new master %s announced after %v, written after %v; a node registered there got traffic after %v",
		master, announced, writable, routed)
	// Sooner than Sentinel would drop a demoted master's clients (8 s or
	// more), which would move the subscription anyway.
	require.Less(t, routed-writable, 5*time.Second, "ai-lb missed the registration on the new master")

	// Past a TTL, every agent has heartbeated on the new master, and ai-lb
	// has dropped no node.
	time.Sleep(ttl + time.Second)
	entries, err := c.client.List(ctx)
	require.NoError(t, err)
	require.Len(t, entries, 4)
	for _, e := range entries {
		require.True(t, e.Live, "%s not live on the new master", e.ID)
		if e.ID != n4.ID {
			require.True(t, e.Heartbeat.After(start.Add(writable)), "%s has not heartbeated on the new master", e.ID)
		}
	}
	require.Equal(t, 4, getHealth(t, base).NodesFound)
	requireLoadSucceeded(t, load)

	// ai-lb lets go of everything it opened, the sentinel listeners too.
	stopAgents()
	require.NoError(t, c.client.Close())
	unloadAndRequireNoGoroutines(t)
}

// runAgents keeps nodes registered with a TTL, each by its registry.Agent,
// until the test ends or stop is called.
func (c *cluster) runAgents(ttl time.Duration, nodes ...*testNode) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, n := range nodes {
		agent := &registry.Agent{Client: c.client, Logger: zaptest.NewLogger(c.t).Named(n.ID),
			Node: registry.Node{ID: n.ID, URL: n.URL, Models: n.Config().Models, TTLMillis: ttl.Milliseconds()}}
		wg.Go(func() { _ = agent.Run(ctx) })
	}
	stop = func() { cancel(); wg.Wait() }
	c.t.Cleanup(stop)
	return stop
}
