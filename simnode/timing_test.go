package simnode

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestJitterAndSlow(t *testing.T) {
	c := Config{TTFT: 100 * time.Millisecond, TTFTJitter: 0.5, SlowFraction: 0.5, SlowFactor: 10}
	require.Equal(t, 50*time.Millisecond, c.ttft(draws{jitter: 0, slow: 0.9}))
	require.Equal(t, 100*time.Millisecond, c.ttft(draws{jitter: 0.5, slow: 0.9}))
	require.Equal(t, 1000*time.Millisecond, c.ttft(draws{jitter: 0.5, slow: 0.1}))
	c.TTFT = NoDelay
	require.Zero(t, c.ttft(draws{slow: 0}))
}
