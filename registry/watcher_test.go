package registry

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestWatcherFollowsEvents checks that registrations and deregistrations
// reach the snapshot through pub/sub alone: the resync period is an hour,
// and Redis's own command count shows that no full read happened.
func TestWatcherFollowsEvents(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	w, _ := e.watch(WatcherOptions{Resync: time.Hour})

	// The watcher reads the registry once at start and once more when its
	// subscription is confirmed; wait for both so that neither can explain
	// what follows.
	waitFor(t, func() bool {
		subs, err := e.rdb.PubSubNumSub(ctx, e.client.Keys().Events).Result()
		return err == nil && subs[e.client.Keys().Events] == 1 && e.hgetallCalls() == 2
	}, "the watcher's subscription and its two initial reads")
	require.Empty(t, w.Snapshot().Members)

	n := Node{ID: "n1", URL: "http://127.0.0.1:9001", Models: []string{"m"}, MaxConcurrency: 2, TTLMillis: 60_000}
	require.NoError(t, e.client.Register(ctx, n))
	waitFor(t, func() bool { return hasID(w, "n1") }, "n1 to be registered")
	m := w.Snapshot().byID["n1"]
	require.Equal(t, &n, m.Node)
	require.Equal(t, "127.0.0.1:9001", m.Dial)

	// A heartbeat of an unchanged node keeps the same member and snapshot.
	snap := w.Snapshot()
	require.NoError(t, e.client.Register(ctx, n))
	n2 := Node{ID: "n2", URL: "http://127.0.0.1:9002", Models: []string{"m"}, TTLMillis: 60_000}
	require.NoError(t, e.client.Register(ctx, n2)) // events are in order: n1's is handled first
	waitFor(t, func() bool { return hasID(w, "n2") }, "n2 to be registered")
	require.Same(t, snap.byID["n1"], w.Snapshot().byID["n1"])

	// A changed node replaces its member.
	n.Models = []string{"m", "m2"}
	require.NoError(t, e.client.Register(ctx, n))
	waitFor(t, func() bool {
		return w.Snapshot().byID["n1"] != nil && slices.Contains(w.Snapshot().byID["n1"].Models, "m2")
	},
		"n1's new model")

	found, err := e.client.Deregister(ctx, "n1")
	require.NoError(t, err)
	require.True(t, found)
	waitFor(t, func() bool { return !hasID(w, "n1") }, "n1 to be deregistered")
	require.Equal(t, []string{"n2"}, ids(w.Snapshot()))
	require.False(t, w.Snapshot().Known("m2"), "a deregistered node's models are forgotten")

	require.Equal(t, 2, e.hgetallCalls(), "every change came from an event, not a full read")
}

// TestWatcherExpiry checks that a node whose heartbeats stop leaves the
// snapshot after its TTL, not much before, and comes back when it
// registers again.
func TestWatcherExpiry(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	w, _ := e.watch(WatcherOptions{Resync: 200 * time.Millisecond})

	const ttl = time.Second
	n := Node{ID: "short", URL: "http://127.0.0.1:9001", Models: []string{"gone-soon"}, TTLMillis: ttl.Milliseconds()}
	long := Node{ID: "long", URL: "http://127.0.0.1:9002", Models: []string{"stays"}, TTLMillis: 60_000}
	require.NoError(t, e.client.Register(ctx, long))
	registered := time.Now()
	require.NoError(t, e.client.Register(ctx, n))
	waitFor(t, func() bool { return hasID(w, "short") }, "the node to be registered")

	waitFor(t, func() bool { return !hasID(w, "short") }, "the node to expire")
	require.GreaterOrEqual(t, time.Since(registered), ttl/2, "the node expired long before its TTL")
	require.Equal(t, []string{"long"}, ids(w.Snapshot()))

	// An expired node is still known: its model is served by nobody live.
	snap := w.Snapshot()
	require.Empty(t, snap.ServingModel("gone-soon"))
	require.True(t, snap.Known("gone-soon"))
	require.Equal(t, []string{"stays"}, snap.Models())

	// Resyncs do not revive it.
	calls := e.hgetallCalls()
	waitFor(t, func() bool { return e.hgetallCalls() >= calls+3 }, "three resyncs")
	require.False(t, hasID(w, "short"))

	require.NoError(t, e.client.Register(ctx, n))
	waitFor(t, func() bool { return hasID(w, "short") }, "the node to be revived")
	require.Len(t, w.Snapshot().ServingModel("gone-soon"), 1)
}

