package hedging

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/ai-lb/ai-lb/health"
	"github.com/ai-lb/ai-lb/request"
)

// testHandler is a Handler set up as Provision would, without Caddy.
func testHandler(delay time.Duration) *Handler {
	h := &Handler{Delay: caddy.Duration(delay), MaxAttempts: 2, Budget: ptr(1.0), BudgetMin: ptr(1),
		BudgetWindow: caddy.Duration(time.Minute), MaxBodySize: 1 << 10, Paths: defaultPaths,
		ResponseHeaders: true, Window: caddy.Duration(time.Minute), MinSamples: 20,
		MinDelay: caddy.Duration(time.Millisecond), MaxDelay: caddy.Duration(time.Minute)}
	h.logger = zap.NewNop()
	h.setUp(health.NewBudget(*h.Budget, *h.BudgetMin, time.Duration(h.BudgetWindow)), newMetrics())
	return h
}

// testNodes is the node health state the fake upstreams report to.
var testNodes = health.NewTracker(nil)

// testRequest is a hedgeable request as the ai_lb handler passes it on.
func testRequest(ctx context.Context) *http.Request {
	body := `{"model":"m","stream":true}`
	r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", strings.NewReader(body))
	repl := caddy.NewEmptyReplacer()
	ctx = context.WithValue(ctx, caddy.ReplacerCtxKey, repl)
	ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, map[string]any{})
	ctx = request.NewContext(ctx, &request.Info{Model: "m", Body: []byte(body), Failover: &request.Failover{Retries: 1}})
	return r.WithContext(ctx)
}

// fakeUpstream is a next handler whose attempts behave as told by
// behave(index), the attempt's 1-based number.
type fakeUpstream struct {
	mu       sync.Mutex
	calls    int
	ctxs     []context.Context
	behave   func(i int, w http.ResponseWriter, r *http.Request) error
	finished atomic.Int32
}

func (f *fakeUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	f.mu.Lock()
	f.calls++
	i := f.calls
	f.ctxs = append(f.ctxs, r.Context())
	f.mu.Unlock()
	defer f.finished.Add(1)
	body, err := io.ReadAll(r.Body)
	if err != nil || string(body) != `{"model":"m","stream":true}` {
		panic("attempt without the request body")
	}
	// As reverse_proxy and the p2c policy do: pick a node, begin the
	// attempt on it, and name it in the replacer.
	node := "node-" + string(rune('0'+i))
	request.AttemptFrom(r.Context()).Begin(testNodes.Node(node), request.FromContext(r.Context()), time.Now())
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	repl.Set("http.reverse_proxy.upstream.hostport", node)
	return f.behave(i, w, r)
}

func (f *fakeUpstream) numCalls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// waitCancelled is what reverse_proxy does when its request is cancelled
// before an answer: it records a 499 and returns no error.
func waitCancelled(w http.ResponseWriter, r *http.Request) error {
	<-r.Context().Done()
	w.WriteHeader(499)
	return nil
}

func sse(w http.ResponseWriter, events ...string) error {
	return stream(w, "text/event-stream", events...)
}

// stream answers 200 with parts written and flushed one by one, as
// reverse_proxy copies a stream.
func stream(w http.ResponseWriter, contentType string, parts ...string) error {
	w.Header().Set("Content-Type", contentType)
	w.WriteHeader(http.StatusOK)
	for _, part := range parts {
		if _, err := w.Write([]byte(part)); err != nil {
			panic(http.ErrAbortHandler) // as reverse_proxy does
		}
		_ = http.NewResponseController(w).Flush()
	}
	return nil
}

