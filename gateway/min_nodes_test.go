package gateway

import (
	"encoding/json"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/stretchr/testify/require"
)

// TestMinNodesUnsetAndZero checks that an unset min_nodes gets its
// default and an explicit 0 is kept, from JSON and from the Caddyfile.
func TestMinNodesUnsetAndZero(t *testing.T) {
	for _, tc := range []struct {
		name, json, caddyfile string
		want                  int
	}{
		{name: "unset", json: `{}`, caddyfile: "ai_lb", want: defaultMinNodes},
		{name: "zero", json: `{"min_nodes":0}`, caddyfile: "ai_lb {\n min_nodes 0\n}", want: 0},
		{name: "set", json: `{"min_nodes":3}`, caddyfile: "ai_lb {\n min_nodes 3\n}", want: 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fromJSON := new(Handler)
			require.NoError(t, json.Unmarshal([]byte(tc.json), fromJSON))
			fromCaddyfile := new(Handler)
			require.NoError(t, fromCaddyfile.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.caddyfile)))
			for _, h := range []*Handler{fromJSON, fromCaddyfile} {
				out, err := json.Marshal(Handler{MinNodes: h.MinNodes})
				require.NoError(t, err)
				require.JSONEq(t, tc.json, string(out)) // 0 survives a round trip
				require.NoError(t, h.Validate())
				h.setDefaults()
				require.Equal(t, tc.want, h.minNodes)
			}
		})
	}
}

func TestMinNodesNegative(t *testing.T) {
	n := -1
	err := (&Handler{MinNodes: &n}).Validate()
	require.ErrorContains(t, err, "min_nodes:")
}