// TestWatcherMalformedEntries checks that unusable entries are skipped and
// logged once, not on every resync, while the other nodes keep routing.
func TestWatcherMalformedEntries(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	keys := e.client.Keys()
	bad := map[string]string{
		"garbage":  "{not json",
		"badurl":   `{"id":"badurl","url":"http://"}`,
		"scheme":   `{"id":"scheme","url":"ftp://example.com"}`,
		"mismatch": `{"id":"someone-else","url":"http://127.0.0.1:9003"}`,
		"negative": `{"id":"negative","url":"http://127.0.0.1:9004","max_concurrency":-1}`,
	}
	for id, raw := range bad {
		require.NoError(t, e.rdb.HSet(ctx, keys.Nodes, id, raw).Err())
		require.NoError(t, e.rdb.ZAdd(ctx, keys.Heartbeats,
			redisZNow(id)).Err())
	}
	require.NoError(t, e.client.Register(ctx, Node{ID: "good", URL: "http://127.0.0.1:9001", Models: []string{"m"}}))

	w, logs := e.watch(WatcherOptions{Resync: 200 * time.Millisecond})
	require.Equal(t, []string{"good"}, ids(w.Snapshot()))

	calls := e.hgetallCalls()
	waitFor(t, func() bool { return e.hgetallCalls() >= calls+5 }, "five resyncs")
	require.Equal(t, []string{"good"}, ids(w.Snapshot()))
	for id := range bad {
		require.Equal(t, 1, countLogs(logs, "skipping malformed registry entry", id), "logs for %s", id)
	}

	// Fixing an entry makes it routable; breaking it again logs again.
	require.NoError(t, e.rdb.HSet(ctx, keys.Nodes, "garbage", `{"id":"garbage","url":"http://127.0.0.1:9005"}`).Err())
	waitFor(t, func() bool { return hasID(w, "garbage") }, "the fixed entry")
	require.NoError(t, e.rdb.HSet(ctx, keys.Nodes, "garbage", "[]").Err())
	waitFor(t, func() bool { return countLogs(logs, "skipping malformed registry entry", "garbage") == 2 },
		"the entry broken again to be logged")
	require.True(t, hasID(w, "good"))
}

// TestWatcherMalformedEvents checks that bad pub/sub messages are ignored
// and the watcher keeps following events.
func TestWatcherMalformedEvents(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	require.NoError(t, e.client.Register(ctx, Node{ID: "good", URL: "http://127.0.0.1:9001"}))
	w, logs := e.watch(WatcherOptions{Resync: time.Hour})
	waitFor(t, func() bool {
		subs, err := e.rdb.PubSubNumSub(ctx, e.client.Keys().Events).Result()
		return err == nil && subs[e.client.Keys().Events] == 1
	}, "the watcher's subscription")
	before := w.Snapshot()
	require.Equal(t, []string{"good"}, ids(before))

	events := e.client.Keys().Events
	for _, msg := range []string{
		"not json",
		`{"op":"up"}`,
		`{"op":"up","node":{"id":"bad","url":"http://"}}`,
		`{"op":"sideways","id":"good"}`,
		`{"op":"down"}`,
		`["op","down"]`,
	} {
		require.NoError(t, e.rdb.Publish(ctx, events, msg).Err())
	}
	require.NoError(t, e.client.Register(ctx, Node{ID: "after", URL: "http://127.0.0.1:9002"}))
	waitFor(t, func() bool { return hasID(w, "after") }, "the event after the bad ones")

	require.Equal(t, []string{"after", "good"}, ids(w.Snapshot()))
	require.Equal(t, 2, logs.FilterMessage("skipping malformed registry event").Len())
	require.Equal(t, 1, logs.FilterMessage("skipping registry event without node").Len())
	require.Equal(t, 1, countLogs(logs, "skipping malformed registry entry", "bad"))
	require.Equal(t, 1, logs.FilterMessage("skipping registry event with unknown op").Len())
}

