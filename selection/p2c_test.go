package selection

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/stretchr/testify/require"

	"github.com/ai-lb/ai-lb/health"
	"github.com/ai-lb/ai-lb/internal/testredis"
	"github.com/ai-lb/ai-lb/registry"
	"github.com/ai-lb/ai-lb/request"
)

// newTestApp provisions an ai_lb app watching a fresh Redis, and returns it
// with a client of the same registry.
func newTestApp(t *testing.T) (*registry.App, *registry.Client) {
	t.Helper()
	rs := testredis.Start(t)
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	app := &registry.App{Redis: rs.URL(), Prefix: "selection", ResyncInterval: caddy.Duration(200 * time.Millisecond)}
	require.NoError(t, app.Provision(ctx))
	t.Cleanup(func() {
		require.NoError(t, app.Cleanup())
		cancel()
	})
	client, err := registry.Open(rs.URL(), "selection")
	require.NoError(t, err)
	t.Cleanup(func() { client.Close() })
	return app, client
}

// register registers nodes and waits until the app's snapshot has them all.
func register(t *testing.T, app *registry.App, client *registry.Client, nodes ...registry.Node) {
	t.Helper()
	for _, n := range nodes {
		require.NoError(t, client.Register(context.Background(), n))
	}
	end := time.Now().Add(10 * time.Second)
	for {
		s := app.Snapshot()
		all := true
		for _, n := range nodes {
			dial, err := n.Dial()
			require.NoError(t, err)
			if m := s.ByDial(dial); m == nil || m.ID != n.ID {
				all = false
			}
		}
		if all {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("the snapshot never had all of %v", nodes)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// pool returns fresh upstreams for dials, as the source makes them
// (MaxRequests 0, so Available never touches the unprovisioned Host).
func pool(dials ...string) reverseproxy.UpstreamPool {
	p := make(reverseproxy.UpstreamPool, len(dials))
	for i, d := range dials {
		p[i] = &reverseproxy.Upstream{Dial: d}
	}
	return p
}

func withRequest(req *request.Info) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", nil)
	return r.WithContext(request.NewContext(r.Context(), req))
}

// triedOf returns the dials among all that req has tried.
func triedOf(req *request.Info, all []string) []string {
	var tried []string
	for _, d := range all {
		if req.Tried(d) {
			tried = append(tried, d)
		}
	}
	return tried
}

func TestP2CSelect(t *testing.T) {
	app, _ := newTestApp(t)
	p := &P2C{app: app}
	dials := []string{"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"}

	t.Run("empty pool", func(t *testing.T) {
		req := new(request.Info)
		require.Nil(t, p.Select(nil, withRequest(req), nil))
		require.Nil(t, p.Select(pool(), withRequest(req), nil))
		require.Empty(t, triedOf(req, dials))
	})

	t.Run("marks the choice tried", func(t *testing.T) {
		req := new(request.Info)
		u := p.Select(pool(dials...), withRequest(req), nil)
		require.NotNil(t, u)
		require.Contains(t, dials, u.Dial)
		require.Equal(t, []string{u.Dial}, triedOf(req, dials))
	})

	t.Run("prefers untried", func(t *testing.T) {
		for range 500 {
			req := new(request.Info)
			for _, d := range dials[:3] {
				req.MarkTried(d)
			}
			u := p.Select(pool(dials...), withRequest(req), nil)
			require.NotNil(t, u)
			require.Equal(t, dials[3], u.Dial)
		}
	})

	t.Run("untried until none is left, then tried", func(t *testing.T) {
		for range 100 {
			req := new(request.Info)
			r := withRequest(req)
			ups := pool(dials...)
			seen := map[string]bool{}
			for range dials {
				u := p.Select(ups, r, nil)
				require.NotNil(t, u)
				require.False(t, seen[u.Dial], "%s chosen twice while others were untried", u.Dial)
				seen[u.Dial] = true
			}
			u := p.Select(ups, r, nil)
			require.NotNil(t, u, "falls back to a tried upstream")
			require.Contains(t, dials, u.Dial)
			require.ElementsMatch(t, dials, triedOf(req, dials))
		}
	})

	t.Run("single tried upstream", func(t *testing.T) {
		req := new(request.Info)
		req.MarkTried(dials[0])
		u := p.Select(pool(dials[0]), withRequest(req), nil)
		require.NotNil(t, u)
		require.Equal(t, dials[0], u.Dial)
		require.Equal(t, []string{dials[0]}, triedOf(req, dials))
	})

	t.Run("roughly uniform at equal cost", func(t *testing.T) {
		const draws = 8000
		counts := map[string]int{}
		ups := pool(dials...)
		for range draws {
			counts[p.Select(ups, withRequest(new(request.Info)), nil).Dial]++
		}
		for _, d := range dials {
			require.InEpsilon(t, draws/len(dials), counts[d], 0.15, "%s chosen %d times", d, counts[d])
		}
	})
}

// TestP2CCost checks that of two candidates the one with more capacity in
// the registry wins.
func TestP2CCost(t *testing.T) {
	app, client := newTestApp(t)
	register(t, app, client,
		registry.Node{ID: "big", URL: "http://10.0.1.1:80", MaxConcurrency: 8},
		registry.Node{ID: "small", URL: "http://10.0.1.2:80", MaxConcurrency: 1},
		registry.Node{ID: "heavy", URL: "http://10.0.1.3:80", MaxConcurrency: 1, Weight: 16},
		registry.Node{ID: "plain", URL: "http://10.0.1.4:80"},
	)
	p := &P2C{app: app}
	tests := []struct {
		a, b, want string
	}{
		{"10.0.1.1:80", "10.0.1.2:80", "10.0.1.1:80"}, // max_concurrency 8 over 1
		{"10.0.1.2:80", "10.0.1.3:80", "10.0.1.3:80"}, // weight 16 over 1
		{"10.0.1.3:80", "10.0.1.1:80", "10.0.1.3:80"}, // 16 over 8
		{"10.0.1.4:80", "10.0.1.3:80", "10.0.1.3:80"}, // one unbounded: by weight alone, 16 over 1
		{"10.0.9.9:80", "10.0.1.3:80", "10.0.1.3:80"}, // unknown to the registry: weight 1
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s vs %s", tt.a, tt.b), func(t *testing.T) {
			for range 50 { // two candidates are always both compared
				u := p.Select(pool(tt.a, tt.b), withRequest(new(request.Info)), nil)
				require.NotNil(t, u)
				require.Equal(t, tt.want, u.Dial)
			}
		})
	}
}