func TestServeHedgeWinsAndCancelsFirst(t *testing.T) {
	h := testHandler(20 * time.Millisecond)
	up := &fakeUpstream{behave: func(i int, w http.ResponseWriter, r *http.Request) error {
		if i == 1 {
			return waitCancelled(w, r)
		}
		return sse(w, ": hi\n\n", "data: 2a\n\n", "data: 2b\n\n", "data: [DONE]\n\n")
	}}
	rec := httptest.NewRecorder()
	r := testRequest(context.Background())
	require.NoError(t, h.ServeHTTP(rec, r, up))
	require.Equal(t, 2, up.numCalls())
	require.Equal(t, ": hi\n\ndata: 2a\n\ndata: 2b\n\ndata: [DONE]\n\n", rec.Body.String())
	require.Equal(t, "true", rec.Header().Get("X-AI-LB-Hedged"))
	require.Equal(t, "2", rec.Header().Get("X-AI-LB-Attempts"))
	require.Equal(t, "node-2", rec.Header().Get("X-AI-LB-Node"))
	require.Error(t, up.ctxs[0].Err(), "the loser is cancelled")
	require.EqualValues(t, 2, up.finished.Load(), "ServeHTTP returns after every attempt")

	// The winner's placeholders are copied to the request's replacer.
	node, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer).GetString("http.reverse_proxy.upstream.hostport")
	require.Equal(t, "node-2", node)
}

func TestServeFastFirstNotHedged(t *testing.T) {
	h := testHandler(time.Hour)
	up := &fakeUpstream{behave: func(i int, w http.ResponseWriter, r *http.Request) error {
		return sse(w, "data: 1\n\n", "data: [DONE]\n\n")
	}}
	rec := httptest.NewRecorder()
	require.NoError(t, h.ServeHTTP(rec, testRequest(context.Background()), up))
	require.Equal(t, 1, up.numCalls())
	require.Equal(t, "false", rec.Header().Get("X-AI-LB-Hedged"))
	require.Equal(t, "1", rec.Header().Get("X-AI-LB-Attempts"))
	require.Equal(t, "node-1", rec.Header().Get("X-AI-LB-Node"))
}

func TestServeFailureStartsNextAttemptAtOnce(t *testing.T) {
	h := testHandler(time.Hour) // the delay never passes
	up := &fakeUpstream{behave: func(i int, w http.ResponseWriter, r *http.Request) error {
		if i == 1 {
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = w.Write([]byte("boom"))
			return nil
		}
		return sse(w, "data: ok\n\n")
	}}
	rec := httptest.NewRecorder()
	require.NoError(t, h.ServeHTTP(rec, testRequest(context.Background()), up))
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, "data: ok\n\n", rec.Body.String())
}

func TestServeAllFailLastResort(t *testing.T) {
	h := testHandler(time.Hour)
	up := &fakeUpstream{behave: func(i int, w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("X-Attempt", string(rune('0'+i)))
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte("unavailable"))
		return nil
	}}
	rec := httptest.NewRecorder()
	require.NoError(t, h.ServeHTTP(rec, testRequest(context.Background()), up))
	require.Equal(t, 2, up.numCalls())
	require.Equal(t, http.StatusServiceUnavailable, rec.Code)
	require.Equal(t, "unavailable", rec.Body.String())
	require.Equal(t, "2", rec.Header().Get("X-Attempt"), "the last answer")

	// Errors without an answer come back as the error.
	h = testHandler(time.Hour)
	up = &fakeUpstream{behave: func(int, http.ResponseWriter, *http.Request) error {
		return caddyhttp.Error(http.StatusBadGateway, io.ErrUnexpectedEOF)
	}}
	err := h.ServeHTTP(httptest.NewRecorder(), testRequest(context.Background()), up)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	require.Equal(t, 2, up.numCalls())
}

func TestServeClientErrorEndsAtOnce(t *testing.T) {
	h := testHandler(time.Hour)
	up := &fakeUpstream{behave: func(i int, w http.ResponseWriter, r *http.Request) error {
		if i == 1 {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte("bad"))
			return nil
		}
		return waitCancelled(w, r)
	}}
	rec := httptest.NewRecorder()
	require.NoError(t, h.ServeHTTP(rec, testRequest(context.Background()), up))
	require.Equal(t, http.StatusBadRequest, rec.Code)
	require.Equal(t, "bad", rec.Body.String())
	require.Equal(t, 1, up.numCalls(), "a client error is final: no hedge")
}

