// Package hedging is the `hedge` HTTP handler: when the first token of an
// LLM request is late, it races a second attempt on another node, streams
// the first attempt to produce a token, and cancels the others at once so
// their GPUs stop generating.
package hedging

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/ai-lb/ai-lb/request"
)

// Handler is the `hedge` HTTP handler. Placed between the `ai_lb` handler
// and `reverse_proxy`, it runs the rest of the route once per attempt:
//
//   - Attempt 1 starts at once. If no attempt has produced a first token
//     (the first body byte of a 2xx answer; for SSE the first `data:` line)
//     after the hedge delay, another attempt starts, on a node this request
//     has not tried when there is one, up to max_attempts.
//   - The first attempt to produce a token wins and streams to the client;
//     every other attempt is cancelled at once (its upstream connection is
//     closed, so the engine stops). Nothing of a losing attempt reaches the
//     client.
//   - A retryable failure (connection error, 429, 5xx) before any token
//     starts the next attempt at once, and is held as the reply of last
//     resort. A client error (4xx) ends the request at once.
//   - A budget bounds the extra attempts to a fraction of requests.
//
// Only requests the ai_lb handler has buffered are hedged, and only POSTs
// to the configured paths with bodies up to max_body_size; others pass
// through once.
type Handler struct {
	// Delay is a fixed hedge delay. With Percentile set it is only the
	// delay used until enough samples exist (0: no hedging until then).
	Delay caddy.Duration `json:"delay,omitempty"`

	// Percentile (0-100) makes the delay adaptive: that percentile of the
	// recent time-to-first-token of the request's model. Default: 95 when
	// Delay is not set, else 0 (a fixed delay).
	Percentile float64 `json:"percentile,omitempty"`

	// Window is how far back adaptive samples count. Default: 30s.
	Window caddy.Duration `json:"window,omitempty"`

	// MinSamples is how many samples a model needs in the window before
	// its delay is adaptive. Default: 20.
	MinSamples int `json:"min_samples,omitempty"`

	// MinDelay and MaxDelay clamp the adaptive delay. Default: 10ms, 30s.
	MinDelay caddy.Duration `json:"min_delay,omitempty"`
	MaxDelay caddy.Duration `json:"max_delay,omitempty"`

	// MaxAttempts bounds the attempts per request, the first included.
	// Default: 2.
	MaxAttempts int `json:"max_attempts,omitempty"`

	// Budget is the largest fraction of extra attempts (hedges and
	// retries after a failure alike) over hedgeable requests in
	// BudgetWindow, on top of BudgetMin. Unset (nil): 0.1. 0: no
	// proportional allowance, only BudgetMin extra attempts per window.
	Budget *float64 `json:"budget,omitempty"`

	// BudgetWindow is the sliding window of the budget. Default: 10s.
	BudgetWindow caddy.Duration `json:"budget_window,omitempty"`

	// BudgetMin is a number of extra attempts always allowed per window,
	// so that a quiet service can still hedge. Unset (nil): 1. 0: no
	// floor, only the Budget fraction. With Budget 0 as well no extra
	// attempt is ever made, neither a hedge nor a retry after a failure:
	// each request gets one attempt (reverse_proxy's own retries within
	// it still apply).
	BudgetMin *int `json:"budget_min,omitempty"`

	// MaxBodySize is the largest request body hedged; larger ones are
	// proxied once. It must not exceed the ai_lb handler's limit.
	// Default: 1 MiB.
	MaxBodySize int64 `json:"max_body_size,omitempty"`

	// Paths are the request paths hedged (POST only). Default:
	// /v1/chat/completions, /v1/completions, /v1/embeddings.
	Paths []string `json:"paths,omitempty"`

	// ResponseHeaders adds X-AI-LB-Hedged (true|false), X-AI-LB-Attempts
	// and X-AI-LB-Node (the winning node) to responses.
	ResponseHeaders bool `json:"response_headers,omitempty"`

	logger  *zap.Logger
	budget  *budget
	delays  *delays
	metrics *metrics
}

// Defaults.
const (
	defaultPercentile  = 95
	defaultWindow      = 30 * time.Second
	defaultMinSamples  = 20
	defaultMinDelay    = 10 * time.Millisecond
	defaultMaxDelay    = 30 * time.Second
	defaultMaxAttempts = 2
	defaultBudget      = 0.1
	defaultBudgetWin   = 10 * time.Second
	defaultBudgetMin   = 1
	defaultMaxBody     = 1 << 20
)