const msgOutage = "redis unreachable; serving the last known nodes until it is back"

// TestWatcherRedisOutage checks that nodes are kept while Redis is down
// (their TTLs do not run), the outage is logged once, and after Redis comes
// back empty the nodes get one TTL to re-register before they are dropped.
func TestWatcherRedisOutage(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	w, logs := e.watch(WatcherOptions{Resync: 200 * time.Millisecond})

	const ttl = 2 * time.Second
	a := Node{ID: "a", URL: startNode(t, "m").URL, Models: []string{"m"}, TTLMillis: ttl.Milliseconds()}
	b := Node{ID: "b", URL: "http://127.0.0.1:9002", Models: []string{"m"}, TTLMillis: ttl.Milliseconds()}
	require.NoError(t, e.client.Register(ctx, a))
	require.NoError(t, e.client.Register(ctx, b))
	waitFor(t, func() bool { return len(w.Snapshot().Members) == 2 }, "both nodes")

	e.redis.Kill()
	down := time.Now()
	waitFor(t, func() bool { return logs.FilterMessage(msgOutage).Len() > 0 }, "the outage to be noticed")
	for time.Since(down) < 2*ttl {
		require.Equal(t, []string{"a", "b"}, ids(w.Snapshot()), "nodes dropped during the outage")
		time.Sleep(50 * time.Millisecond)
	}
	require.Equal(t, 1, logs.FilterMessage(msgOutage).Len(),
		"the outage is logged once")

	e.redis.Restart() // empty
	waitFor(t, func() bool { return logs.FilterMessage("redis reachable again").Len() == 1 }, "the watcher to reconnect")
	resumed := logs.FilterMessage("redis reachable again").All()[0].Time
	require.Equal(t, []string{"a", "b"}, ids(w.Snapshot()), "nodes dropped as soon as Redis came back")

	// a re-registers; b does not.
	runAgent(t, &Agent{Client: e.client, Node: a})

	waitFor(t, func() bool { return !hasID(w, "b") }, "b to be dropped after the grace period")
	require.GreaterOrEqual(t, time.Since(resumed), ttl/2, "b dropped long before one TTL after the outage")
	require.Equal(t, []string{"a"}, ids(w.Snapshot()))

	// b's grace ended at the same moment as a's would have: a is there
	// because it is live again. It stays.
	time.Sleep(ttl / 2)
	require.Equal(t, []string{"a"}, ids(w.Snapshot()))
	require.Equal(t, 1, logs.FilterMessage(msgOutage).Len())
}

