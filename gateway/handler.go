// Package gateway is the front door of ai-lb, for OpenAI's API and
// Ollama's: the `ai_lb` HTTP handler reads each request's model once,
// answers what the registry alone can answer, and turns every failure into
// an error in the API's shape.
package gateway

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/ai-lb/ai-lb/health"
	"github.com/ai-lb/ai-lb/hedging"
	"github.com/ai-lb/ai-lb/registry"
	"github.com/ai-lb/ai-lb/request"
)

// Handler is the `ai_lb` HTTP handler, placed before `reverse_proxy`.
//
// For requests with a body it reads the body once (bounded), finds the
// model without decoding the whole document, and hands both to the rest
// of the route (the hedge handler and the `dynamic ai_lb` source). It
// answers GET /v1/models, GET /v1/models/{id} and GET /health from the
// registry, and Ollama's GET /api/tags, /api/ps and /api/version (see
// serveOllama). Client errors and proxy failures come back as OpenAI-style
// JSON errors, or on /api/* as Ollama's {"error":"..."}.
//
// It fails over: a connection failure, or a 429 or 5xx answer, before
// any byte reached the client is retried at once on another node, within
// Retries, TryDuration and the retry budget; refused connections never
// draw on the budget. With a hedge handler in the route, the hedge runs
// the attempts under the same settings.
type Handler struct {
	// MaxBodySize is the largest request body accepted, in bytes; larger
	// bodies get 413. Default: 16 MiB.
	MaxBodySize int64 `json:"max_body_size,omitempty"`

	// MinNodes is the number of live nodes below which GET /health
	// answers 503. Unset (nil): 1. 0: no floor, GET /health answers 200
	// even with no live node.
	MinNodes *int `json:"min_nodes,omitempty"`

	// RetryAfter is the Retry-After sent with 503 answers when no node is
	// available. Default: 2s.
	RetryAfter caddy.Duration `json:"retry_after,omitempty"`

	// Retries is how many more attempts a request may get after failures
	// before its first byte reached the client. Unset (nil): 2. 0: no
	// failover.
	Retries *int `json:"retries,omitempty"`

	// TryDuration is how long after a request began a retry may still
	// start. Default: 60s, past the default stream_header_timeout, so that
	// an attempt that timed out can still be retried.
	TryDuration caddy.Duration `json:"try_duration,omitempty"`

	// StreamHeaderTimeout is how long an attempt of a streamed request
	// waits for the node's response headers (streaming servers send them
	// at once, before the first token) before it counts as a failure of
	// the node and is retried. 0: no limit. Default: 30s, long enough for
	// a server that loads its model before answering (Ollama).
	StreamHeaderTimeout *caddy.Duration `json:"stream_header_timeout,omitempty"`

	// RetryBudget bounds the retries of answers that reached an engine
	// (429, 5xx), as a fraction of requests over 10 s on top of
	// RetryBudgetMin, so that an overloaded cluster is not sent more work
	// (Envoy and Finagle bound retries the same way). Retries after
	// connection failures are not counted. Unset (nil): 0.2.
	RetryBudget *float64 `json:"retry_budget,omitempty"`

	// RetryBudgetMin is a number of such retries always allowed per 10 s,
	// so that a quiet service can still fail over. Unset (nil): 5.
	RetryBudgetMin *int `json:"retry_budget_min,omitempty"`

	// APIKeys, when set, requires an API key on every request but GET
	// /health; see APIKeys.
	APIKeys *APIKeys `json:"api_keys,omitempty"`

	minNodes int      // MinNodes, or its default
	keys     *keyring // the accepted API keys, nil without APIKeys
	failover request.Failover
	runner   *hedging.Runner
	snapshot func() *registry.Snapshot // the registry's live nodes, now
	logger   *zap.Logger
}

// Failover defaults.
const (
	defaultRetries        = 2
	defaultTryDuration    = 60 * time.Second
	defaultHeaderTimeout  = 30 * time.Second
	defaultRetryBudget    = 0.2
	defaultRetryBudgetMin = 5
	retryBudgetWindow     = 10 * time.Second
)

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.ai_lb",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets defaults and joins the config's registry.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.setDefaults()
	app, err := registry.FromContext(ctx)
	if err != nil {
		return err
	}
	h.snapshot = app.Snapshot
	return h.provisionKeys(app)
}

