package simnode

import (
	"testing"
	"time"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/require"
)

func TestBindFlags(t *testing.T) {
	fs := pflag.NewFlagSet("simnode", pflag.ContinueOnError)
	cfg := BindFlags(fs)
	require.NoError(t, fs.Parse(nil))
	require.Equal(t, New(Config{}).Config(), New(*cfg).Config(), "flag defaults match Config defaults")

	fs = pflag.NewFlagSet("simnode", pflag.ContinueOnError)
	cfg = BindFlags(fs)
	require.NoError(t, fs.Parse([]string{
		"--id=b1", "--models=x,y", "--ttft=0", "--ttft-jitter=0.1", "--slow-fraction=0.2", "--slow-factor=3",
		"--itl=5ms", "--tokens=8", "--slots=2", "--queue=3", "--fail-rate=0.5", "--fail-status=502", "--seed=9",
	}))
	c := New(*cfg).Config()
	require.Equal(t, Config{
		ID: "b1", Models: []string{"x", "y"}, TTFT: NoDelay, TTFTJitter: 0.1, SlowFraction: 0.2, SlowFactor: 3,
		InterTokenLatency: 5 * time.Millisecond, Tokens: 8, Slots: 2, QueueSize: 3, FailRate: 0.5, FailStatus: 502, Seed: 9,
	}, c)
	require.Equal(t, "0s", fs.Lookup("ttft").Value.String())
	require.Equal(t, "50ms", fs.Lookup("ttft").DefValue)
}
