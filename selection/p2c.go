package selection

import (
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/ai-lb/ai-lb/health"
	"github.com/ai-lb/ai-lb/registry"
	"github.com/ai-lb/ai-lb/request"
)

// P2C is the `p2c` selection policy: power of two choices. It samples two
// distinct available upstreams at random and picks the one with the lower
// cost, the estimated wait for a first token there (health.Cost):
//
//	cost = TTFT × (load + 1) / weight                       capacities unknown
//	cost = TTFT × (1 + (load + 1) / capacity) / weight      both known
//
// TTFT is the node's peak-EWMA time to first token as this process saw
// it; load is its requests — the larger of the in-flight requests (this
// process's, or Caddy's process-wide count) and the engine's own running
// and waiting requests as its agent publishes them — plus the prompt
// tokens in flight, relative to capacity when both nodes' capacities are
// known (max_concurrency, else the engine's). Nodes this request has not
// tried yet are preferred; tried ones are used when no other is
// available, so a model served by a single node can still be retried.
//
// The chosen node begins the request's attempt in the node health state,
// so its outcome and time to first token count for the node.
type P2C struct {
	app *registry.App
}

// CaddyModule returns the Caddy module information.
func (P2C) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.selection_policies.p2c",
		New: func() caddy.Module { return new(P2C) },
	}
}

// Provision joins the config's registry, whose node weights it reads.
func (p *P2C) Provision(ctx caddy.Context) error {
	app, err := registry.FromContext(ctx)
	if err != nil {
		return err
	}
	p.app = app
	return nil
}

// Select picks an upstream and records it as tried by the request.
func (p *P2C) Select(pool reverseproxy.UpstreamPool, r *http.Request, _ http.ResponseWriter) *reverseproxy.Upstream {
	req := request.Of(r)
	var fresh, tried int
	for _, u := range pool {
		if !u.Available() {
			continue
		}
		if req.Tried(u.Dial) {
			tried++
		} else {
			fresh++
		}
	}
	preferFresh, n := true, fresh
	if fresh == 0 {
		preferFresh, n = false, tried
	}
	if n == 0 {
		return nil
	}
	a := rand.IntN(n)
	b := a
	if n > 1 {
		b = rand.IntN(n - 1)
		if b >= a {
			b++
		}
	}
	var first, second *reverseproxy.Upstream
	i := 0
	for _, u := range pool {
		if !u.Available() || req.Tried(u.Dial) == preferFresh {
			continue
		}
		if i == a {
			first = u
		}
		if i == b {
			second = u
		}
		i++
	}
	chosen := first
	if second != nil && second != first {
		snap, nodes, now := p.app.Snapshot(), p.app.Health(), time.Now()
		ma, mb := snap.ByDial(first.Dial), snap.ByDial(second.Dial)
		costA, costB := health.Cost(loadOf(first, ma, nodes, now), loadOf(second, mb, nodes, now), weight(ma), weight(mb))
		if costB < costA {
			chosen = second
		}
	}
	if chosen != nil {
		req.MarkTried(chosen.Dial)
		if attempt := request.AttemptFrom(r.Context()); attempt != nil {
			attempt.Begin(p.app.Health().Node(chosen.Dial), req, time.Now())
		}
	}
	return chosen
}

// loadOf returns the load of upstream u (registry member m, nil if
// unknown): its node health load, with Caddy's own count of requests to
// it when that is larger (routes without the ai_lb handler count there
// only).
func loadOf(u *reverseproxy.Upstream, m *registry.Member, nodes *health.Tracker, now time.Time) health.Load {
	maxConcurrency := 0
	if m != nil {
		maxConcurrency = m.MaxConcurrency
	}
	l := nodes.Node(u.Dial).Load(maxConcurrency, now)
	if u.Host != nil {
		l.Requests = max(l.Requests, float64(u.Host.NumRequests()))
	}
	return l
}

// weight is a member's weight, 1 when unknown.
func weight(m *registry.Member) float64 {
	if m == nil {
		return 1
	}
	return m.EffectiveWeight()
}

// Interface guards
var (
	_ caddy.Provisioner     = (*P2C)(nil)
	_ reverseproxy.Selector = (*P2C)(nil)
)