func TestServeClientGoneStartsNoAttempt(t *testing.T) {
	h := testHandler(time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan struct{})
	up := &fakeUpstream{behave: func(i int, w http.ResponseWriter, r *http.Request) error {
		if i == 1 {
			close(started)
		}
		return waitCancelled(w, r)
	}}
	done := make(chan error)
	go func() { done <- h.ServeHTTP(httptest.NewRecorder(), testRequest(ctx), up) }()
	<-started
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("ServeHTTP did not return after the client left")
	}
	require.Equal(t, 1, up.numCalls(), "no attempt may start once the client is gone")
	require.True(t, h.runner.HedgeBudget.Take(time.Now()), "the budget was not spent")
}

func TestServeNotHedgeable(t *testing.T) {
	h := testHandler(time.Millisecond)
	for _, tc := range []struct {
		name string
		mod  func(r *http.Request) *http.Request
	}{
		{"GET", func(r *http.Request) *http.Request { r.Method = http.MethodGet; return r }},
		{"other path", func(r *http.Request) *http.Request { r.URL.Path = "/tokenize"; return r }},
		{"body over the cap", func(r *http.Request) *http.Request {
			return r.WithContext(request.NewContext(r.Context(),
				&request.Info{Model: "m", Body: []byte(strings.Repeat("x", 2<<10))}))
		}},
		{"body not buffered", func(r *http.Request) *http.Request {
			return r.WithContext(request.NewContext(r.Context(), &request.Info{Model: "m"}))
		}},
		{"no ai_lb handler", func(r *http.Request) *http.Request {
			return r.WithContext(request.NewContext(r.Context(), nil))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			var got http.ResponseWriter
			calls := 0
			next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
				calls++
				got = w
				time.Sleep(20 * time.Millisecond) // well past the delay
				return nil
			})
			require.NoError(t, h.ServeHTTP(rec, tc.mod(testRequest(context.Background())), next))
			require.Equal(t, 1, calls)
			require.Same(t, rec, got, "passed through with the client's writer")
		})
	}
}

func TestServeBudgetRefusesHedge(t *testing.T) {
	h := testHandler(5 * time.Millisecond)
	h.runner.HedgeBudget = health.NewBudget(0, 0, time.Minute) // nothing allowed
	up := &fakeUpstream{behave: func(i int, w http.ResponseWriter, r *http.Request) error {
		time.Sleep(50 * time.Millisecond)
		return sse(w, "data: 1\n\n")
	}}
	rec := httptest.NewRecorder()
	require.NoError(t, h.ServeHTTP(rec, testRequest(context.Background()), up))
	require.Equal(t, 1, up.numCalls())
	require.Equal(t, "data: 1\n\n", rec.Body.String())
}

func TestServeBrokenWinnerAbortsHandler(t *testing.T) {
	h := testHandler(time.Hour)
	up := &fakeUpstream{behave: func(i int, w http.ResponseWriter, r *http.Request) error {
		_ = sse(w, "data: 1\n\n")
		panic(http.ErrAbortHandler) // the upstream stream broke mid-way
	}}
	rec := httptest.NewRecorder()
	require.PanicsWithValue(t, http.ErrAbortHandler, func() {
		_ = h.ServeHTTP(rec, testRequest(context.Background()), up)
	})
	require.Equal(t, "data: 1\n\n", rec.Body.String())
}

func TestServeEmptyAnswerWinsWhenItEnds(t *testing.T) {
	h := testHandler(time.Hour)
	up := &fakeUpstream{behave: func(i int, w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("X-Empty", "yes")
		w.WriteHeader(http.StatusNoContent)
		return nil
	}}
	rec := httptest.NewRecorder()
	require.NoError(t, h.ServeHTTP(rec, testRequest(context.Background()), up))
	require.Equal(t, 1, up.numCalls())
	require.Equal(t, http.StatusNoContent, rec.Code)
	require.Equal(t, "yes", rec.Header().Get("X-Empty"))
	require.Equal(t, "false", rec.Header().Get("X-AI-LB-Hedged"))
}
