package hedging

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/ai-lb/ai-lb/health"
	"github.com/ai-lb/ai-lb/request"
)

// Runner runs the attempts of one request through the rest of the route
// (reverse_proxy), each on the node the policy picks:
//
//   - The first attempt starts at once.
//   - A failure before the first byte (a connection failure, 429 or 5xx)
//     starts another attempt at once, on a node this request has not
//     tried when there is one, as the request's failover policy allows.
//     The failed answer is held as the reply of last resort.
//   - With hedging, another attempt starts when no attempt has produced a
//     first token (the first body byte of a 2xx answer; for SSE the first
//     `data:` line) after the hedge delay.
//   - The first attempt to produce a token wins and streams to the client;
//     every other attempt is cancelled at once (its upstream connection
//     is closed, so the engine stops). Nothing of a losing attempt reaches
//     the client.
//
// Each attempt's outcome is reported to the node it went to, for outlier
// ejection. The ai_lb handler runs one without hedging (failover only);
// the hedge handler runs one with hedging.
type Runner struct {
	// MaxHedges bounds the attempts started because the first token was
	// late (0: no hedging).
	MaxHedges int
	// HedgeDelay returns the hedge delay for a model, or false for none.
	HedgeDelay func(model string, now time.Time) (time.Duration, bool)
	// HedgeBudget bounds hedges over all requests.
	HedgeBudget *health.Budget
	// OnToken is called under the race lock with the winner's time to
	// first token.
	OnToken func(model string, now time.Time, ttft time.Duration)
	// ResponseHeaders adds X-AI-LB-Hedged, X-AI-LB-Attempts and
	// X-AI-LB-Node to responses.
	ResponseHeaders bool

	metrics *metrics // nil: not counted
	logger  *zap.Logger
}

// NewFailoverRunner returns a Runner that fails over but never hedges.
func NewFailoverRunner(logger *zap.Logger) *Runner {
	return &Runner{logger: logger}
}

// kind is why an attempt started.
type kind int

const (
	first kind = iota
	hedge
	retry
)

func (k kind) String() string {
	return [...]string{"primary", "hedge", "retry"}[k]
}

