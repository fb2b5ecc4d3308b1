package selection

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/ai-lb/ai-lb/health"
	"github.com/ai-lb/ai-lb/registry"
	"github.com/ai-lb/ai-lb/request"
)

// Source is the `dynamic ai_lb` upstream source: it offers reverse_proxy
// the live registry nodes that serve the request's model (any live node
// when the request names none), from the in-memory registry snapshot
// with no Redis round trip.
//
// It offers a bounded random sample, not every node: the policy compares
// only two, and reverse_proxy does per-upstream work under a global lock
// for every upstream offered. Nodes not yet tried by this request are
// preferred, so retries and hedges go elsewhere when they can.
type Source struct {
	// Sample is the most nodes offered per attempt. Default: 4.
	Sample int `json:"sample,omitempty"`

	app *registry.App
}

// DefaultSample is the default Source.Sample.
const DefaultSample = 4

// CaddyModule returns the Caddy module information.
func (Source) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.upstreams.ai_lb",
		New: func() caddy.Module { return new(Source) },
	}
}

// Provision sets defaults and joins the config's registry.
func (s *Source) Provision(ctx caddy.Context) error {
	if s.Sample == 0 {
		s.Sample = DefaultSample
	}
	app, err := registry.FromContext(ctx)
	if err != nil {
		return err
	}
	s.app = app
	return nil
}

// Validate checks the configuration.
func (s *Source) Validate() error {
	if s.Sample < 2 {
		return fmt.Errorf("sample: must be at least 2 (the policy compares two nodes), got %d", s.Sample)
	}
	return nil
}

// GetUpstreams returns fresh upstreams for the request: reverse_proxy
// writes into them, so they are never shared between calls. Nodes that
// this process has at max_concurrency are left out, and so are ejected
// ones unless no other node can take the request.
func (s *Source) GetUpstreams(r *http.Request) ([]*reverseproxy.Upstream, error) {
	req := request.Of(r)
	snap := s.app.Snapshot()
	members := snap.Members
	if req.Model != "" {
		members = snap.ServingModel(req.Model)
	}
	nodes, now := s.app.Health(), time.Now()
	return sample(members, s.Sample, func(m *registry.Member) class {
		if node := nodes.Lookup(m.Dial); node != nil {
			if node.Full(m.MaxConcurrency) {
				return full
			}
			if node.State(now) == health.Ejected {
				return ejected
			}
		}
		if req.Tried(m.Dial) {
			return tried
		}
		return untried
	}), nil
}

// class ranks a member for one attempt of a request.
type class int

const (
	untried class = iota // offered first
	tried                // offered when too few untried ones exist
	ejected              // offered only when no other member can be
	full                 // never offered
)

// sample picks at most k members at random, by class: untried ones first,
// then tried ones, and ejected ones only when there is nothing else (a
// cluster whose every node looks bad is still tried, not refused).
func sample(members []*registry.Member, k int, classOf func(*registry.Member) class) []*reverseproxy.Upstream {
	n := len(members)
	ups := make([]*reverseproxy.Upstream, 0, min(n, k))
	if n <= k {
		for want := untried; want <= ejected && (want < ejected || len(ups) == 0); want++ {
			for _, m := range members {
				if classOf(m) == want {
					ups = append(ups, upstream(m))
				}
			}
		}
		return ups
	}
	// Draw members in random order, without replacement, until k untried
	// ones turn up: a Fisher–Yates shuffle of the indexes done lazily (k
	// is small, n may be large) by recording only the displaced slots.
	// Others are kept aside in case too few untried exist. The draws
	// number k plus the others met, which are few unless many nodes are
	// full or ejected.
	var picked, spare, standby []int
	var buf [8]swap
	moved := buf[:0] // displaced slots; the others hold their own index
	for i := 0; i < n && len(picked) < k; i++ {
		j := i + rand.IntN(n-i)
		v := slotOf(moved, j)
		moved = setSlot(moved, j, slotOf(moved, i))
		switch classOf(members[v]) {
		case untried:
			picked = append(picked, v)
		case tried:
			if len(spare) < k {
				spare = append(spare, v)
			}
		case ejected:
			if len(standby) < k {
				standby = append(standby, v)
			}
		}
	}
	for _, i := range picked {
		ups = append(ups, upstream(members[i]))
	}
	for _, i := range spare {
		if len(ups) == k {
			break
		}
		ups = append(ups, upstream(members[i]))
	}
	if len(ups) == 0 {
		for _, i := range standby {
			ups = append(ups, upstream(members[i]))
		}
	}
	return ups
}

// swap is a displaced slot of sample's lazy shuffle.
type swap struct{ slot, index int }

func slotOf(moved []swap, slot int) int {
	for _, s := range moved {
		if s.slot == slot {
			return s.index
		}
	}
	return slot
}

func setSlot(moved []swap, slot, index int) []swap {
	for i := range moved {
		if moved[i].slot == slot {
			moved[i].index = index
			return moved
		}
	}
	return append(moved, swap{slot, index})
}

func upstream(m *registry.Member) *reverseproxy.Upstream {
	return &reverseproxy.Upstream{Dial: m.Dial, MaxRequests: m.MaxConcurrency}
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Source)(nil)
	_ caddy.Validator             = (*Source)(nil)
	_ reverseproxy.UpstreamSource = (*Source)(nil)
)
