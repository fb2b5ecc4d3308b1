package hedging

import (
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/stretchr/testify/require"
)

func caddyDuration(d time.Duration) caddy.Duration { return caddy.Duration(d) }

func TestUnmarshalCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		name  string
		input string
		want  Handler
		err   string
	}{
		{name: "bare", input: `hedge`, want: Handler{}},
		{name: "empty block", input: "hedge {\n}", want: Handler{}},
		{name: "all options", input: `hedge {
			delay 150ms
			percentile 99.5
			window 1m
			min_samples 50
			min_delay 20ms
			max_delay 5s
			max_attempts 3
			budget 0.25
			budget_window 30s
			budget_min 2
			max_body_size 1KiB
			paths /v1/chat/completions /v1/completions
			response_headers
		}`, want: Handler{
			Delay: caddyDuration(150 * time.Millisecond), Percentile: 99.5, Window: caddyDuration(time.Minute),
			MinSamples: 50, MinDelay: caddyDuration(20 * time.Millisecond), MaxDelay: caddyDuration(5 * time.Second),
			MaxAttempts: 3, Budget: ptr(0.25), BudgetWindow: caddyDuration(30 * time.Second), BudgetMin: ptr(2),
			MaxBodySize: 1024, Paths: []string{"/v1/chat/completions", "/v1/completions"}, ResponseHeaders: true,
		}},
		{name: "budget percent", input: "hedge {\n budget 10%\n}", want: Handler{Budget: ptr(0.1)}},
		{name: "budget fraction", input: "hedge {\n budget 0.1\n}", want: Handler{Budget: ptr(0.1)}},
		{name: "budget 100%", input: "hedge {\n budget 100%\n}", want: Handler{Budget: ptr(1.0)}},
		{name: "budget 0 is kept", input: "hedge {\n budget 0\n}", want: Handler{Budget: ptr(0.0)}},
		{name: "budget 0% is kept", input: "hedge {\n budget 0%\n}", want: Handler{Budget: ptr(0.0)}},
		{name: "budget_min 0 is kept", input: "hedge {\n budget_min 0\n}", want: Handler{BudgetMin: ptr(0)}},
		{name: "decimal size", input: "hedge {\n max_body_size 2MB\n}", want: Handler{MaxBodySize: 2_000_000}},
		{name: "caddy day duration", input: "hedge {\n window 1d\n}", want: Handler{Window: caddyDuration(24 * time.Hour)}},

		{name: "argument on the directive", input: `hedge 150ms`, err: "wrong argument count"},
		{name: "unknown option", input: "hedge {\n delya 150ms\n}", err: "unrecognized hedge option 'delya'"},
		{name: "unknown option without argument", input: "hedge {\n response_header\n}", err: "unrecognized hedge option 'response_header'"},
		{name: "missing value", input: "hedge {\n delay\n}", err: "wrong argument count"},
		{name: "extra value", input: "hedge {\n delay 1s 2s\n}", err: "wrong argument count"},
		{name: "response_headers takes none", input: "hedge {\n response_headers yes\n}", err: "wrong argument count"},
		{name: "paths needs one", input: "hedge {\n paths\n}", err: "wrong argument count"},
		{name: "bad duration", input: "hedge {\n delay soon\n}", err: "parsing delay"},
		{name: "bad budget", input: "hedge {\n budget lots\n}", err: "parsing budget"},
		{name: "bad budget percent", input: "hedge {\n budget x%\n}", err: "parsing budget"},
		{name: "bad int", input: "hedge {\n max_attempts two\n}", err: "parsing max_attempts"},
		{name: "bad size", input: "hedge {\n max_body_size huge\n}", err: "parsing max_body_size"},
		{name: "bad percentile", input: "hedge {\n percentile p95\n}", err: "parsing percentile"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if tc.err != "" {
				require.Error(t, err)
				require.Contains(t, strings.ToLower(err.Error()), strings.ToLower(tc.err))
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, h)
		})
	}
}

func TestValidate(t *testing.T) {
	valid := func() *Handler {
		return &Handler{MinDelay: caddyDuration(10 * time.Millisecond), MaxDelay: caddyDuration(30 * time.Second),
			MaxAttempts: 2, Budget: ptr(0.1), BudgetMin: ptr(1), MaxBodySize: 1 << 20}
	}
	require.NoError(t, valid().Validate())
	for _, tc := range []struct {
		field  string
		modify func(h *Handler)
	}{
		{"delay", func(h *Handler) { h.Delay = -1 }},
		{"percentile", func(h *Handler) { h.Percentile = -1 }},
		{"percentile", func(h *Handler) { h.Percentile = 100.5 }},
		{"min_delay", func(h *Handler) { h.MinDelay = caddyDuration(time.Minute) }},
		{"max_attempts", func(h *Handler) { h.MaxAttempts = 0 }},
		{"max_attempts", func(h *Handler) { h.MaxAttempts = 11 }},
		{"budget", func(h *Handler) { h.Budget = ptr(-0.1) }},
		{"budget", func(h *Handler) { h.Budget = ptr(1.5) }},
		{"budget_min", func(h *Handler) { h.BudgetMin = ptr(-1) }},
		{"max_body_size", func(h *Handler) { h.MaxBodySize = -1 }},
	} {
		h := valid()
		tc.modify(h)
		err := h.Validate()
		require.Error(t, err, tc.field)
		require.True(t, strings.HasPrefix(err.Error(), tc.field+":"), "error %q names %s", err, tc.field)
	}
	// Boundaries are valid.
	h := valid()
	h.Percentile, h.Budget, h.MaxAttempts, h.BudgetMin = 100, ptr(1.0), 10, ptr(0)
	require.NoError(t, h.Validate())
	h.Budget, h.MaxAttempts = ptr(0.0), 1
	require.NoError(t, h.Validate())
	// Unset is valid: Provision uses the defaults.
	h.Budget, h.BudgetMin = nil, nil
	require.NoError(t, h.Validate())
}

func ptr[T any](v T) *T { return &v }
