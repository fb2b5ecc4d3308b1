package registry

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/ai-lb/ai-lb/health"
	"github.com/ai-lb/ai-lb/simnode"
)

// engineLoad returns the load node health sees on dial at now: the
// engine's running plus waiting requests (this process sends none) and
// its capacity, both 0 when the figures are unknown or stale.
func engineLoad(tr *health.Tracker, dial string, now time.Time) health.Load {
	return tr.Node(dial).Load(0, now)
}

// watchLoad starts a watcher that feeds tr, and waits until it follows the
// load channel.
func (e *testEnv) watchLoad(tr *health.Tracker, resync time.Duration) *Watcher {
	e.t.Helper()
	w, _ := e.watch(WatcherOptions{Resync: resync, Health: tr})
	waitFor(e.t, func() bool {
		subs, err := e.rdb.PubSubNumSub(context.Background(), e.client.Keys().Load).Result()
		return err == nil && subs[e.client.Keys().Load] >= 1
	}, "the watcher to follow the load channel")
	return w
}

// redisMillis is the Redis clock, Unix ms.
func (e *testEnv) redisMillis() int64 {
	e.t.Helper()
	now, err := e.rdb.Time(context.Background()).Result()
	require.NoError(e.t, err)
	return now.UnixMilli()
}

// TestLoadReachesTracker checks the path of published figures: to a
// watching replica's node health at once, with their receipt as their
// time; to a replica that starts later from the load hash, with their age
// by the Redis clock; older figures never replace newer ones; and they go
// with their node's deregistration.
func TestLoadReachesTracker(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	staleness := health.LoadDefaults.Staleness
	n := Node{ID: "gpu-7", URL: "http://127.0.0.1:9001", Models: []string{"m"}, TTLMillis: 60_000}
	require.NoError(t, e.client.Register(ctx, n))
	tr := health.NewTracker(zap.NewNop())
	w := e.watchLoad(tr, time.Hour)
	require.Zero(t, engineLoad(tr, "127.0.0.1:9001", time.Now()).Requests)

	sent := time.Now()
	ok, err := e.client.PublishLoad(ctx, LoadFigures{ID: "gpu-7", Running: 3, Waiting: 1, KVCacheUsage: 0.42, MaxRunning: 8})
	require.NoError(t, err)
	require.True(t, ok)
	waitFor(t, func() bool { return engineLoad(tr, "127.0.0.1:9001", time.Now()).Requests == 4 }, "the figures to reach node health")
	seen := time.Now()
	require.Equal(t, health.Load{Requests: 4, Capacity: 8}, engineLoad(tr, "127.0.0.1:9001", sent.Add(staleness)),
		"fresh for the staleness from their receipt")
	require.Equal(t, health.Load{}, engineLoad(tr, "127.0.0.1:9001", seen.Add(staleness+time.Millisecond)),
		"stale past it")

	// The hash keeps the message as published.
	raw, err := e.rdb.HGet(ctx, e.client.Keys().Load, "gpu-7").Result()
	require.NoError(t, err)
	require.Regexp(t, `^\{"t":\d{13},"id":"gpu-7","r":3,"w":1,"kv":0.42,"max":8\}$`, raw)
	t.Logf("a load message: %d bytes: %s", len(raw), raw)

	// A node that is not registered gets no figures stored.
	ok, err = e.client.PublishLoad(ctx, LoadFigures{ID: "ghost", Running: 1})
	require.NoError(t, err)
	require.False(t, ok)
	require.False(t, e.rdb.HExists(ctx, e.client.Keys().Load, "ghost").Val())

	// A replica that starts later reads the hash: figures 2 s old by the
	// Redis clock are fresh for one more second; 10 s old ones are stale.
	m := Node{ID: "gpu-8", URL: "http://127.0.0.1:9002", Models: []string{"m"}, TTLMillis: 60_000}
	require.NoError(t, e.client.Register(ctx, m))
	redisNow := e.redisMillis()
	require.NoError(t, e.rdb.HSet(ctx, e.client.Keys().Load,
		"gpu-7", fmt.Sprintf(`{"t":%d,"id":"gpu-7","r":5,"w":0,"kv":0.5}`, redisNow-2000),
		"gpu-8", fmt.Sprintf(`{"t":%d,"id":"gpu-8","r":6,"w":0,"kv":0.5}`, redisNow-10_000),
		"bad", "{not json").Err())
	w.Close()
	waitFor(t, func() bool {
		subs, err := e.rdb.PubSubNumSub(ctx, e.client.Keys().Load).Result()
		return err == nil && subs[e.client.Keys().Load] == 0
	}, "the first watcher to leave")
	tr2 := health.NewTracker(zap.NewNop())
	w2 := e.watchLoad(tr2, time.Hour)
	require.Equal(t, health.Load{Requests: 5}, engineLoad(tr2, "127.0.0.1:9001", time.Now()))
	require.Equal(t, health.Load{}, engineLoad(tr2, "127.0.0.1:9001", time.Now().Add(staleness-2*time.Second+100*time.Millisecond)),
		"the age by the Redis clock counts")
	require.Equal(t, health.Load{}, engineLoad(tr2, "127.0.0.1:9002", time.Now()), "10 s old figures are stale")

	// Older figures than the applied ones (a message that lost a race
	// with a resync) are ignored; newer ones apply.
	require.NoError(t, e.rdb.Publish(ctx, e.client.Keys().Load,
		fmt.Sprintf(`{"t":%d,"id":"gpu-7","r":9,"w":0,"kv":0}`, redisNow-3000)).Err())
	ok, err = e.client.PublishLoad(ctx, LoadFigures{ID: "gpu-8", Running: 2})
	require.NoError(t, err)
	require.True(t, ok)
	waitFor(t, func() bool { return engineLoad(tr2, "127.0.0.1:9002", time.Now()).Requests == 2 }, "gpu-8's figures")
	require.Equal(t, 5.0, engineLoad(tr2, "127.0.0.1:9001", time.Now()).Requests, "the older message was ignored")
	require.NoError(t, e.rdb.Publish(ctx, e.client.Keys().Load, "garbage").Err(), "and garbage too")
	ok, err = e.client.PublishLoad(ctx, LoadFigures{ID: "gpu-7", Running: 1, Waiting: 1})
	require.NoError(t, err)
	require.True(t, ok)
	waitFor(t, func() bool { return engineLoad(tr2, "127.0.0.1:9001", time.Now()).Requests == 2 }, "gpu-7's newer figures")

	// Figures go with their node.
	_, err = e.client.Deregister(ctx, "gpu-7")
	require.NoError(t, err)
	require.False(t, e.rdb.HExists(ctx, e.client.Keys().Load, "gpu-7").Val())
	waitFor(t, func() bool {
		w2.mu.Lock()
		defer w2.mu.Unlock()
		_, ok := w2.loadMs["gpu-7"]
		return !ok
	}, "the watcher to forget gpu-7's figures")
	entries, err := e.client.List(ctx)
	require.NoError(t, err)
	require.Len(t, entries, 1)
	require.Equal(t, &LoadFigures{Millis: entries[0].Load.Millis, ID: "gpu-8", Running: 2}, entries[0].Load)
	require.Less(t, entries[0].LoadAge, 5*time.Second)
}

