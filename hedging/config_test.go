package hedging

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/stretchr/testify/require"

	"github.com/ai-lb/ai-lb/health"
)

// provisioned sets up h as Caddy would and returns its hedge budget.
func provisioned(t *testing.T, h *Handler) *health.Budget {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	require.NoError(t, h.Provision(ctx))
	require.NoError(t, h.Validate())
	return h.runner.HedgeBudget
}

// takes counts how many of n takes at now the budget grants.
func takes(b *health.Budget, now time.Time, n int) int {
	granted := 0
	for range n {
		if b.Take(now) {
			granted++
		}
	}
	return granted
}

// TestBudgetUnsetAndZero checks that an unset budget or budget_min gets
// its default and an explicit 0 is kept, from JSON and from the Caddyfile.
func TestBudgetUnsetAndZero(t *testing.T) {
	fromJSON := func(t *testing.T, s string) *Handler {
		h := new(Handler)
		require.NoError(t, json.Unmarshal([]byte(s), h))
		return h
	}
	fromCaddyfile := func(t *testing.T, s string) *Handler {
		h := new(Handler)
		require.NoError(t, h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(s)))
		return h
	}
	for _, tc := range []struct {
		name         string
		handler      func(t *testing.T) *Handler
		ratio        float64
		floor        int
		marshalsInto string // the JSON of the budget fields
	}{
		{"json unset", func(t *testing.T) *Handler { return fromJSON(t, `{}`) }, defaultBudget, defaultBudgetMin, `{}`},
		{"json zero", func(t *testing.T) *Handler { return fromJSON(t, `{"budget":0,"budget_min":0}`) }, 0, 0, `{"budget":0,"budget_min":0}`},
		{"json budget zero", func(t *testing.T) *Handler { return fromJSON(t, `{"budget":0}`) }, 0, defaultBudgetMin, `{"budget":0}`},
		{"json budget_min zero", func(t *testing.T) *Handler { return fromJSON(t, `{"budget_min":0}`) }, defaultBudget, 0, `{"budget_min":0}`},
		{"caddyfile unset", func(t *testing.T) *Handler { return fromCaddyfile(t, "hedge") }, defaultBudget, defaultBudgetMin, `{}`},
		{"caddyfile zero", func(t *testing.T) *Handler { return fromCaddyfile(t, "hedge {\n budget 0\n budget_min 0\n}") }, 0, 0, `{"budget":0,"budget_min":0}`},
		{"caddyfile zero percent", func(t *testing.T) *Handler { return fromCaddyfile(t, "hedge {\n budget 0%\n}") }, 0, defaultBudgetMin, `{"budget":0}`},
		{"caddyfile set", func(t *testing.T) *Handler { return fromCaddyfile(t, "hedge {\n budget 25%\n budget_min 3\n}") }, 0.25, 3, `{"budget":0.25,"budget_min":3}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.handler(t)
			out, err := json.Marshal(Handler{Budget: h.Budget, BudgetMin: h.BudgetMin})
			require.NoError(t, err)
			require.JSONEq(t, tc.marshalsInto, string(out))
			b := provisioned(t, h)
			now := time.Unix(1_700_000_000, 0)
			require.Equal(t, tc.floor, takes(b, now, 1000), "no requests yet: the floor alone")
			for range 100 {
				b.Request(now)
			}
			require.Equal(t, int(tc.ratio*100+0.5), takes(b, now, 1000), "100 requests: the ratio of them")
		})
	}
}

// TestBudgetZeroAllowsNoExtraAttempt: budget 0 with budget_min 0 grants
// no extra attempt, however many requests there are.
func TestBudgetZeroAllowsNoExtraAttempt(t *testing.T) {
	b := provisioned(t, &Handler{Budget: ptr(0.0), BudgetMin: ptr(0)})
	now := time.Unix(1_700_000_000, 0)
	for range 1000 {
		b.Request(now)
	}
	require.Zero(t, takes(b, now, 10))
}
