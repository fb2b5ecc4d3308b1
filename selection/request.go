// Package selection picks the upstream node for each request: the
// `dynamic ai_lb` upstream source offers the live nodes that serve the
// request's model, and the `p2c` policy chooses among them.
package selection

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"slices"
	"sync"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Request is what ai-lb knows about one client request. The ai_lb handler
// makes it once per request; hedged attempts of the request share it.
type Request struct {
	// Model is the request's `model`, or "" when it names none.
	Model string
	// Stream is the request's `stream` flag.
	Stream bool
	// Body is the buffered request body (nil when it was not buffered), so
	// that every attempt can send it again.
	Body []byte

	mu    sync.Mutex
	tried []string
}

// MarkTried records that an attempt of this request went to dial.
func (r *Request) MarkTried(dial string) {
	r.mu.Lock()
	if !slices.Contains(r.tried, dial) {
		r.tried = append(r.tried, dial)
	}
	r.mu.Unlock()
}

// Tried reports whether an attempt of this request went to dial.
func (r *Request) Tried(dial string) bool {
	if r == nil {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Contains(r.tried, dial)
}

type requestKey struct{}

// varKey is where the source keeps a Request it had to make itself (no
// ai_lb handler in the route), so the policy finds the same one.
const varKey = "ai_lb.request"

// WithRequest returns ctx carrying req.
func WithRequest(ctx context.Context, req *Request) context.Context {
	return context.WithValue(ctx, requestKey{}, req)
}

// FromContext returns the Request the ai_lb handler stored, or nil.
func FromContext(ctx context.Context) *Request {
	req, _ := ctx.Value(requestKey{}).(*Request)
	return req
}

// DefaultMaxBody is the largest body read to find its model.
const DefaultMaxBody = 16 << 20

// requestOf returns the request's Request. Without the ai_lb handler in
// front, it reads the model from the body itself (bounded) and keeps the
// result in the request's vars; the body is put back for the proxy.
func requestOf(r *http.Request) *Request {
	if req := FromContext(r.Context()); req != nil {
		return req
	}
	if req, ok := caddyhttp.GetVar(r.Context(), varKey).(*Request); ok {
		return req
	}
	req := new(Request)
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