// Run runs the attempts of a request whose body req holds.
func (rn *Runner) Run(w http.ResponseWriter, r *http.Request, req *request.Info, next caddyhttp.Handler) error {
	began := time.Now()
	failover := req.Failover
	if failover == nil {
		failover = &request.Failover{}
	}
	rc := &race{w: w}
	rc.onWin = func(a *attempt) { rn.won(rc, a, req) }
	finished := make(chan *attempt, 1+rn.MaxHedges+failover.Retries)
	origRepl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	origVars, _ := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
	defer func() {
		// The winner's context too: nothing of this request runs on.
		rc.mu.Lock()
		for _, a := range rc.attempts {
			a.cancel()
		}
		rc.mu.Unlock()
	}()

	// start starts an attempt if it may (see prepare). Without hedging,
	// attempts never overlap: each runs on this goroutine and shares the
	// request's replacer and vars.
	x := &run{runner: rn, race: rc, r: r, req: req, failover: failover, next: next, began: began,
		inline: rn.MaxHedges == 0, origRepl: origRepl, origVars: origVars, finished: finished}
	start := func(k kind, now time.Time, free bool) bool {
		attempt := x.prepare(k, now, free)
		if attempt == nil {
			return false
		}
		if x.inline {
			attempt()
		} else {
			go attempt()
		}
		return true
	}

	now := time.Now()
	req.EnterRace()
	if !start(first, now, false) {
		return nil // the client left before the first attempt
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var delay time.Duration
	if rn.MaxHedges > 0 && rn.HedgeDelay != nil {
		var hedging bool
		if delay, hedging = rn.HedgeDelay(req.Model, now); hedging {
			timer.Reset(delay)
		}
	}
	running := 1
	var lastResort *attempt
	clientGone := r.Context().Done()

	for running > 0 {
		select {
		case <-timer.C:
			if start(hedge, time.Now(), false) {
				running++
				timer.Reset(delay) // the next hedge, if max_attempts allows
			}
		case a := <-finished:
			running--
			now := time.Now()
			if a.err == nil && a.panicked == nil && a.status >= 200 && a.status < 300 {
				rc.claim(a) // a 2xx answer with no body wins when it ends
			}
			a.slot.End(rn.outcome(rc, a, r, req.Stream), now)
			if rc.isWinner(a) {
				continue // wait for the losers to stop too
			}
			if a.panicked != nil && a.panicked != http.ErrAbortHandler {
				rn.logger.Error("attempt panicked", zap.Any("panic", a.panicked))
			}
			if rc.decided() {
				continue // a loser, cancelled
			}
			if lastResort == nil || !isClientError(lastResort.status) {
				lastResort = a // a client error is the most telling reply
			}
			if isClientError(a.status) || noUpstream(a) || req.Races() > a.racesBefore {
				// A client error is final. No node could be picked: there
				// is none to fail over to. A race inside the attempt (the
				// hedge handler's) has already failed over.
				continue
			}
			if start(retry, now, connectFailure(a)) {
				running++
			}
		case <-clientGone:
			clientGone = nil
			rc.mu.Lock()
			for _, a := range rc.attempts {
				a.cancel()
			}
			rc.mu.Unlock()
		}
	}

	rc.mu.Lock()
	winner := rc.winner
	rc.mu.Unlock()
	if winner == nil {
		return lastResortReply(w, r, lastResort)
	}
	if winner.index > 1 && rn.metrics != nil {
		rn.metrics.hedgesWon.Inc()
	}
	copyTrailers(w.Header(), winner.header)
	if winner.repl != origRepl {
		copyProxyPlaceholders(origRepl, winner.repl)
	}
	if winner.panicked != nil {
		panic(winner.panicked) // e.g. http.ErrAbortHandler: the stream broke
	}
	return winner.err
}

// run is one request's run of attempts.
type run struct {
	runner   *Runner
	race     *race
	r        *http.Request
	req      *request.Info
	failover *request.Failover
	next     caddyhttp.Handler
	began    time.Time
	inline   bool // attempts run one after another on the request's goroutine
	origRepl *caddy.Replacer
	origVars map[string]any
	finished chan *attempt

	hedges, retries int // started so far, under race.mu
}

// prepare starts an attempt's bookkeeping unless the race is decided,
// the client is gone, or the attempts or budgets of its kind are spent,
// and returns the function that runs it (nil when it may not start). The
// check and the append are one critical section with claim, so an attempt
// is never started just after a win without being cancelled.
func (x *run) prepare(k kind, now time.Time, free bool) func() {
	rn, rc, r, req, failover := x.runner, x.race, x.r, x.req, x.failover
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.winner != nil || r.Context().Err() != nil {
		return nil
	}
	switch k {
	case hedge:
		if x.hedges >= rn.MaxHedges {
			return nil
		}
		if !rn.HedgeBudget.Take(now) {
			if rn.metrics != nil {
				rn.metrics.budgetRefusals.Inc()
			}
			return nil
		}
		x.hedges++
	case retry:
		if x.retries >= failover.Retries || (failover.TryDuration > 0 && now.Sub(x.began) >= failover.TryDuration) {
			return nil
		}
		if !free && !failover.Budget.Take(now) {
			return nil
		}
		x.retries++
		health.CountRetry(free)
	}
	ctx, cancel := context.WithCancel(r.Context())
	a := &attempt{race: rc, index: len(rc.attempts) + 1, kind: k, start: now, cancel: cancel,
		done: make(chan struct{}), header: make(http.Header), slot: new(request.Attempt),
		racesBefore: req.Races(), repl: x.origRepl}
	if !x.inline {
		// Each attempt gets a replacer that reads through to the
		// request's but keeps its own writes, and its own vars:
		// reverse_proxy writes to both, and the attempts run at once.
		a.repl = caddy.NewEmptyReplacer()
		if x.origRepl != nil {
			a.repl.Map(x.origRepl.Get)
		}
		ctx = context.WithValue(ctx, caddy.ReplacerCtxKey, a.repl)
		ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, maps.Clone(x.origVars))
	}
	ctx = request.WithAttempt(ctx, a.slot)
	ar := r.WithContext(ctx)
	if !x.inline {
		ar = r.Clone(ctx)
	}
	if req.Body != nil {
		ar.Body = io.NopCloser(bytes.NewReader(req.Body))
		ar.ContentLength = int64(len(req.Body))
		ar.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(req.Body)), nil }
	}
	rc.attempts = append(rc.attempts, a)
	if rn.metrics != nil {
		rn.metrics.attempts.WithLabelValues(k.String()).Inc()
	}
	var headerTimer *time.Timer
	if timeout := failover.StreamHeaderTimeout; timeout > 0 && req.Stream {
		headerTimer = time.AfterFunc(timeout, func() {
			if !a.gotHeader.Load() {
				a.timedOut.Store(true)
				a.cancel()
			}
		})
	}
	return func() {
		defer func() {
			if headerTimer != nil {
				headerTimer.Stop()
			}
			a.panicked = recover()
			close(a.done) // before reporting, so a winner sees it ended
			x.finished <- a
		}()
		a.err = x.next.ServeHTTP(a, ar)
	}
}