// TestP2CUnboundedNotPenalised: a node without max_concurrency is not
// taken for a node of capacity 1 next to a bounded one.
func TestP2CUnboundedNotPenalised(t *testing.T) {
	app, client := newTestApp(t)
	register(t, app, client,
		registry.Node{ID: "big", URL: "http://10.0.1.1:80", MaxConcurrency: 8},
		registry.Node{ID: "plain", URL: "http://10.0.1.4:80"},
	)
	p := &P2C{app: app}
	chosen := map[string]int{}
	for range 200 {
		chosen[p.Select(pool("10.0.1.1:80", "10.0.1.4:80"), withRequest(new(request.Info)), nil).Dial]++
	}
	require.Greater(t, chosen["10.0.1.4:80"], 50, "equal cost when idle: %v", chosen)
}

// TestSourceGetUpstreams checks that the source offers the live nodes that
// serve the request's model.
func TestSourceGetUpstreams(t *testing.T) {
	app, client := newTestApp(t)
	register(t, app, client,
		registry.Node{ID: "a", URL: "http://10.0.2.1:80", Models: []string{"llama"}, MaxConcurrency: 3},
		registry.Node{ID: "b", URL: "http://10.0.2.2:80", Models: []string{"llama", "qwen"}},
		registry.Node{ID: "c", URL: "http://10.0.2.3:80", Models: []string{"qwen"}},
	)
	s := &Source{Sample: DefaultSample, app: app}
	tests := []struct {
		model string
		want  []string
	}{
		{"llama", []string{"10.0.2.1:80", "10.0.2.2:80"}},
		{"qwen", []string{"10.0.2.2:80", "10.0.2.3:80"}},
		{"", []string{"10.0.2.1:80", "10.0.2.2:80", "10.0.2.3:80"}},
		{"nobody", nil},
	}
	for _, tt := range tests {
		t.Run(tt.model, func(t *testing.T) {
			ups, err := s.GetUpstreams(withRequest(&request.Info{Model: tt.model}))
			require.NoError(t, err)
			require.ElementsMatch(t, tt.want, dials(ups))
			for _, u := range ups {
				if u.Dial == "10.0.2.1:80" {
					require.Equal(t, 3, u.MaxRequests)
				}
			}
		})
	}
}

// TestNodeHealthRouting: the source leaves out nodes this process has at
// max_concurrency and ejected ones, and the policy begins each attempt on
// the node it picks.
func TestNodeHealthRouting(t *testing.T) {
	app, client := newTestApp(t)
	register(t, app, client,
		registry.Node{ID: "a", URL: "http://10.0.3.1:80", Models: []string{"m"}, MaxConcurrency: 1},
		registry.Node{ID: "b", URL: "http://10.0.3.2:80", Models: []string{"m"}},
	)
	s := &Source{Sample: DefaultSample, app: app}
	p := &P2C{app: app}
	nodes := app.Health()
	offered := func() []string {
		ups, err := s.GetUpstreams(withRequest(&request.Info{Model: "m"}))
		require.NoError(t, err)
		return dials(ups)
	}
	require.ElementsMatch(t, []string{"10.0.3.1:80", "10.0.3.2:80"}, offered())

	// The policy begins the attempt: a is full until it ends.
	attempt := new(request.Attempt)
	r := withRequest(&request.Info{Model: "m"})
	r = r.WithContext(request.WithAttempt(r.Context(), attempt))
	require.Equal(t, "10.0.3.1:80", p.Select(pool("10.0.3.1:80"), r, nil).Dial)
	require.Equal(t, 1, nodes.Node("10.0.3.1:80").InFlight())
	require.Equal(t, []string{"10.0.3.2:80"}, offered(), "a full node is not offered")
	attempt.End(health.Succeeded, time.Now())
	require.Zero(t, nodes.Node("10.0.3.1:80").InFlight())

	// b fails until ejected: not offered while a can take the request.
	now := time.Now()
	for range health.Defaults.ConsecutiveFailures {
		nodes.Node("10.0.3.2:80").Begin(now, 0).End(health.Failed, now)
	}
	require.Equal(t, []string{"10.0.3.1:80"}, offered())

	// With a full too, the ejected node is still tried rather than none.
	busy := nodes.Node("10.0.3.1:80").Begin(now, 0)
	require.Equal(t, []string{"10.0.3.2:80"}, offered())
	busy.End(health.Succeeded, now)
}