// TestWatcherLegacyKeys checks the keys the original ai-lb's monitor writes.
func TestWatcherLegacyKeys(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	const models = `{"object":"list","data":[{"id":"llama-3","object":"model","owned_by":"me"},{"id":"qwen","object":"model"}]}`
	require.NoError(t, e.rdb.SAdd(ctx, "nodes:healthy", "127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003").Err())
	require.NoError(t, e.rdb.Set(ctx, "node:127.0.0.1:9001:models", models, 0).Err())
	require.NoError(t, e.rdb.Set(ctx, "node:127.0.0.1:9001:maxconn", "7", 0).Err())
	require.NoError(t, e.rdb.Set(ctx, "node:127.0.0.1:9002:models", "<html>not json", 0).Err())
	require.NoError(t, e.rdb.Set(ctx, "node:127.0.0.1:9003:models", models, 0).Err())
	require.NoError(t, e.rdb.Set(ctx, "node:127.0.0.1:9003:maxconn", "many", 0).Err())
	// A node of the new registry alongside.
	require.NoError(t, e.client.Register(ctx, Node{ID: "new", URL: "http://127.0.0.1:9100", Models: []string{"qwen"}}))

	w, logs := e.watch(WatcherOptions{LegacyKeys: true, Resync: 200 * time.Millisecond})
	snap := w.Snapshot()
	require.Equal(t, []string{"127.0.0.1:9001", "new"}, ids(snap))
	m := snap.ByDial("127.0.0.1:9001")
	require.NotNil(t, m)
	require.Equal(t, "127.0.0.1:9001", m.ID)
	require.Equal(t, []string{"llama-3", "qwen"}, m.Models)
	require.Equal(t, 7, m.MaxConcurrency)
	require.Len(t, snap.ServingModel("qwen"), 2)

	calls := e.hgetallCalls()
	waitFor(t, func() bool { return e.hgetallCalls() >= calls+3 }, "three polls")
	require.Equal(t, 1, countLogs(logs, "skipping malformed registry entry", "127.0.0.1:9002"))
	require.Equal(t, 1, countLogs(logs, "skipping malformed registry entry", "127.0.0.1:9003"))

	require.NoError(t, e.rdb.SRem(ctx, "nodes:healthy", "127.0.0.1:9001").Err())
	waitFor(t, func() bool { return !hasID(w, "127.0.0.1:9001") }, "the removed legacy node to go")
	require.Equal(t, []string{"new"}, ids(w.Snapshot()))
}

// TestWatcherClose checks that Close returns promptly whether Redis is
// quiet (the subscriber is blocked reading) or down (it is backing off).
func TestWatcherClose(t *testing.T) {
	for _, redisDown := range []bool{false, true} {
		name := map[bool]string{false: "redis up", true: "redis down"}[redisDown]
		t.Run(name, func(t *testing.T) {
			e := newTestEnv(t)
			w := NewWatcher(e.client, WatcherOptions{Resync: time.Hour}, zaptestLogger(t))
			waitFor(t, func() bool {
				subs, err := e.rdb.PubSubNumSub(context.Background(), e.client.Keys().Events).Result()
				return err == nil && subs[e.client.Keys().Events] == 1 && w.Snapshot().Synced
			}, "the watcher to subscribe")
			if redisDown {
				e.redis.Kill()
				time.Sleep(300 * time.Millisecond) // into the reconnect backoff
			}
			closed := make(chan struct{})
			go func() {
				w.Close()
				close(closed)
			}()
			select {
			case <-closed:
			case <-time.After(deadline):
				t.Fatal("Close did not return")
			}
		})
	}
}

// TestWatcherPubSubReconnectGrantsNoGrace checks that a killed pub/sub
// connection is not taken for a Redis outage: commands still work, so a node
// that expired long ago must not come back for a TTL when the watcher
// resubscribes.
func TestWatcherPubSubReconnectGrantsNoGrace(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	w, logs := e.watch(WatcherOptions{Resync: time.Hour})
	expired := Node{ID: "expired", URL: "http://127.0.0.1:9001", Models: []string{"old"}, TTLMillis: 300}
	require.NoError(t, e.client.Register(ctx, expired))
	waitFor(t, func() bool { return hasID(w, "expired") }, "the node to be registered")
	waitFor(t, func() bool { return !hasID(w, "expired") }, "the node to expire")
	require.True(t, w.Snapshot().Known("old"))

	calls := e.hgetallCalls()
	require.NoError(t, e.rdb.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err())
	waitFor(t, func() bool {
		subs, err := e.rdb.PubSubNumSub(ctx, e.client.Keys().Events).Result()
		return err == nil && subs[e.client.Keys().Events] == 1 && e.hgetallCalls() > calls
	}, "the watcher to resubscribe and resync")
	for range 20 {
		require.False(t, hasID(w, "expired"), "an expired node came back after a pub/sub reconnect")
		time.Sleep(25 * time.Millisecond)
	}
	require.Zero(t, logs.FilterMessage(msgOutage).Len(), "a pub/sub reconnect is no outage")
}