var defaultPaths = []string{"/v1/chat/completions", "/v1/completions", "/v1/embeddings"}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.hedge",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets defaults and registers the metrics.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if h.Delay == 0 && h.Percentile == 0 {
		h.Percentile = defaultPercentile
	}
	if h.Window == 0 {
		h.Window = caddy.Duration(defaultWindow)
	}
	if h.MinSamples == 0 {
		h.MinSamples = defaultMinSamples
	}
	if h.MinDelay == 0 {
		h.MinDelay = caddy.Duration(defaultMinDelay)
	}
	if h.MaxDelay == 0 {
		h.MaxDelay = caddy.Duration(defaultMaxDelay)
	}
	if h.MaxAttempts == 0 {
		h.MaxAttempts = defaultMaxAttempts
	}
	if h.BudgetWindow == 0 {
		h.BudgetWindow = caddy.Duration(defaultBudgetWin)
	}
	if h.MaxBodySize == 0 {
		h.MaxBodySize = defaultMaxBody
	}
	if len(h.Paths) == 0 {
		h.Paths = defaultPaths
	}
	ratio, floor := defaultBudget, defaultBudgetMin
	if h.Budget != nil {
		ratio = *h.Budget
	}
	if h.BudgetMin != nil {
		floor = *h.BudgetMin
	}
	h.budget = newBudget(ratio, floor, time.Duration(h.BudgetWindow))
	h.delays = new(delays)
	m, err := registerMetrics(ctx.GetMetricsRegistry())
	if err != nil {
		return err
	}
	h.metrics = m
	return nil
}

// Validate checks the configuration.
func (h *Handler) Validate() error {
	switch {
	case h.Delay < 0:
		return fmt.Errorf("delay: must not be negative")
	case h.Percentile < 0 || h.Percentile > 100:
		return fmt.Errorf("percentile: must be within 0-100, got %v", h.Percentile)
	case h.MinDelay > h.MaxDelay:
		return fmt.Errorf("min_delay: %v exceeds max_delay %v", time.Duration(h.MinDelay), time.Duration(h.MaxDelay))
	case h.MaxAttempts < 1 || h.MaxAttempts > 10:
		return fmt.Errorf("max_attempts: must be within 1-10, got %d", h.MaxAttempts)
	case h.Budget != nil && (*h.Budget < 0 || *h.Budget > 1):
		return fmt.Errorf("budget: must be within 0-1 (a fraction of requests), got %v", *h.Budget)
	case h.BudgetMin != nil && *h.BudgetMin < 0:
		return fmt.Errorf("budget_min: must not be negative, got %d", *h.BudgetMin)
	case h.Window < 0:
		return fmt.Errorf("window: must not be negative")
	case h.BudgetWindow < 0:
		return fmt.Errorf("budget_window: must not be negative")
	case h.MinSamples < 0:
		return fmt.Errorf("min_samples: must not be negative")
	case h.MaxBodySize < 0:
		return fmt.Errorf("max_body_size: must not be negative")
	}
	return nil
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	req := request.FromContext(r.Context())
	if !h.hedgeable(r, req) {
		return next.ServeHTTP(w, r)
	}
	h.budget.request(time.Now())
	return h.serveRace(w, r, req, next)
}

// hedgeable reports whether a request may be sent more than once.
func (h *Handler) hedgeable(r *http.Request, req *request.Info) bool {
	return h.MaxAttempts > 1 && r.Method == http.MethodPost && req != nil && req.Body != nil &&
		int64(len(req.Body)) <= h.MaxBodySize && slices.Contains(h.Paths, r.URL.Path)
}

// delay returns the hedge delay for a model, or false for no hedging.
func (h *Handler) delay(model string, now time.Time) (time.Duration, bool) {
	if h.Percentile > 0 {
		if win := h.delays.window(model); win != nil {
			if d, ok := win.percentile(now, h.Percentile, time.Duration(h.Window), h.MinSamples); ok {
				return min(max(d, time.Duration(h.MinDelay)), time.Duration(h.MaxDelay)), true
			}
		}
	}
	return time.Duration(h.Delay), h.Delay > 0
}

