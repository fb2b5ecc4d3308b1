package registry

import (
	"context"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/ai-lb/ai-lb/internal/testredis"
	"github.com/ai-lb/ai-lb/simnode"
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

// testNode is a simulated node on a loopback server, whose answers on some
// paths the test can override.
type testNode struct {
	*simnode.Node
	URL string

	mu     sync.Mutex
	status map[string]int // path -> status it answers, or hang
}

// hang, as the status of a path, makes it never answer (until the client
// gives up).
const hang = -1

// startNode starts a simulated node serving models.
func startNode(t *testing.T, models ...string) *testNode {
	t.Helper()
	n := &testNode{Node: simnode.New(simnode.Config{ID: "sim", Models: models}), status: map[string]int{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.mu.Lock()
		status, ok := n.status[r.URL.Path]
		n.mu.Unlock()
		switch {
		case !ok:
			n.Node.ServeHTTP(w, r)
		case status == hang:
			<-r.Context().Done()
		default:
			w.WriteHeader(status)
		}
	}))
	t.Cleanup(srv.Close)
	n.URL = srv.URL
	return n
}

// answer makes path answer status (or hang) from now on; 0 restores the
// simulator's own answer.
func (n *testNode) answer(path string, status int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if status == 0 {
		delete(n.status, path)
		return
	}
	n.status[path] = status
}

// runAgent runs a until the test ends or stop is called; stop returns what
// Run returned.
func runAgent(t *testing.T, a *Agent) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(deadline):
				t.Error("Run did not return after its context ended")
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

// entry returns the registry's entry for id, or nil.
func (e *testEnv) entry(id string) *Entry {
	e.t.Helper()
	entries, err := e.client.List(context.Background())
	require.NoError(e.t, err)
	for _, en := range entries {
		if en.ID == id {
			return &en
		}
	}
	return nil
}
