package selection

import (
	"math/rand/v2"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/ai-lb/ai-lb/registry"
	"github.com/ai-lb/ai-lb/request"
)

// P2C is the `p2c` selection policy: power of two choices. It samples two
// distinct available upstreams at random and picks the one with the lower
// cost, where
//
//	cost = (in-flight requests + 1) / (max_concurrency × weight)
//
// (max_concurrency 0 counts as 1). In-flight is Caddy's process-wide count
// of live requests to that address, streams included, so hedged attempts
// count as load. Nodes this request has not tried yet are preferred; tried
// ones are used when no other is available, so a model served by a single
// node can still be retried.
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
		if cost(second, snap) < cost(first, snap) {
			chosen = second
		}
	}
	if chosen != nil {
		req.MarkTried(chosen.Dial)
	}
	return chosen
}

// cost is the load of an upstream relative to its capacity.
func cost(u *reverseproxy.Upstream, snap *registry.Snapshot) float64 {
	inFlight := 0
	if u.Host != nil {
		inFlight = u.Host.NumRequests()
	}
	capacity := 1.0
	if m := snap.ByDial(u.Dial); m != nil {
		capacity = m.EffectiveWeight()
		if m.MaxConcurrency > 0 {
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
