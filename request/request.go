// Package request is ai-lb's model of one client request: what the ai_lb
// handler reads from it once (its model, its buffered body), the nodes its
// attempts have tried, and how the other modules find it in the request
// context.
package request

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Info is what ai-lb knows about one client request. The ai_lb handler
// makes it once per request; hedged attempts of the request share it.
type Info struct {
	// Model is the request's `model`, or "" when it names none.
	Model string
	// Stream is the request's `stream` flag: a streamed answer's headers
	// come at once, before its first token.
	Stream bool
	// Body is the buffered request body (nil when it was not buffered), so
	// that every attempt can send it again.
	Body []byte

	// Failover is the request's failover policy (nil: no retries).
	Failover *Failover

	races atomic.Int32 // runs of an attempt runner for this request
	mu    sync.Mutex
	tried []string
}

// bytesPerToken is about how many bytes of a JSON request body make one
// prompt token: English text runs about 4 characters a token, and the
// JSON around it adds a little.
const bytesPerToken = 4

// PromptTokens estimates the prompt's length in tokens from the body's
// size, for the load it puts on a node's prefill.
func (r *Info) PromptTokens() float64 {
	if r == nil {
		return 0
	}
	return float64(len(r.Body)) / bytesPerToken
}

// EnterRace records that an attempt runner runs this request's attempts.
// A runner whose attempt saw another runner start inside it (the hedge
// handler within the ai_lb handler's failover) leaves the retries to it.
func (r *Info) EnterRace() { r.races.Add(1) }

// Races returns how many attempt runners have run this request.
func (r *Info) Races() int32 { return r.races.Load() }

// MarkTried records that an attempt of this request went to dial.
func (r *Info) MarkTried(dial string) {
	r.mu.Lock()
	if !slices.Contains(r.tried, dial) {
		r.tried = append(r.tried, dial)
	}
	r.mu.Unlock()
}

// Tried reports whether an attempt of this request went to dial.
func (r *Info) Tried(dial string) bool {
	if r == nil {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Contains(r.tried, dial)
}

type requestKey struct{}

// varKey is where Of keeps an Info it had to make itself (no ai_lb handler
// in the route), so that the source and the policy find the same one.
const varKey = "ai_lb.request"

// NewContext returns ctx carrying req.
func NewContext(ctx context.Context, req *Info) context.Context {
	return context.WithValue(ctx, requestKey{}, req)
}

// FromContext returns the Info the ai_lb handler stored, or nil.
func FromContext(ctx context.Context) *Info {
	req, _ := ctx.Value(requestKey{}).(*Info)
	return req
}

// DefaultMaxBody is the largest body read to find its model.
const DefaultMaxBody = 16 << 20

// Of returns the request's Info. Without the ai_lb handler in
// front, it reads the model from the body itself (bounded) and keeps the
// result in the request's vars; the body is put back for the proxy.
func Of(r *http.Request) *Info {
	if req := FromContext(r.Context()); req != nil {
		return req
	}
	if req, ok := caddyhttp.GetVar(r.Context(), varKey).(*Info); ok {
		return req
	}
	req := new(Info)
	if r.Body != nil && r.Body != http.NoBody {
		buf, err := io.ReadAll(io.LimitReader(r.Body, DefaultMaxBody+1))
		r.Body = readCloser{io.MultiReader(bytes.NewReader(buf), r.Body), r.Body}
		if err == nil && len(buf) <= DefaultMaxBody {
			if fields, err := ParseBody(buf); err == nil {
				req.Model, req.Stream = fields.Model, fields.Stream
			}
		}
	}
	caddyhttp.SetVar(r.Context(), varKey, req)
	return req
}

// readCloser reads from a replayed prefix but closes the original body.
type readCloser struct {
	io.Reader
	io.Closer
}
