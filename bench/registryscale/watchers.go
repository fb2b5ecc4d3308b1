package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/ai-lb/ai-lb/health"
	"github.com/ai-lb/ai-lb/registry"
)

// received counts the bytes all replicas' connections read from Redis:
// the load messages, the resyncs' full reads and the command replies.
// pubsubBytes and messages count only the subscriptions' connections
// (those that have carried a pub/sub message); a frame split across two
// reads is missed by the message count, never counted twice.
var received, pubsubBytes, messages atomic.Int64

var messageFrame = []byte("\r\nmessage\r\n")

// countingConn counts what is read from a connection.
type countingConn struct {
	net.Conn
	pubsub *bool
}

func (c countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	received.Add(int64(n))
	if m := bytes.Count(b[:n], messageFrame); m > 0 || *c.pubsub {
		*c.pubsub = true
		pubsubBytes.Add(int64(n))
		messages.Add(int64(m))
	}
	return n, err
}

// watchers is the child process: r replicas, each with its own Redis
// client and health.Tracker as in separate ai-lb processes, until its
// stdin closes. Each line on stdin is answered with its counters.
func watchers(url string, r int) error {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return err
	}
	var d net.Dialer
	opts.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return countingConn{Conn: c, pubsub: new(bool)}, nil
	}
	var ws []*registry.Watcher
	defer func() {
		for _, w := range ws {
			w.Close()
		}
	}()
	for range r {
		rdb := redis.NewClient(opts)
		defer rdb.Close()
		w := registry.NewWatcher(registry.NewClient(rdb, prefix),
			registry.WatcherOptions{Health: health.NewTracker(zap.NewNop())}, zap.NewNop())
		ws = append(ws, w)
	}
	for _, w := range ws {
		<-w.FirstRead()
		if len(w.Snapshot().Members) == 0 {
			return fmt.Errorf("a replica's first read found no live node")
		}
	}
	out := bufio.NewWriter(os.Stdout)
	fmt.Fprintln(out, "ready")
	out.Flush()
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		raw, _ := json.Marshal(childStats{CPU: processCPU(), Bytes: received.Load(), PubSubBytes: pubsubBytes.Load(), Messages: messages.Load()})
		out.Write(append(raw, '\n'))
		out.Flush()
	}
	return nil
}

// processCPU is this process's user+system CPU time in seconds.
func processCPU() float64 {
	var u syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &u)
	return float64(u.Utime.Nano()+u.Stime.Nano()) / 1e9
}

// selectionCost is the time of one selection among n live nodes that all
// serve the model and all have fresh engine figures: the snapshot's
// lookup, two members drawn at random (the dynamic source samples a few,
// p2c compares two), their loads from node health, and health.Cost.
func selectionCost(n int) float64 {
	tracker := health.NewTracker(zap.NewNop())
	members := make([]*registry.Member, n)
	now := time.Now()
	for i := range members {
		node := simNode(i)
		dial := strings.TrimPrefix(node.URL, "http://")
		members[i] = &registry.Member{Node: &node, Dial: dial}
		tracker.Node(dial).SetEngineLoad(health.EngineLoad{Running: float64(i % 8), MaxRunning: 8, At: now})
	}
	snap := registry.NewSnapshot(members, nil, true)
	res := testing.Benchmark(func(b *testing.B) {
		rng := rand.New(rand.NewPCG(1, 2))
		var sink float64
		for b.Loop() {
			serving := snap.ServingModel(model)
			a, c := serving[rng.IntN(len(serving))], serving[rng.IntN(len(serving))]
			t := time.Now()
			la := tracker.Node(a.Dial).Load(a.MaxConcurrency, t)
			lc := tracker.Node(c.Dial).Load(c.MaxConcurrency, t)
			ca, cc := health.Cost(la, lc, 1, 1)
			sink += ca - cc
		}
		_ = sink
	})
	return float64(res.NsPerOp())
}
