package registry

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

func TestKeysFor(t *testing.T) {
	tests := []struct {
		prefix string
		want   Keys
	}{
		{"", Keys{Nodes: "{ai-lb}:nodes", Heartbeats: "{ai-lb}:heartbeats", Tombstones: "{ai-lb}:tombstones", Events: "{ai-lb}:events", Load: "{ai-lb}:load"}},
		{"prod", Keys{Nodes: "{prod}:nodes", Heartbeats: "{prod}:heartbeats", Tombstones: "{prod}:tombstones", Events: "{prod}:events", Load: "{prod}:load"}},
		{"a:b", Keys{Nodes: "{a:b}:nodes", Heartbeats: "{a:b}:heartbeats", Tombstones: "{a:b}:tombstones", Events: "{a:b}:events", Load: "{a:b}:load"}},
	}
	for _, tt := range tests {
		t.Run(tt.prefix, func(t *testing.T) {
			require.Equal(t, tt.want, KeysFor(tt.prefix))
		})
	}
}

func TestClientRoundTrip(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	n := Node{
		ID:             "gpu-1",
		URL:            "http://10.0.0.1:8000/v1",
		Models:         []string{"llama-3", "qwen"},
		MaxConcurrency: 3,
		Weight:         2.5,
		Labels:         map[string]string{"gpu": "a100"},
		TTLMillis:      5000,
	}
	before := time.Now()
	require.NoError(t, e.client.Register(ctx, n))

	entries, err := e.client.List(ctx)
	require.NoError(t, err)
	require.Len(t, entries, 1)
	got := entries[0]
	require.NoError(t, got.Err)
	require.Equal(t, "gpu-1", got.ID)
	require.Equal(t, &n, got.Node)
	require.True(t, got.Live)
	require.GreaterOrEqual(t, got.Age, time.Duration(0))
	require.LessOrEqual(t, got.Age, n.TTL(), "a fresh heartbeat is within the TTL")
	// Redis runs on this machine: its clock is ours.
	require.WithinRange(t, got.Heartbeat, before.Add(-time.Second), time.Now().Add(time.Second))

	// The real keys exist under the {prefix} hash tag, and no others.
	keys := KeysFor("test")
	require.Equal(t, keys, e.client.Keys())
	all, err := e.rdb.Keys(ctx, "*").Result()
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"{test}:nodes", "{test}:heartbeats"}, all)
	raw, err := e.rdb.HGet(ctx, keys.Nodes, "gpu-1").Result()
	require.NoError(t, err)
	var stored Node
	require.NoError(t, json.Unmarshal([]byte(raw), &stored))
	require.Equal(t, n, stored)
	score, err := e.rdb.ZScore(ctx, keys.Heartbeats, "gpu-1").Result()
	require.NoError(t, err)
	require.Equal(t, got.Heartbeat.UnixMilli(), int64(score))

	// Registering again is a heartbeat: still one entry.
	require.NoError(t, e.client.Register(ctx, n))
	entries, err = e.client.List(ctx)
	require.NoError(t, err)
	require.Len(t, entries, 1)
	require.False(t, entries[0].Heartbeat.Before(got.Heartbeat))

	found, err := e.client.Deregister(ctx, "gpu-1")
	require.NoError(t, err)
	require.True(t, found)
	found, err = e.client.Deregister(ctx, "gpu-1")
	require.NoError(t, err)
	require.False(t, found)
	found, err = e.client.Deregister(ctx, "never-registered")
	require.NoError(t, err)
	require.False(t, found)

	entries, err = e.client.List(ctx)
	require.NoError(t, err)
	require.Empty(t, entries)
	// What is left is the tombstones, later than the last heartbeat.
	all, err = e.rdb.Keys(ctx, "*").Result()
	require.NoError(t, err)
	require.Equal(t, []string{"{test}:tombstones"}, all)
	tombs, err := e.rdb.ZRangeWithScores(ctx, keys.Tombstones, 0, -1).Result()
	require.NoError(t, err)
	require.Len(t, tombs, 2)
	for _, z := range tombs {
		require.Contains(t, []string{"gpu-1", "never-registered"}, z.Member)
		require.Greater(t, z.Score, score)
	}

	// Registering again supersedes the tombstone.
	require.NoError(t, e.client.Register(ctx, n))
	_, err = e.rdb.ZScore(ctx, keys.Tombstones, "gpu-1").Result()
	require.ErrorIs(t, err, redis.Nil)
}