// setDefaults fills in the unset settings.
func (h *Handler) setDefaults() {
	if h.MaxBodySize == 0 {
		h.MaxBodySize = request.DefaultMaxBody
	}
	h.minNodes = defaultMinNodes
	if h.MinNodes != nil {
		h.minNodes = *h.MinNodes
	}
	if h.RetryAfter == 0 {
		h.RetryAfter = caddy.Duration(2 * time.Second)
	}
	if h.TryDuration == 0 {
		h.TryDuration = caddy.Duration(defaultTryDuration)
	}
	h.failover = request.Failover{
		Retries:     defaultRetries,
		TryDuration: time.Duration(h.TryDuration),
		Budget: health.NewBudgetOr(h.RetryBudget, h.RetryBudgetMin,
			defaultRetryBudget, defaultRetryBudgetMin, retryBudgetWindow),
	}
	if h.Retries != nil {
		h.failover.Retries = *h.Retries
	}
	h.failover.StreamHeaderTimeout = defaultHeaderTimeout
	if h.StreamHeaderTimeout != nil {
		h.failover.StreamHeaderTimeout = time.Duration(*h.StreamHeaderTimeout)
	}
	h.runner = hedging.NewFailoverRunner(h.logger)
}

// defaultMinNodes is the default Handler.MinNodes.
const defaultMinNodes = 1

// Validate checks the configuration.
func (h *Handler) Validate() error {
	if h.MaxBodySize < 0 {
		return fmt.Errorf("max_body_size: must not be negative")
	}
	if h.MinNodes != nil && *h.MinNodes < 0 {
		return fmt.Errorf("min_nodes: must not be negative, got %d", *h.MinNodes)
	}
	if h.RetryAfter < 0 {
		return fmt.Errorf("retry_after: must not be negative")
	}
	if h.Retries != nil && (*h.Retries < 0 || *h.Retries > 10) {
		return fmt.Errorf("retries: must be within 0-10, got %d", *h.Retries)
	}
	if h.StreamHeaderTimeout != nil && *h.StreamHeaderTimeout < 0 {
		return fmt.Errorf("stream_header_timeout: must not be negative")
	}
	if h.TryDuration < 0 {
		return fmt.Errorf("try_duration: must not be negative")
	}
	if h.RetryBudget != nil && (*h.RetryBudget < 0 || *h.RetryBudget > 1) {
		return fmt.Errorf("retry_budget: must be within 0-1 (a fraction of requests), got %v", *h.RetryBudget)
	}
	if h.RetryBudgetMin != nil && *h.RetryBudgetMin < 0 {
		return fmt.Errorf("retry_budget_min: must not be negative, got %d", *h.RetryBudgetMin)
	}
	return nil
}

// jsonEndpoints are the OpenAI and Ollama endpoints whose bodies must be
// JSON objects naming a model.
var jsonEndpoints = map[string]bool{
	"/v1/chat/completions": true,
	"/v1/completions":      true,
	"/v1/embeddings":       true,
	"/api/chat":            true,
	"/api/generate":        true,
	"/api/embed":           true,
	"/api/embeddings":      true,
	"/api/show":            true,
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if !h.authorize(w, r) {
		return nil
	}
	ollama := isOllamaPath(r.URL.Path)
	if ollama && h.serveOllama(w, r) {
		return nil
	}
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		if h.serveRegistry(w, r) {
			return nil
		}
	}
	req := new(request.Info)
	if r.Body != nil && r.Body != http.NoBody {
		body, apiErr := h.readBody(r)
		if apiErr != nil {
			h.writeError(w, r, apiErr)
			return nil
		}
		fields, err := request.ParseBody(body)
		if ollama && err == nil {
			fields = ollamaFields(r.URL.Path, body, fields)
		}
		switch {
		case err != nil && jsonEndpoints[r.URL.Path]:
			h.writeError(w, r, invalidRequest(http.StatusBadRequest, "invalid_json", "", err.Error()))
			return nil
		case err == nil && jsonEndpoints[r.URL.Path] && !fields.HasModel:
			missing := invalidRequest(http.StatusBadRequest, "missing_model", "model",
				"you must provide a model parameter")
			missing.ollama = "model is required"
			h.writeError(w, r, missing)
			return nil
		case err == nil:
			req.Model, req.Stream = fields.Model, fields.Stream
		}
		// Any other body (not JSON, on a path that need not be) is routed
		// to any live node, unchanged.
		req.Body = body
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	}
	if apiErr := h.checkAvailable(req.Model); apiErr != nil {
		h.writeError(w, r, apiErr)
		return nil
	}
	req.Failover = &h.failover
	h.failover.Budget.Request(time.Now())
	r = r.WithContext(request.NewContext(r.Context(), req))
	err := h.runner.Run(w, r, req, next)
	if err == nil {
		return nil
	}
	// reverse_proxy returns an error only before it has written anything.
	apiErr := proxyError(err, req.Model)
	if c := h.logger.Check(zap.WarnLevel, "request failed"); c != nil {
		c.Write(zap.String("model", req.Model), zap.Int("status", apiErr.status), zap.Error(err))
	}
	h.writeError(w, r, apiErr)
	return nil
}

