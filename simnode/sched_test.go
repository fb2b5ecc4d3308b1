package simnode

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestQueueFull(t *testing.T) {
	n, srv := startNode(t, Config{ID: "n8", TTFT: time.Minute, Slots: 1, QueueSize: 1})
	body := `{"model":"sim-model","stream":true,"messages":[{"role":"user","content":"hi"}]}`

	ctxA, cancelA := context.WithCancel(t.Context())
	ctxB, cancelB := context.WithCancel(t.Context())
	defer cancelA()
	defer cancelB()
	var wg sync.WaitGroup
	send := func(ctx context.Context) {
		wg.Go(func() {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/v1/chat/completions", strings.NewReader(body))
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				resp.Body.Close()
			}
		})
	}
	send(ctxA)
	waitStats(t, n, func(s Stats) bool { return s.InFlight == 1 }) // A takes the slot before B queues
	send(ctxB)
	waitStats(t, n, func(s Stats) bool { return s.InFlight == 1 && s.Waiting == 1 })

	resp := post(t, t.Context(), srv.URL+"/v1/chat/completions", body)
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	e := decodeError(t, resp)
	require.NotNil(t, e.Error.Code)
	require.Equal(t, "rate_limit_exceeded", *e.Error.Code)
	require.Equal(t, int64(1), n.Stats().Rejected)

	// A queued client that goes away leaves the queue.
	cancelB()
	waitStats(t, n, func(s Stats) bool { return s.Waiting == 0 && s.Aborted == 1 })
	require.Equal(t, int64(1), n.Stats().InFlight)

	cancelA()
	waitStats(t, n, func(s Stats) bool { return s.InFlight == 0 && s.Aborted == 2 })
	wg.Wait()
	for _, r := range n.Requests() {
		if r.Status != http.StatusTooManyRequests {
			require.True(t, r.Aborted)
			require.Equal(t, 499, r.Status)
			require.False(t, r.End.IsZero())
		}
	}
}

func TestSlotsFIFOAndUpdate(t *testing.T) {
	n := New(Config{ID: "n9", TTFT: NoDelay, InterTokenLatency: NoDelay, Slots: 1, QueueSize: 10})
	// Hold the only slot directly so that requests queue deterministically.
	require.Equal(t, admitted, n.acquire(t.Context(), "sim-model"))
	var (
		mu    sync.Mutex
		order []string
		wg    sync.WaitGroup
	)

	for i := range 3 {
		id := string(rune('a' + i))
		wg.Go(func() {
			req := httptest.NewRequest(http.MethodPost, "/v1/completions", strings.NewReader(`{"prompt":"x"}`))
			req.Header.Set("X-Request-Id", id)
			w := httptest.NewRecorder()
			n.ServeHTTP(w, req)
			mu.Lock()
			order = append(order, id)
			mu.Unlock()
		})
		waitStats(t, n, func(s Stats) bool { return s.Waiting == int64(i+1) })
	}
	// Raising the slot count admits all waiters without a release.
	n.Update(func(c *Config) { c.Slots = 10 })
	wg.Wait()
	require.Len(t, order, 3)
	n.release("sim-model")
	require.Equal(t, Stats{Received: 3, Completed: 3}, n.Stats())

	// With one slot again, queued requests are served in arrival order:
	// each one gets its first token only after its predecessor ended.
	n.Update(func(c *Config) { c.Slots = 1 })
	require.Equal(t, admitted, n.acquire(t.Context(), "sim-model"))
	for i := range 3 {
		wg.Go(func() {
			req := httptest.NewRequest(http.MethodPost, "/v1/completions", strings.NewReader(`{"prompt":"x"}`))
			n.ServeHTTP(httptest.NewRecorder(), req)
		})
		waitStats(t, n, func(s Stats) bool { return s.Waiting == int64(i+1) })
	}
	n.release("sim-model")
	wg.Wait()
	recs := n.Requests()[3:]
	require.Len(t, recs, 3)
	for i := 1; i < len(recs); i++ {
		require.False(t, recs[i].FirstToken.Before(recs[i-1].End), "request %d overtook its predecessor", i)
	}
}