// TestClientFactsStrictlyOrdered checks that the facts about one node get
// strictly increasing times even when they fall within one millisecond of
// the Redis clock, and that other nodes' facts do not move them.
func TestClientFactsStrictlyOrdered(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	keys := e.client.Keys()
	sub := e.rdb.Subscribe(ctx, keys.Events)
	defer sub.Close()
	_, err := sub.Receive(ctx) // the subscription confirmation
	require.NoError(t, err)

	n := Node{ID: "n", URL: "http://127.0.0.1:1"}
	const rounds = 50
	for range rounds {
		require.NoError(t, e.client.Register(ctx, n))
		_, err := e.client.Deregister(ctx, "n")
		require.NoError(t, err)
	}
	var last int64
	for range 2 * rounds {
		msg, err := sub.ReceiveMessage(ctx)
		require.NoError(t, err)
		var ev Event
		require.NoError(t, json.Unmarshal([]byte(msg.Payload), &ev), msg.Payload)
		at := ev.HeartbeatMillis
		if ev.Op == "down" {
			require.Equal(t, "n", ev.ID)
			at = ev.AtMillis
		}
		require.Greater(t, at, last, "%s event not later than the fact before it", ev.Op)
		last = at
	}
	require.Less(t, last, time.Now().Add(time.Second).UnixMilli(), "fact times ran far ahead of the clock")
}

func TestClientListSortedAndPrefixesIsolated(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	other := NewClient(e.client.rdb, "other")
	for _, id := range []string{"c", "a", "b"} {
		require.NoError(t, e.client.Register(ctx, Node{ID: id, URL: "http://127.0.0.1:1"}))
	}
	require.NoError(t, other.Register(ctx, Node{ID: "z", URL: "http://127.0.0.1:2"}))

	entries, err := e.client.List(ctx)
	require.NoError(t, err)
	var got []string
	for _, en := range entries {
		got = append(got, en.ID)
	}
	require.Equal(t, []string{"a", "b", "c"}, got)

	entries, err = other.List(ctx)
	require.NoError(t, err)
	require.Len(t, entries, 1)
	require.Equal(t, "z", entries[0].ID)
}

func TestClientListMalformedAndStale(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	keys := e.client.Keys()
	require.NoError(t, e.rdb.HSet(ctx, keys.Nodes,
		"garbage", "{not json",
		"mismatch", `{"id":"other","url":"http://127.0.0.1:1"}`,
		"nobeat", `{"id":"nobeat","url":"http://127.0.0.1:2"}`,
		"stale", `{"id":"stale","url":"http://127.0.0.1:3","ttl_ms":1000}`,
	).Err())
	old := float64(time.Now().Add(-time.Minute).UnixMilli())
	require.NoError(t, e.rdb.ZAdd(ctx, keys.Heartbeats, redis.Z{Member: "stale", Score: old}, redis.Z{Member: "garbage", Score: old}).Err())

	entries, err := e.client.List(ctx)
	require.NoError(t, err)
	byID := map[string]Entry{}
	for _, en := range entries {
		byID[en.ID] = en
	}
	require.Len(t, byID, 4)

	require.Error(t, byID["garbage"].Err)
	require.Nil(t, byID["garbage"].Node)
	require.False(t, byID["garbage"].Live)

	require.ErrorContains(t, byID["mismatch"].Err, "does not match")
	require.Nil(t, byID["mismatch"].Node)

	require.NoError(t, byID["nobeat"].Err)
	require.True(t, byID["nobeat"].Heartbeat.IsZero())
	require.False(t, byID["nobeat"].Live)

	require.NoError(t, byID["stale"].Err)
	require.False(t, byID["stale"].Live)
	require.Greater(t, byID["stale"].Age, 50*time.Second)
}

