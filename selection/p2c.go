package selection

import (
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/ai-lb/ai-lb/registry"
	"github.com/ai-lb/ai-lb/request"
)

// P2C is the `p2c` selection policy: power of two choices. It samples two
// distinct available upstreams at random and picks the one with the lower
// cost. When both nodes declare max_concurrency the cost is their
// utilisation,
//
//	cost = (in-flight requests + 1) / (max_concurrency × weight)
//
// and otherwise (in-flight requests + 1) / weight, since a node with no
// declared limit has no utilisation to compare. In-flight is Caddy's
// process-wide count of live requests to that address, streams included,
// so hedged attempts count as load. Nodes this request has not tried yet
// are preferred; tried ones are used when no other is available, so a
// model served by a single node can still be retried.
//
// The chosen node begins the request's attempt in the node health state,
// so its outcome counts for the node.
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
		snap := p.app.Snapshot()
		a, b := snap.ByDial(first.Dial), snap.ByDial(second.Dial)
		bounded := a != nil && b != nil && a.MaxConcurrency > 0 && b.MaxConcurrency > 0
		if cost(second, b, bounded) < cost(first, a, bounded) {
			chosen = second
		}
	}
	if chosen != nil {
		req.MarkTried(chosen.Dial)
		if attempt := request.AttemptFrom(r.Context()); attempt != nil {
			attempt.Begin(p.app.Health().Node(chosen.Dial), time.Now())
		}
	}
	return chosen
}

// cost is the load of an upstream (registry member m, nil if unknown)
// relative to its weight, and to its max_concurrency when bounded.
func cost(u *reverseproxy.Upstream, m *registry.Member, bounded bool) float64 {
	inFlight := 0
	if u.Host != nil {
		inFlight = u.Host.NumRequests()
	}
	capacity := 1.0
	if m != nil {
		capacity = m.EffectiveWeight()
		if bounded {
			capacity *= float64(m.MaxConcurrency)
		}
	}
	return float64(inFlight+1) / capacity
}

// Interface guards
var (
	_ caddy.Provisioner     = (*P2C)(nil)
	_ reverseproxy.Selector = (*P2C)(nil)
)
