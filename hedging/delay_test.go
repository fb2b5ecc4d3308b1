package hedging

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestTTFTWindowPercentile(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	w := new(ttftWindow)
	for i := 1; i <= 100; i++ {
		w.add(now, time.Duration(i)*time.Millisecond)
	}
	d, ok := w.percentile(now, 95, time.Minute, 20)
	require.True(t, ok)
	require.InDelta(t, float64(95*time.Millisecond), float64(d), float64(time.Millisecond))

	// Cached for refreshEvery: different parameters within it change nothing.
	d2, ok := w.percentile(now.Add(refreshEvery/2), 50, time.Minute, 20)
	require.True(t, ok)
	require.Equal(t, d, d2)

	// Recomputed afterwards.
	d, ok = w.percentile(now.Add(refreshEvery), 50, time.Minute, 20)
	require.True(t, ok)
	require.InDelta(t, float64(50*time.Millisecond), float64(d), float64(time.Millisecond))

	w2 := new(ttftWindow)
	for i := 1; i <= 100; i++ {
		w2.add(now, time.Duration(i)*time.Millisecond)
	}
	d, ok = w2.percentile(now, 0, time.Minute, 20)
	require.True(t, ok)
	require.Equal(t, time.Millisecond, d)
	w3 := new(ttftWindow)
	for i := 1; i <= 100; i++ {
		w3.add(now, time.Duration(i)*time.Millisecond)
	}
	d, ok = w3.percentile(now, 100, time.Minute, 20)
	require.True(t, ok)
	require.Equal(t, 100*time.Millisecond, d)
}

func TestTTFTWindowMinSamples(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	w := new(ttftWindow)
	for range 19 {
		w.add(now, 10*time.Millisecond)
	}
	_, ok := w.percentile(now, 95, time.Minute, 20)
	require.False(t, ok, "19 samples are fewer than 20")

	w.add(now, 10*time.Millisecond)
	_, ok = w.percentile(now.Add(refreshEvery/2), 95, time.Minute, 20)
	require.False(t, ok, "the answer is cached for refreshEvery")
	d, ok := w.percentile(now.Add(refreshEvery), 95, time.Minute, 20)
	require.True(t, ok)
	require.Equal(t, 10*time.Millisecond, d)

	// min_samples 0 still needs one sample.
	_, ok = new(ttftWindow).percentile(now, 95, time.Minute, 0)
	require.False(t, ok)
}

func TestTTFTWindowExpiry(t *testing.T) {
	start := time.Unix(1_700_000_000, 0)
	w := new(ttftWindow)
	for range 30 {
		w.add(start, time.Second) // old and slow
	}
	later := start.Add(time.Minute)
	for range 30 {
		w.add(later, 10*time.Millisecond) // recent and fast
	}
	d, ok := w.percentile(later, 95, 30*time.Second, 20)
	require.True(t, ok)
	require.Equal(t, 10*time.Millisecond, d, "old samples are out of the window")

	_, ok = w.percentile(later.Add(time.Minute), 95, 30*time.Second, 20)
	require.False(t, ok, "every sample expired")
}

func TestTTFTWindowRingBounded(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	w := new(ttftWindow)
	for range maxSamples {
		w.add(now, time.Second)
	}
	// Overwriting the whole ring replaces every old sample.
	for range maxSamples {
		w.add(now, time.Millisecond)
	}
	require.Len(t, w.samples, maxSamples)
	d, ok := w.percentile(now, 100, time.Minute, 20)
	require.True(t, ok)
	require.Equal(t, time.Millisecond, d)
}

func TestDelaysBoundModels(t *testing.T) {
	var d delays
	first := d.window("m")
	require.Same(t, first, d.window("m"))
	for i := range maxModels - 1 {
		require.NotNil(t, d.window(fmt.Sprint("model-", i)))
	}
	require.Nil(t, d.window("one-too-many"))
	require.Same(t, first, d.window("m"), "known models still have their window")
}

func TestHandlerDelay(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	h := &Handler{Delay: caddyDuration(200 * time.Millisecond), Percentile: 90, Window: caddyDuration(time.Minute),
		MinSamples: 5, MinDelay: caddyDuration(20 * time.Millisecond), MaxDelay: caddyDuration(time.Second), delays: new(delays)}

	// Too few samples: the fixed delay.
	d, ok := h.delay("m", now)
	require.True(t, ok)
	require.Equal(t, 200*time.Millisecond, d)

	// Adaptive, clamped to min_delay.
	for range 10 {
		h.delays.window("fast").add(now, time.Millisecond)
		h.delays.window("slow").add(now, 10*time.Second)
		h.delays.window("mid").add(now, 300*time.Millisecond)
	}
	d, _ = h.delay("fast", now)
	require.Equal(t, 20*time.Millisecond, d)
	d, _ = h.delay("slow", now)
	require.Equal(t, time.Second, d)
	d, _ = h.delay("mid", now)
	require.Equal(t, 300*time.Millisecond, d)

	// Neither a delay nor samples: no hedging.
	h.Delay = 0
	_, ok = h.delay("unknown", now)
	require.False(t, ok)
}