// TestWatcherOutageGraceOnlyForLiveNodes checks that after an outage during
// which Redis kept its data (here: it refused every new connection), the
// node that was live when the outage began gets one TTL from its end, and is
// not pruned meanwhile although its heartbeat is older than PruneAfterTTLs,
// while the node that had already expired does not come back.
func TestWatcherOutageGraceOnlyForLiveNodes(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	w, logs := e.watch(WatcherOptions{Resync: 100 * time.Millisecond})
	const ttl = 600 * time.Millisecond
	expired := Node{ID: "expired", URL: "http://127.0.0.1:9001", Models: []string{"m"}, TTLMillis: 300}
	live := Node{ID: "live", URL: "http://127.0.0.1:9002", Models: []string{"m"}, TTLMillis: ttl.Milliseconds()}
	require.NoError(t, e.client.Register(ctx, expired))
	waitFor(t, func() bool { return hasID(w, "expired") }, "the short-lived node")
	waitFor(t, func() bool { return !hasID(w, "expired") }, "the short-lived node to expire")
	require.NoError(t, e.client.Register(ctx, live))
	waitFor(t, func() bool { return hasID(w, "live") }, "the live node")

	// Existing connections stay authenticated (e.rdb keeps its own); every
	// new one is refused, and the watcher's are killed.
	require.NoError(t, e.rdb.ConfigSet(ctx, "requirepass", "outage").Err())
	require.NoError(t, e.rdb.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err())
	require.NoError(t, e.rdb.Do(ctx, "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes").Err())
	waitFor(t, func() bool { return logs.FilterMessage(msgOutage).Len() == 1 }, "the outage to be noticed")
	time.Sleep(PruneAfterTTLs*ttl + ttl/2) // past the live node's TTL, and its pruning age
	require.Equal(t, []string{"live"}, ids(w.Snapshot()), "the snapshot is kept during the outage")

	require.NoError(t, e.rdb.ConfigSet(ctx, "requirepass", "").Err())
	waitFor(t, func() bool { return logs.FilterMessage("redis reachable again").Len() == 1 }, "the watcher to reconnect")
	resumed := logs.FilterMessage("redis reachable again").All()[0].Time
	for calls := e.hgetallCalls(); e.hgetallCalls() < calls+3; time.Sleep(10 * time.Millisecond) {
		require.Equal(t, []string{"live"}, ids(w.Snapshot()), "the expired node came back, or the live one got no grace")
	}
	stored, err := e.rdb.HExists(ctx, e.client.Keys().Nodes, "live").Result()
	require.NoError(t, err)
	require.True(t, stored, "a node in its grace was pruned")

	waitFor(t, func() bool { return !hasID(w, "live") }, "the live node to expire after its grace")
	require.GreaterOrEqual(t, time.Since(resumed), ttl/2, "the grace ended long before one TTL")
	waitFor(t, func() bool { return !w.Snapshot().Known("m") }, "both nodes to be pruned after the grace")
}

// TestWatcherOrdersFacts checks that of two facts about a node the newer
// wins, in whichever order the watcher sees them: a full read taken before a
// deregistration and applied after it, an "up" event that arrives after a
// read that already showed the tombstone, and a read taken between a
// deregistration and a new registration, applied after both.
func TestWatcherOrdersFacts(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	w, _ := e.watch(WatcherOptions{Resync: time.Hour})
	sub := e.rdb.Subscribe(ctx, e.client.Keys().Events)
	defer sub.Close()
	_, err := sub.Receive(ctx)
	require.NoError(t, err)
	applyRead := func(r registryRead) {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.applyRead(r, time.Now())
	}

	n := Node{ID: "n", URL: "http://127.0.0.1:9001", Models: []string{"m"}, TTLMillis: 60_000}
	require.NoError(t, e.client.Register(ctx, n))
	upEvent, err := sub.ReceiveMessage(ctx)
	require.NoError(t, err)
	waitFor(t, func() bool { return hasID(w, "n") }, "the node to be registered")
	before, err := e.client.read(ctx, false)
	require.NoError(t, err)

	_, err = e.client.Deregister(ctx, "n")
	require.NoError(t, err)
	waitFor(t, func() bool { return !hasID(w, "n") }, "the node to be deregistered")
	applyRead(before)
	require.False(t, hasID(w, "n"), "a read older than the deregistration revived the node")
	require.False(t, w.Snapshot().Known("m"))

	between, err := e.client.read(ctx, false)
	require.NoError(t, err)
	require.Contains(t, between.tombstones, "n")
	applyRead(between)
	w.receive(e.client.Keys().Events, upEvent.Payload)
	require.False(t, hasID(w, "n"), "an up event older than the tombstone revived the node")

	require.NoError(t, e.client.Register(ctx, n))
	waitFor(t, func() bool { return hasID(w, "n") }, "the node to be registered again")
	applyRead(between)
	require.True(t, hasID(w, "n"), "a read older than the new registration removed the node")
}