// outcome is what a finished attempt says about its node. A streamed
// attempt that lost without even response headers from its node (which
// streaming servers send at once), while a later one produced a token,
// counts as a failure: the node is not answering.
func (rn *Runner) outcome(rc *race, a *attempt, r *http.Request, stream bool) health.Outcome {
	switch {
	case rc.isWinner(a) && a.panicked == nil:
		return health.Succeeded
	case rc.isWinner(a) && r.Context().Err() == nil:
		return health.Failed // the stream broke on the node's side
	case a.timedOut.Load():
		return health.Failed
	case r.Context().Err() != nil:
		return health.Abandoned // the client left
	case rc.decided():
		if stream && !a.gotHeader.Load() && rc.wonByLater(a) {
			return health.Failed
		}
		return health.Abandoned // it lost
	case a.status == http.StatusTooManyRequests:
		return health.Overloaded
	case a.status >= 500 || a.status == 0:
		return health.Failed
	default:
		return health.Succeeded
	}
}

// noUpstream reports an attempt that found no node to go to: reverse_proxy
// answers that with a 503 error of its own, before writing anything (a
// node's own 503 is an answer, written).
func noUpstream(a *attempt) bool {
	var he caddyhttp.HandlerError
	return a.status == 0 && errors.As(a.err, &he) && he.StatusCode == http.StatusServiceUnavailable
}

// connectFailure reports an attempt that never reached a node, or whose
// node never began to answer a streamed request (no headers by
// stream_header_timeout), so that trying another does not multiply work
// that engines are doing: such retries do not draw on the retry budget.
func connectFailure(a *attempt) bool {
	var dialErr reverseproxy.DialError
	return a.status == 0 && (errors.As(a.err, &dialErr) || a.timedOut.Load())
}

// won runs under the race lock when attempt a claims the race. The
// winner's first token and the losers' time so far feed the load model
// of their nodes.
func (rn *Runner) won(rc *race, a *attempt, req *request.Info) {
	now := time.Now()
	if !a.firstToken.IsZero() && a.status < 300 {
		if rn.OnToken != nil {
			rn.OnToken(req.Model, now, a.firstToken.Sub(a.start))
		}
		a.slot.FirstToken(req.Stream, a.firstToken)
		for _, other := range rc.attempts {
			select {
			case <-other.done: // it ended before: no bound on its node
			default:
				if other != a {
					other.slot.Lost(req.Stream, now)
				}
			}
		}
	}
	if rn.metrics != nil {
		for _, other := range rc.attempts {
			select {
			case <-other.done:
				continue // it had already ended
			default:
			}
			if other != a {
				rn.metrics.cancelled.Inc()
			}
		}
	}
	if rn.ResponseHeaders {
		hdr := rc.w.Header()
		hdr.Set("X-AI-LB-Hedged", fmt.Sprint(len(rc.attempts) > 1))
		hdr.Set("X-AI-LB-Attempts", fmt.Sprint(len(rc.attempts)))
		if a.repl != nil {
			if node, ok := a.repl.GetString("http.reverse_proxy.upstream.hostport"); ok {
				a.header.Set("X-AI-LB-Node", node)
			}
		}
	}
}

// lastResortReply answers when every attempt failed: the held answer if
// there was one, else the last error.
func lastResortReply(w http.ResponseWriter, r *http.Request, a *attempt) error {
	switch {
	case a == nil:
		return caddyhttp.Error(http.StatusBadGateway, fmt.Errorf("no attempt finished"))
	case r.Context().Err() != nil:
		return nil // the client is gone
	case a.status >= 300:
		a.writeHeld(w)
		return nil
	case a.err != nil:
		return a.err
	default:
		return caddyhttp.Error(http.StatusBadGateway, fmt.Errorf("attempt failed: %v", a.panicked))
	}
}

// copyTrailers copies the trailers the winner's handler set after its
// body (announced ones, and those with http.TrailerPrefix) to the client.
func copyTrailers(dst, src http.Header) {
	for _, name := range src.Values("Trailer") {
		if v, ok := src[http.CanonicalHeaderKey(name)]; ok {
			dst[http.CanonicalHeaderKey(name)] = v
		}
	}
	for k, v := range src {
		if len(k) > len(http.TrailerPrefix) && k[:len(http.TrailerPrefix)] == http.TrailerPrefix {
			dst[k] = v
		}
	}
}

// proxyPlaceholders are the reverse_proxy placeholders copied from the
// winning attempt to the request, so the access log names the node that
// answered.
var proxyPlaceholders = []string{
	"upstream.address", "upstream.hostport", "upstream.host", "upstream.port",
	"upstream.requests", "upstream.max_requests", "upstream.fails",
	"upstream.latency", "upstream.latency_ms", "upstream.duration", "upstream.duration_ms",
	"status_code", "status_text", "duration", "duration_ms", "retries",
}

func copyProxyPlaceholders(dst, src *caddy.Replacer) {
	if dst == nil || src == nil {
		return
	}
	for _, k := range proxyPlaceholders {
		if v, ok := src.Get("http.reverse_proxy." + k); ok {
			dst.Set("http.reverse_proxy."+k, v)
		}
	}
}