func TestClientRegisterRejectsInvalid(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	good := Node{ID: "n", URL: "http://127.0.0.1:8000"}
	tests := []struct {
		name   string
		modify func(*Node)
		want   string
	}{
		{"empty id", func(n *Node) { n.ID = "" }, "id: empty"},
		{"blank id", func(n *Node) { n.ID = "  " }, "id: empty"},
		{"unparsable url", func(n *Node) { n.URL = "http://[::1" }, "url"},
		{"no host", func(n *Node) { n.URL = "http://" }, "no host"},
		{"not a url", func(n *Node) { n.URL = "localhost" }, "no host"},
		{"bad scheme", func(n *Node) { n.URL = "ftp://example.com" }, "scheme"},
		{"negative max_concurrency", func(n *Node) { n.MaxConcurrency = -1 }, "max_concurrency"},
		{"negative weight", func(n *Node) { n.Weight = -0.5 }, "weight"},
		{"negative ttl", func(n *Node) { n.TTLMillis = -1 }, "ttl_ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := good
			tt.modify(&n)
			err := e.client.Register(ctx, n)
			require.ErrorContains(t, err, "invalid node")
			require.ErrorContains(t, err, tt.want)
		})
	}
	all, err := e.rdb.Keys(ctx, "*").Result()
	require.NoError(t, err)
	require.Empty(t, all, "a rejected node writes nothing")
}

func TestNodeDialAndDefaults(t *testing.T) {
	tests := []struct {
		url, dial string
	}{
		{"http://example.com", "example.com:80"},
		{"https://example.com", "example.com:443"},
		{"http://10.0.0.1:8000/v1", "10.0.0.1:8000"},
		{"http://[::1]:9000", "[::1]:9000"},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			n := Node{ID: "x", URL: tt.url}
			dial, err := n.Dial()
			require.NoError(t, err)
			require.Equal(t, tt.dial, dial)
		})
	}
	n := Node{ID: "x", URL: "http://h:1"}
	require.Equal(t, DefaultTTL, n.TTL())
	require.Equal(t, 1.0, n.EffectiveWeight())
	n.TTLMillis, n.Weight = 1500, 3
	require.Equal(t, 1500*time.Millisecond, n.TTL())
	require.Equal(t, 3.0, n.EffectiveWeight())
}

// TestClientPruneRechecksHeartbeat checks that pruning re-checks each
// heartbeat in Redis: a node that heartbeated after the read that found it
// long expired is kept. It also drops tombstones older than their retention.
func TestClientPruneRechecksHeartbeat(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	keys := e.client.Keys()
	n := Node{ID: "n", URL: "http://127.0.0.1:1", TTLMillis: 50}
	gone := Node{ID: "gone", URL: "http://127.0.0.1:2", TTLMillis: 50}
	require.NoError(t, e.client.Register(ctx, n))
	require.NoError(t, e.client.Register(ctx, gone))
	old := float64(time.Now().Add(-TombstoneRetention - time.Second).UnixMilli())
	require.NoError(t, e.rdb.ZAdd(ctx, keys.Tombstones, redis.Z{Member: "ancient", Score: old}).Err())
	time.Sleep(PruneAfterTTLs*n.TTL() + 50*time.Millisecond)

	stale, err := e.client.read(ctx, false)
	require.NoError(t, err)
	prunable, staleTombstones := stale.prunable()
	require.Len(t, prunable, 2)
	require.True(t, staleTombstones)
	require.NoError(t, e.client.Register(ctx, n)) // a heartbeat after the read

	pruned, err := e.client.prune(ctx, prunable)
	require.NoError(t, err)
	require.Equal(t, 1, pruned)
	entries, err := e.client.List(ctx)
	require.NoError(t, err)
	require.Len(t, entries, 1)
	require.Equal(t, "n", entries[0].ID)
	require.True(t, entries[0].Live)
	tombs, err := e.rdb.ZRange(ctx, keys.Tombstones, 0, -1).Result()
	require.NoError(t, err)
	require.Equal(t, []string{"gone"}, tombs, "the old tombstone is dropped, the pruned node leaves one")

	pruned, err = e.client.prune(ctx, prunable)
	require.NoError(t, err)
	require.Zero(t, pruned, "pruning again removes nothing")
}
