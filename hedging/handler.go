// Package hedging is the `hedge` HTTP handler: when the first token of an
// LLM request is late, it races a second attempt on another node, streams
// the first attempt to produce a token, and cancels the others at once so
// their GPUs stop generating.
package hedging

import (
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/ai-lb/ai-lb/health"
	"github.com/ai-lb/ai-lb/request"
)

// Handler is the `hedge` HTTP handler. Placed between the `ai_lb` handler
// and `reverse_proxy`, it runs the rest of the route once per attempt:
//
//   - Attempt 1 starts at once. If no attempt has produced a first token
//     (the first body byte of a 2xx answer; for SSE the first `data:` line;
//     for NDJSON the first record with content) after the hedge delay, another attempt starts, on a node this request
//     has not tried when there is one, up to max_attempts.
//   - The first attempt to produce a token wins and streams to the client;
//     every other attempt is cancelled at once (its upstream connection is
//     closed, so the engine stops). Nothing of a losing attempt reaches the
//     client.
//   - A failure (connection error, 429, 5xx) before any token starts the
//     next attempt at once, as the ai_lb handler's failover settings allow
//     (retries, try_duration, retry budget), and is held as the reply of
//     last resort. A client error (4xx) ends the request, unless another
//     attempt is still running.
//   - A budget bounds the hedges to a fraction of requests.
//
// It runs the attempts with a Runner; see there for how a winner is
// picked and how outcomes reach node health.
//
// Only requests the ai_lb handler has buffered are hedged, and only POSTs
// to the configured paths with bodies up to max_body_size; others pass
// through once.
type Handler struct {
	// Delay is a fixed hedge delay. With Percentile set it is only the
	// delay used until enough samples exist (0: no hedging until then).
	// With neither set: 1s until the adaptive delay takes over, so that a
	// node that never answers is raced from the first request on.
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

	// MaxAttempts bounds the attempts per request started by hedging, the
	// first included (retries after failures are the ai_lb handler's
	// `retries`). Default: 2.
	MaxAttempts int `json:"max_attempts,omitempty"`

	// Budget is the largest fraction of hedges over hedgeable requests in
	// BudgetWindow, on top of BudgetMin. Retries after failures have a
	// budget of their own (the ai_lb handler's retry_budget). Unset (nil):
	// 0.1. 0: no proportional allowance, only BudgetMin hedges per window.
	Budget *float64 `json:"budget,omitempty"`

	// BudgetWindow is the sliding window of the budget. Default: 10s.
	BudgetWindow caddy.Duration `json:"budget_window,omitempty"`

	// BudgetMin is a number of hedges always allowed per window, so that a
	// quiet service can still hedge. Unset (nil): 1. 0: no floor, only the
	// Budget fraction. With Budget 0 as well no hedge is ever made (retries
	// after failures still are).
	BudgetMin *int `json:"budget_min,omitempty"`

	// MaxBodySize is the largest request body hedged; larger ones are
	// proxied once. It must not exceed the ai_lb handler's limit.
	// Default: 1 MiB.
	MaxBodySize int64 `json:"max_body_size,omitempty"`

	// Paths are the request paths hedged (POST only). Default:
	// /v1/chat/completions, /v1/completions, /v1/embeddings, and Ollama's
	// /api/chat, /api/generate, /api/embed, /api/embeddings.
	Paths []string `json:"paths,omitempty"`

	// ResponseHeaders adds X-AI-LB-Hedged (true|false), X-AI-LB-Attempts
	// and X-AI-LB-Node (the winning node) to responses.
	ResponseHeaders bool `json:"response_headers,omitempty"`

	logger *zap.Logger
	delays *delays
	runner *Runner
}

// Defaults.
const (
	defaultPercentile   = 95
	defaultInitialDelay = time.Second
	defaultWindow       = 30 * time.Second
	defaultMinSamples   = 20
	defaultMinDelay     = 10 * time.Millisecond
	defaultMaxDelay     = 30 * time.Second
	defaultMaxAttempts  = 2
	defaultBudget       = 0.1
	defaultBudgetWin    = 10 * time.Second
	defaultBudgetMin    = 1
	defaultMaxBody      = 1 << 20
)

var defaultPaths = []string{"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/api/chat", "/api/generate", "/api/embed", "/api/embeddings"}

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
		h.Percentile, h.Delay = defaultPercentile, caddy.Duration(defaultInitialDelay)
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
	m, err := registerMetrics(ctx.GetMetricsRegistry())
	if err != nil {
		return err
	}
	h.setUp(health.NewBudgetOr(h.Budget, h.BudgetMin, defaultBudget, defaultBudgetMin, time.Duration(h.BudgetWindow)), m)
	return nil
}

// setUp makes the handler's runner, with its hedge budget and metrics.
func (h *Handler) setUp(budget *health.Budget, m *metrics) {
	h.delays = new(delays)
	h.runner = &Runner{
		MaxHedges:       h.MaxAttempts - 1,
		HedgeDelay:      h.delay,
		HedgeBudget:     budget,
		OnToken:         h.observeTTFT,
		ResponseHeaders: h.ResponseHeaders,
		metrics:         m,
		logger:          h.logger,
	}
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
	h.runner.HedgeBudget.Request(time.Now())
	return h.runner.Run(w, r, req, next)
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

// observeTTFT records a winner's time to first token for the adaptive
// delay and the histogram.
func (h *Handler) observeTTFT(model string, now time.Time, ttft time.Duration) {
	if win := h.delays.window(model); win != nil {
		win.add(now, ttft)
	}
	h.runner.metrics.ttft.WithLabelValues(model).Observe(ttft.Seconds())
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
