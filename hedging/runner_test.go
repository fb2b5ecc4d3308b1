package hedging

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/stretchr/testify/require"

	"github.com/ai-lb/ai-lb/health"
	"github.com/ai-lb/ai-lb/request"
)

// withFailover returns r with its request's failover policy replaced.
func withFailover(r *http.Request, f *request.Failover) *http.Request {
	req := request.FromContext(r.Context())
	req.Failover = f
	return r
}

func TestRunnerRetryBudget(t *testing.T) {
	for _, tc := range []struct {
		name  string
		err   error // the first attempt's failure
		calls int
	}{
		{"a 5xx draws on the budget", caddyhttp.Error(http.StatusBadGateway, context.DeadlineExceeded), 1},
		{"a refused connection does not", caddyhttp.Error(http.StatusBadGateway, reverseproxy.DialError{}), 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := testHandler(time.Hour)
			up := &fakeUpstream{behave: func(i int, w http.ResponseWriter, r *http.Request) error {
				if i == 1 {
					return tc.err
				}
				return sse(w, "data: ok\n\n")
			}}
			spent := &request.Failover{Retries: 2, Budget: health.NewBudget(0, 0, time.Minute)}
			r := withFailover(testRequest(context.Background()), spent)
			_ = h.ServeHTTP(httptest.NewRecorder(), r, up)
			require.Equal(t, tc.calls, up.numCalls())
		})
	}
}

func TestRunnerNoFailoverPolicyNoRetry(t *testing.T) {
	h := testHandler(time.Hour)
	up := &fakeUpstream{behave: func(i int, w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(http.StatusServiceUnavailable)
		return nil
	}}
	rec := httptest.NewRecorder()
	require.NoError(t, h.ServeHTTP(rec, withFailover(testRequest(context.Background()), nil), up))
	require.Equal(t, 1, up.numCalls())
	require.Equal(t, http.StatusServiceUnavailable, rec.Code)
}

// TestRunnerHedgeClientErrorWhileFirstRuns: a hedge that gets a 4xx does
// not end the request while the first attempt may still answer.
func TestRunnerHedgeClientErrorWhileFirstRuns(t *testing.T) {
	h := testHandler(10 * time.Millisecond)
	up := &fakeUpstream{behave: func(i int, w http.ResponseWriter, r *http.Request) error {
		if i == 2 {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte("cut body"))
			return nil
		}
		time.Sleep(60 * time.Millisecond)
		return sse(w, "data: first\n\n")
	}}
	rec := httptest.NewRecorder()
	require.NoError(t, h.ServeHTTP(rec, testRequest(context.Background()), up))
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, "data: first\n\n", rec.Body.String())
}

// TestRunnerLosersAreNoSamples: only the winner's time to first token
// feeds the adaptive delay.
func TestRunnerLosersAreNoSamples(t *testing.T) {
	h := testHandler(5 * time.Millisecond)
	up := &fakeUpstream{behave: func(i int, w http.ResponseWriter, r *http.Request) error {
		if i == 1 {
			return waitCancelled(w, r)
		}
		return sse(w, "data: 2\n\n")
	}}
	require.NoError(t, h.ServeHTTP(httptest.NewRecorder(), testRequest(context.Background()), up))
	win := h.delays.window("m")
	require.NotNil(t, win)
	win.mu.Lock()
	defer win.mu.Unlock()
	require.Len(t, win.samples, 1, "one sample: the winner's")
}

// TestRunnerEndsEveryAttemptContext: the winner's context ends with the
// request too, and its trailers reach the client.
func TestRunnerEndsEveryAttemptContext(t *testing.T) {
	h := testHandler(time.Hour)
	up := &fakeUpstream{behave: func(i int, w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Trailer", "X-Tokens")
		_ = sse(w, "data: 1\n\n")
		w.Header().Set("X-Tokens", "7")
		w.Header().Set(http.TrailerPrefix+"X-Late", "yes")
		return nil
	}}
	rec := httptest.NewRecorder()
	require.NoError(t, h.ServeHTTP(rec, testRequest(context.Background()), up))
	require.Error(t, up.ctxs[0].Err(), "the winner's context is cancelled once it is done")
	require.Equal(t, "7", rec.Header().Get("X-Tokens"))
	require.Equal(t, "yes", rec.Header().Get(http.TrailerPrefix+"X-Late"))
}

// TestRunnerNested: the ai_lb handler's failover runner around the hedge's
// runner does not retry what the hedge already failed over.
func TestRunnerNested(t *testing.T) {
	h := testHandler(time.Hour)
	up := &fakeUpstream{behave: func(i int, w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(http.StatusInternalServerError)
		return nil
	}}
	hedged := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return h.ServeHTTP(w, r, up)
	})
	outer := NewFailoverRunner(h.logger)
	r := testRequest(context.Background())
	rec := httptest.NewRecorder()
	require.NoError(t, outer.Run(rec, r, request.FromContext(r.Context()), hedged))
	require.Equal(t, 2, up.numCalls(), "the hedge's first attempt and its one retry, no more")
	require.Equal(t, http.StatusInternalServerError, rec.Code)
}

// TestRunnerStreamHeaderTimeout: a streamed attempt whose node sends no
// headers in time is cancelled, counted against the node, and retried.
func TestRunnerStreamHeaderTimeout(t *testing.T) {
	h := testHandler(time.Hour)
	up := &fakeUpstream{behave: func(i int, w http.ResponseWriter, r *http.Request) error {
		if i == 1 {
			return waitCancelled(w, r)
		}
		return sse(w, "data: 2\n\n")
	}}
	r := testRequest(context.Background())
	request.FromContext(r.Context()).Stream = true
	withFailover(r, &request.Failover{Retries: 1, StreamHeaderTimeout: 20 * time.Millisecond})
	rec := httptest.NewRecorder()
	require.NoError(t, h.ServeHTTP(rec, r, up))
	require.Equal(t, "data: 2\n\n", rec.Body.String())
	require.Equal(t, 2, up.numCalls())
}

// TestRunnerFailoverWithAnyPolicy: failover does not depend on the p2c
// policy recording its pick (Caddy's own policies do not); only "no node
// available" is not retried.
func TestRunnerFailoverWithAnyPolicy(t *testing.T) {
	for _, tc := range []struct {
		name  string
		first error
		calls int
	}{
		{"a node failed", caddyhttp.Error(http.StatusBadGateway, reverseproxy.DialError{}), 2},
		{"no node available", caddyhttp.Error(http.StatusServiceUnavailable, context.Canceled), 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
				calls++
				if calls == 1 {
					return tc.first
				}
				w.WriteHeader(http.StatusNoContent)
				return nil
			})
			r := testRequest(context.Background())
			_ = NewFailoverRunner(testHandler(time.Hour).logger).Run(httptest.NewRecorder(), r, request.FromContext(r.Context()), next)
			require.Equal(t, tc.calls, calls)
		})
	}
}
