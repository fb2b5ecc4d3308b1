package request

import (
	"context"
	"sync"
	"time"

	"github.com/ai-lb/ai-lb/health"
)

// Attempt is one attempt of a request on some node: whoever runs the
// attempts (the ai_lb and hedge handlers) puts one in the attempt's
// context, the p2c policy begins it on the node it picks, and the runner
// ends it with the outcome.
type Attempt struct {
	mu   sync.Mutex
	node *health.Attempt
}

type attemptKey struct{}

// WithAttempt returns ctx carrying a.
func WithAttempt(ctx context.Context, a *Attempt) context.Context {
	return context.WithValue(ctx, attemptKey{}, a)
}

// AttemptFrom returns the Attempt of ctx, or nil.
func AttemptFrom(ctx context.Context) *Attempt {
	a, _ := ctx.Value(attemptKey{}).(*Attempt)
	return a
}

// Begin records that the attempt of req goes to node. A node picked
// earlier in the same attempt failed (reverse_proxy picks again only after
// a failure of its own retries), and is ended as such.
func (a *Attempt) Begin(node *health.Node, req *Info, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.node.End(health.Failed, now)
	a.node = node.Begin(now, req.PromptTokens())
}

// FirstToken records the attempt's first token at now.
func (a *Attempt) FirstToken(stream bool, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.node.FirstToken(stream, now)
}

// Lost records that the attempt lost its race at now, before a token.
func (a *Attempt) Lost(stream bool, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.node.Lost(stream, now)
}

// End ends the attempt on its node with the outcome, if a node was picked.
func (a *Attempt) End(o health.Outcome, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.node.End(o, now)
}

// Node returns the node the attempt went to last, or nil.
func (a *Attempt) Node() *health.Node {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.node == nil {
		return nil
	}
	return a.node.Node()
}