// TestWatcherWithoutHealthIgnoresLoad checks that a watcher without node
// health neither follows the load channel nor reads the load hash.
func TestWatcherWithoutHealthIgnoresLoad(t *testing.T) {
	e := newTestEnv(t)
	e.watch(WatcherOptions{Resync: time.Hour})
	waitFor(t, func() bool { return e.hgetallCalls() == 2 }, "the watcher's two initial reads")
	subs, err := e.rdb.PubSubNumSub(context.Background(), e.client.Keys().Load).Result()
	require.NoError(t, err)
	require.Zero(t, subs[e.client.Keys().Load])
}

// busy sends n chat requests to a simulated node that hold its slots (or
// wait for one) until release is called.
func busy(t *testing.T, url string, n int) (release func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/chat/completions",
				strings.NewReader(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`))
			if err != nil {
				return
			}
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		})
	}
	release = func() { cancel(); wg.Wait() }
	t.Cleanup(release)
	return release
}

// TestAgentPublishesSimnodeLoad is the path end to end: a simulated node
// under load, its agent, Redis, a replica's node health.
func TestAgentPublishesSimnodeLoad(t *testing.T) {
	e := newTestEnv(t)
	tr := health.NewTracker(zap.NewNop())
	e.watchLoad(tr, time.Hour)
	sim := startNode(t, "m")
	sim.Update(func(c *simnode.Config) { c.Slots, c.QueueSize, c.TTFT = 2, 8, time.Hour })
	n := Node{ID: "sim-node", URL: sim.URL, Models: []string{"m"}, TTLMillis: 60_000}
	m, err := newMember(&n)
	require.NoError(t, err)
	stop := runAgent(t, &Agent{Client: e.client, Node: n, Logger: zaptestLogger(t), LoadInterval: 50 * time.Millisecond})

	waitFor(t, func() bool { return engineLoad(tr, m.Dial, time.Now()).Capacity == 2 }, "the idle node's figures")
	require.Zero(t, engineLoad(tr, m.Dial, time.Now()).Requests)

	release := busy(t, sim.URL, 5)
	waitFor(t, func() bool { return engineLoad(tr, m.Dial, time.Now()).Requests == 5 }, "2 running and 3 waiting")
	en := e.entry("sim-node")
	require.NotNil(t, en.Load)
	require.Equal(t, LoadFigures{Millis: en.Load.Millis, ID: "sim-node", Running: 2, Waiting: 3, KVCacheUsage: 1, MaxRunning: 2}, *en.Load)

	release()
	waitFor(t, func() bool { return engineLoad(tr, m.Dial, time.Now()) == health.Load{Capacity: 2} }, "the node to be idle again")

	require.NoError(t, stop())
	require.Zero(t, e.rdb.Exists(context.Background(), e.client.Keys().Load).Val(), "no figures outlive the node")
}

// TestAgentLoadBounded checks that an agent publishes at most one message
// per interval, and unchanged figures only every LoadRefreshIntervals; and
// nothing for a node without engine metrics.
func TestAgentLoadBounded(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	ps := e.rdb.Subscribe(ctx, e.client.Keys().Load)
	t.Cleanup(func() { ps.Close() })
	_, err := ps.Receive(ctx) // the subscription
	require.NoError(t, err)
	messages := ps.Channel()

	sim := startNode(t, "m")
	const interval = 20 * time.Millisecond
	logger, logs := observedLogger(t)
	stop := runAgent(t, &Agent{Client: e.client, Node: Node{ID: "idle", URL: sim.URL, Models: []string{"m"}},
		Logger: logger, LoadInterval: interval})
	select {
	case first := <-messages:
		require.Contains(t, first.Payload, `"id":"idle","r":0,"w":0,"kv":0}`)
	case <-time.After(deadline):
		t.Fatal("no figures published")
	}
	start := time.Now()
	count := 0
	for time.Since(start) < time.Second {
		select {
		case <-messages:
			count++
		case <-time.After(10 * time.Millisecond):
		}
	}
	elapsed := time.Since(start)
	t.Logf("an idle node: %d messages in %v at a %v interval", count, elapsed, interval)
	require.LessOrEqual(t, count, int(elapsed/(LoadRefreshIntervals*interval))+1)
	require.GreaterOrEqual(t, count, 3, "unchanged figures are refreshed")

	// A node without /metrics publishes nothing, and says so once.
	sim.answer("/metrics", http.StatusNotFound)
	waitFor(t, func() bool { return logs.FilterMessage("not publishing engine load").Len() == 1 }, "the agent to say so")
	time.Sleep(10 * interval)
	for len(messages) > 0 {
		<-messages
	}
	select {
	case m := <-messages:
		t.Fatalf("published for a node without metrics: %s", m.Payload)
	case <-time.After(10 * interval):
	}
	require.Equal(t, 1, logs.FilterMessage("not publishing engine load").Len())
	require.NoError(t, stop())
}

// loadFreshnessSamples is how many changes TestLoadFreshness times.
const loadFreshnessSamples = 4

// TestLoadFreshness measures how long a change of a node's load takes to
// reach a replica's node health at the default load interval: a scrape
// interval at most, plus the scrape and two Redis hops.
func TestLoadFreshness(t *testing.T) {
	e := newTestEnv(t)
	tr := health.NewTracker(zap.NewNop())
	e.watchLoad(tr, time.Hour)
	sim := startNode(t, "m")
	sim.Update(func(c *simnode.Config) { c.TTFT = time.Hour })
	n := Node{ID: "fresh", URL: sim.URL, Models: []string{"m"}, TTLMillis: 60_000}
	m, err := newMember(&n)
	require.NoError(t, err)
	runAgent(t, &Agent{Client: e.client, Node: n, Logger: zaptestLogger(t)})
	waitFor(t, func() bool { return e.entry("fresh") != nil && e.entry("fresh").Load != nil }, "the first figures")

	// Changes at random phases of the agent's scrapes: up to 1 and 2
	// requests, and back to none.
	var delays []time.Duration
	var release func()
	for i := range loadFreshnessSamples {
		time.Sleep(rand.N(DefaultLoadInterval))
		want := 0.0
		if i%2 == 0 {
			want = float64(i/2%2 + 1)
			release = busy(t, sim.URL, int(want))
		} else {
			release()
		}
		waitFor(t, func() bool { return sim.Stats().InFlight == int64(want) }, "the node's load to change")
		changed := time.Now()
		waitFor(t, func() bool { return engineLoad(tr, m.Dial, time.Now()).Requests == want }, "the figures")
		delays = append(delays, time.Since(changed))
	}
	slices.Sort(delays)
	var sum time.Duration
	for _, d := range delays {
		sum += d
	}
	t.Logf("change at the node to a replica's node health, at a %v interval, %d changes: min %v, mean %v, median %v, max %v",
		DefaultLoadInterval, len(delays), delays[0], sum/time.Duration(len(delays)), delays[len(delays)/2], delays[len(delays)-1])
	require.Less(t, delays[len(delays)-1], DefaultLoadInterval+500*time.Millisecond)
}