// TestWatcherResyncsRaceDeregistrations registers and deregisters nodes
// while the watcher re-reads the registry back to back: no deregistered
// node may come back.
func TestWatcherResyncsRaceDeregistrations(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	w, _ := e.watch(WatcherOptions{Resync: time.Millisecond})
	var revived []string
	for i := range 300 {
		id := fmt.Sprintf("n%d", i)
		require.NoError(t, e.client.Register(ctx, Node{ID: id, URL: "http://127.0.0.1:9001", TTLMillis: 60_000}))
		waitFor(t, func() bool { return hasID(w, id) }, id+" to be registered")
		_, err := e.client.Deregister(ctx, id)
		require.NoError(t, err)
		waitFor(t, func() bool { return !hasID(w, id) }, id+" to be deregistered")
		for calls := e.hgetallCalls(); e.hgetallCalls() < calls+2; {
			if hasID(w, id) {
				revived = append(revived, id)
				break
			}
		}
	}
	require.Empty(t, revived, "deregistered nodes revived by a resync")
}

// TestWatcherPrunes checks that an entry whose heartbeat is older than
// PruneAfterTTLs TTLs is removed from Redis, not before, as a
// deregistration: its models stop being known (404, not 503), and a node
// that came back meanwhile is untouched.
func TestWatcherPrunes(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	w, logs := e.watch(WatcherOptions{Resync: 50 * time.Millisecond})
	const ttl = 300 * time.Millisecond
	dead := Node{ID: "dead", URL: "http://127.0.0.1:9001", Models: []string{"dead-model"}, TTLMillis: ttl.Milliseconds()}
	back := Node{ID: "back", URL: "http://127.0.0.1:9002", Models: []string{"back-model"}, TTLMillis: ttl.Milliseconds()}
	require.NoError(t, e.client.Register(ctx, back))
	require.NoError(t, e.client.Register(ctx, dead))
	registered := time.Now()
	waitFor(t, func() bool { return w.Snapshot().Known("dead-model") && w.Snapshot().Known("back-model") }, "both nodes to be seen")
	waitFor(t, func() bool { return !hasID(w, "dead") && !hasID(w, "back") }, "both nodes to expire")
	require.True(t, w.Snapshot().Known("dead-model"), "an expired node's models stay known")
	require.NoError(t, e.client.Register(ctx, back))

	waitFor(t, func() bool { return !w.Snapshot().Known("dead-model") }, "the dead node to be pruned")
	require.GreaterOrEqual(t, time.Since(registered), PruneAfterTTLs*ttl, "pruned before %d TTLs", PruneAfterTTLs)
	entries, err := e.client.List(ctx)
	require.NoError(t, err)
	require.Len(t, entries, 1)
	require.Equal(t, "back", entries[0].ID)
	tomb, err := e.rdb.ZScore(ctx, e.client.Keys().Tombstones, "dead").Result()
	require.NoError(t, err, "pruning leaves a tombstone")
	require.Greater(t, int64(tomb), registered.UnixMilli())
	require.Equal(t, 1, logs.FilterMessage("pruned long-expired registry entries").Len())
	require.True(t, w.Snapshot().Known("back-model"))
}