// serveRace runs the attempts of one hedged request.
func (h *Handler) serveRace(w http.ResponseWriter, r *http.Request, req *request.Info, next caddyhttp.Handler) error {
	rc := &race{w: w}
	rc.onWin = func(a *attempt) { h.won(rc, a, req.Model) }
	finished := make(chan *attempt, h.MaxAttempts)
	origRepl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	origVars, _ := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)

	// start starts an attempt unless the race is decided, the client is
	// gone, or (for extra attempts) the attempts or the budget are spent.
	// The check and the append are one critical section with claim, so an
	// attempt is never started just after a win without being cancelled.
	start := func(now time.Time) bool {
		rc.mu.Lock()
		defer rc.mu.Unlock()
		if rc.winner != nil || len(rc.attempts) >= h.MaxAttempts || r.Context().Err() != nil {
			return false
		}
		if len(rc.attempts) > 0 && !h.budget.take(now) {
			h.metrics.budgetRefusals.Inc()
			return false
		}
		ctx, cancel := context.WithCancel(r.Context())
		a := &attempt{race: rc, index: len(rc.attempts) + 1, start: now, cancel: cancel,
			done: make(chan struct{}), header: make(http.Header)}
		// Each attempt gets a replacer that reads through to the request's
		// but keeps its own writes, and its own vars: reverse_proxy writes
		// to both, and the attempts run at once.
		repl := caddy.NewEmptyReplacer()
		if origRepl != nil {
			repl.Map(origRepl.Get)
		}
		ctx = context.WithValue(ctx, caddy.ReplacerCtxKey, repl)
		ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, maps.Clone(origVars))
		ar := r.Clone(ctx)
		ar.Body = io.NopCloser(bytes.NewReader(req.Body))
		ar.ContentLength = int64(len(req.Body))
		rc.attempts = append(rc.attempts, a)
		h.metrics.attempts.WithLabelValues(role(a.index)).Inc()
		ar.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(req.Body)), nil }
		a.repl = repl
		go func() {
			defer func() {
				a.panicked = recover()
				close(a.done) // before reporting, so a winner sees it ended
				finished <- a
			}()
			a.err = next.ServeHTTP(a, ar)
		}()
		return true
	}

	now := time.Now()
	if !start(now) {
		return nil // the client left before the first attempt
	}
	delay, hedging := h.delay(req.Model, now)
	timer := time.NewTimer(delay)
	defer timer.Stop()
	if !hedging {
		timer.Stop()
	}
	running := 1
	var lastFailed *attempt
	clientGone := r.Context().Done()

	for running > 0 {
		select {
		case <-timer.C:
			if start(time.Now()) {
				running++
				timer.Reset(delay) // the next hedge, if max_attempts allows
			}
		case a := <-finished:
			running--
			if a.err == nil && a.panicked == nil && a.status >= 200 && a.status < 300 {
				rc.claim(a) // a 2xx answer with no body wins when it ends
			}
			if h.isWinner(rc, a) {
				continue // wait for the losers to stop too
			}
			if a.panicked != nil && a.panicked != http.ErrAbortHandler {
				h.logger.Error("hedged attempt panicked", zap.Any("panic", a.panicked))
			}
			if h.isWinner(rc, nil) {
				continue // a loser, cancelled
			}
			lastFailed = a
			if start(time.Now()) {
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
		return h.lastResort(w, r, lastFailed)
	}
	if winner.index > 1 {
		h.metrics.hedgesWon.Inc()
	}
	copyProxyPlaceholders(origRepl, winner.repl)
	if winner.panicked != nil {
		panic(winner.panicked) // e.g. http.ErrAbortHandler: the stream broke
	}
	return winner.err
}

func (h *Handler) isWinner(rc *race, a *attempt) bool {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if a == nil {
		return rc.winner != nil
	}
	return rc.winner == a
}

// won runs under the race lock when attempt a claims the race.
func (h *Handler) won(rc *race, a *attempt, model string) {
	now := time.Now()
	token := !a.firstToken.IsZero() && a.status < 300
	if token {
		h.observeTTFT(model, now, a.firstToken.Sub(a.start))
	}
	for _, other := range rc.attempts {
		select {
		case <-other.done:
			continue // it had already failed
		default:
		}
		if other == a {
			continue
		}
		h.metrics.cancelled.Inc()
		if token {
			// It was at least this slow: count it too, so that winners
			// alone do not drag the percentile down.
			h.observeTTFT(model, now, now.Sub(other.start))
		}
	}
	if h.ResponseHeaders {
		hdr := rc.w.Header()
		hdr.Set("X-AI-LB-Hedged", fmt.Sprint(len(rc.attempts) > 1))
		hdr.Set("X-AI-LB-Attempts", fmt.Sprint(len(rc.attempts)))
		if node, ok := a.repl.GetString("http.reverse_proxy.upstream.hostport"); ok {
			a.header.Set("X-AI-LB-Node", node)
		}
	}
}

func (h *Handler) observeTTFT(model string, now time.Time, ttft time.Duration) {
	if win := h.delays.window(model); win != nil {
		win.add(now, ttft)
	}
	h.metrics.ttft.WithLabelValues(model).Observe(ttft.Seconds())
}

// lastResort answers when every attempt failed: the last upstream answer
// if there was one, else the last error.
func (h *Handler) lastResort(w http.ResponseWriter, r *http.Request, a *attempt) error {
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

func role(index int) string {
	if index == 1 {
		return "primary"
	}
	return "hedge"
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
