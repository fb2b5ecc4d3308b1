package registry

import (
	"context"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/ai-lb/ai-lb/internal/testredis"
)

// deadline bounds every wait for something expected within about a second.
const deadline = 10 * time.Second

// testEnv is one test's Redis and a registry client on it.
type testEnv struct {
	t      *testing.T
	redis  *testredis.Server
	rdb    *redis.Client // raw access, for writing malformed entries
	client *Client
}

func newTestEnv(t *testing.T) *testEnv {
	t.Helper()
	rs := testredis.Start(t)
	client, err := Open(rs.URL(), "test")
	require.NoError(t, err)
	t.Cleanup(func() { client.Close() })
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr(), MaxRetries: -1})
	t.Cleanup(func() { rdb.Close() })
	return &testEnv{t: t, redis: rs, rdb: rdb, client: client}
}

// watch starts a watcher whose logs go to the test log and to the returned
// observer. It is closed when the test ends, before Redis is stopped.
func (e *testEnv) watch(opts WatcherOptions) (*Watcher, *observer.ObservedLogs) {
	e.t.Helper()
	logger, logs := observedLogger(e.t)
	w := NewWatcher(e.client, opts, logger)
	e.t.Cleanup(w.Close)
	waitFor(e.t, func() bool { return w.Snapshot().Synced }, "the watcher's first read")
	return w, logs
}

// hgetallCalls counts the full registry reads Redis has served (List reads
// the nodes hash with one HGETALL).
func (e *testEnv) hgetallCalls() int {
	e.t.Helper()
	info, err := e.rdb.Info(context.Background(), "commandstats").Result()
	require.NoError(e.t, err)
	m := regexp.MustCompile(`cmdstat_hgetall:calls=(\d+)`).FindStringSubmatch(info)
	if m == nil {
		return 0
	}
	n, err := strconv.Atoi(m[1])
	require.NoError(e.t, err)
	return n
}

// waitFor polls cond until it holds, failing the test after deadline.
func waitFor(t testing.TB, cond func() bool, what string) {
	t.Helper()
	end := time.Now().Add(deadline)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("timed out after %v waiting for %s", deadline, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ids returns the IDs of a snapshot's members.
func ids(s *Snapshot) []string {
	out := make([]string, 0, len(s.Members))
	for _, m := range s.Members {
		out = append(out, m.ID)
	}
	return out
}

// hasID reports whether the watcher's snapshot has a member id.
func hasID(w *Watcher, id string) bool { return w.Snapshot().byID[id] != nil }

// countLogs counts the entries with message msg, and with field id when id
// is not "".
func countLogs(logs *observer.ObservedLogs, msg, id string) int {
	l := logs.FilterMessage(msg)
	if id != "" {
		l = l.FilterField(zap.String("id", id))
	}
	return l.Len()
}

// redisZNow is a heartbeat of id at the current time.
func redisZNow(id string) redis.Z {
	return redis.Z{Member: id, Score: float64(time.Now().UnixMilli())}
}

func zaptestLogger(t *testing.T) *zap.Logger { return zaptest.NewLogger(t) }

// observedLogger logs to the test log and to the returned observer.
func observedLogger(t *testing.T) (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	return zap.New(zapcore.NewTee(zaptest.NewLogger(t).Core(), core)), logs
}