// writeError answers with an API error, in Ollama's shape on Ollama's API.
func (h *Handler) writeError(w http.ResponseWriter, r *http.Request, e *apiError) {
	if isOllamaPath(r.URL.Path) {
		e.writeOllama(w, h.retryAfter(e))
		return
	}
	e.write(w, h.retryAfter(e))
}

// readBody reads the whole body, bounded by MaxBodySize. Memory grows with
// the bytes that arrive, not with the declared Content-Length, so clients
// that announce large bodies and send little cost little; a body shorter
// than announced fails. Slow senders are bounded by the server's
// read_timeout (Caddy's `servers { timeouts { read_body ... } }`).
func (h *Handler) readBody(r *http.Request) ([]byte, *apiError) {
	tooLarge := invalidRequest(http.StatusRequestEntityTooLarge, "request_too_large", "",
		fmt.Sprintf("the request body exceeds the limit of %d bytes", h.MaxBodySize))
	if r.ContentLength > h.MaxBodySize {
		return nil, tooLarge
	}
	body, err := readGrowing(io.LimitReader(r.Body, h.MaxBodySize+1), r.ContentLength)
	var limited *http.MaxBytesError
	switch {
	case errors.As(err, &limited):
		return nil, tooLarge // a request_body limit ahead of this handler
	case err != nil:
		return nil, invalidRequest(http.StatusBadRequest, "body_read_error", "",
			"reading the request body: "+err.Error())
	case int64(len(body)) > h.MaxBodySize:
		return nil, tooLarge
	}
	return body, nil
}

// readGrowing reads r to its end into a buffer that starts at the declared
// length (at most initialBodyBuffer; -1: unknown) and doubles as bytes
// arrive, so that an announced length costs nothing until it is sent, and
// a body of the announced length is read into one allocation.
func readGrowing(r io.Reader, declared int64) ([]byte, error) {
	size := int64(initialBodyBuffer)
	if declared >= 0 {
		size = min(declared, size)
	}
	buf := make([]byte, 0, size+1) // +1: room to see the end without growing
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, cap(buf))
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		switch {
		case err == io.EOF:
			return buf, nil
		case err != nil:
			return nil, err
		}
	}
}

// initialBodyBuffer is the most a body buffer starts with before bytes
// arrive.
const initialBodyBuffer = 64 << 10

// checkAvailable answers for a model no live node serves: 503 when no node
// at all is live (the cluster is down, not the request wrong), when a
// registered node lists the model but is not live, or before the registry
// has been read; otherwise 404.
func (h *Handler) checkAvailable(model string) *apiError {
	snap := h.snapshot()
	if len(snap.Members) == 0 {
		return serverError(http.StatusServiceUnavailable, "no_nodes_available", "no inference node is available")
	}
	if model == "" || len(snap.ServingModel(model)) > 0 {
		return nil
	}
	if !snap.Synced || snap.Known(model) {
		return serverError(http.StatusServiceUnavailable, "no_nodes_available",
			fmt.Sprintf("no node serving the model '%s' is available", model))
	}
	notFound := invalidRequest(http.StatusNotFound, "model_not_found", "model",
		fmt.Sprintf("The model '%s' does not exist or you do not have access to it.", model))
	notFound.ollama = fmt.Sprintf("model %q not found", model)
	return notFound
}

// proxyError maps an error from the rest of the route to an API error.
func proxyError(err error, model string) *apiError {
	status := http.StatusBadGateway
	var he caddyhttp.HandlerError
	if errors.As(err, &he) && he.StatusCode != 0 {
		status = he.StatusCode
	}
	switch status {
	case http.StatusServiceUnavailable:
		msg := "no inference node is available"
		if model != "" {
			msg = fmt.Sprintf("no node serving the model '%s' is available", model)
		}
		return serverError(status, "no_nodes_available", msg)
	case http.StatusGatewayTimeout:
		return serverError(status, "upstream_timeout", "the inference node did not answer in time")
	default:
		if status < 500 {
			return invalidRequest(status, "", "", http.StatusText(status))
		}
		return serverError(status, "upstream_error", "the inference node failed: "+http.StatusText(status))
	}
}

func (h *Handler) retryAfter(e *apiError) time.Duration {
	if e.status == http.StatusServiceUnavailable {
		return time.Duration(h.RetryAfter)
	}
	return 0
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
