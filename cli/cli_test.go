package cli

import (
	"testing"
	"time"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/require"

	"github.com/ai-lb/ai-lb/registry"
)

func TestLoadInterval(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want time.Duration
	}{
		{nil, registry.DefaultLoadInterval},
		{[]string{"--load-interval", "250ms"}, 250 * time.Millisecond},
		{[]string{"--load-interval", "0"}, -1}, // never
	} {
		fs := pflag.NewFlagSet("register", pflag.ContinueOnError)
		LoadFlags(fs)
		require.NoError(t, fs.Parse(tt.args))
		require.Equal(t, tt.want, LoadInterval(fs), "%v", tt.args)
	}
}

func TestLoadColumn(t *testing.T) {
	require.Equal(t, "-", loadColumn(registry.Entry{}))
	e := registry.Entry{Load: &registry.LoadFigures{Running: 3, Waiting: 1, KVCacheUsage: 0.289}, LoadAge: 412345 * time.Microsecond}
	require.Equal(t, "3 running, 1 waiting, kv 29% (412ms ago)", loadColumn(e))
}
