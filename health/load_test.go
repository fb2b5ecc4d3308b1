package health

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestCost(t *testing.T) {
	for _, tc := range []struct {
		name        string
		a, b        Load
		weightA, wB float64
		want        string // "a", "b" or "tie"
	}{
		{"idle, no samples: a tie", Load{}, Load{}, 1, 1, "tie"},
		{"fewer requests wins", Load{TTFT: .1, Requests: 1}, Load{TTFT: .1, Requests: 3}, 1, 1, "a"},
		{"slow node loses at equal load", Load{TTFT: .3, Requests: 1}, Load{TTFT: .1, Requests: 1}, 1, 1, "b"},
		{"slow idle node beats a fast busy one", Load{TTFT: .2}, Load{TTFT: .1, Requests: 3}, 1, 1, "a"},
		{"unknown node gets the other's TTFT, not zero", Load{Requests: 2}, Load{TTFT: .1, Requests: 1}, 1, 1, "b"},
		{"unknown idle node wins over a loaded one", Load{}, Load{TTFT: .1, Requests: 1}, 1, 1, "a"},
		{"saturated engine queue loses", Load{TTFT: .1, Requests: 8 + 20}, Load{TTFT: .15, Requests: 8}, 1, 1, "b"},
		{"capacity: idle 8 slots beat idle 1", Load{TTFT: .1, Capacity: 8}, Load{TTFT: .1, Capacity: 1}, 1, 1, "a"},
		{"capacity: utilisation, not requests", Load{TTFT: .1, Requests: 6, Capacity: 16}, Load{TTFT: .1, Requests: 2, Capacity: 2}, 1, 1, "a"},
		{"one capacity unknown: requests", Load{TTFT: .1, Requests: 6, Capacity: 16}, Load{TTFT: .1, Requests: 2}, 1, 1, "b"},
		{"weight divides", Load{TTFT: .1, Requests: 3}, Load{TTFT: .1, Requests: 1}, 4, 1, "a"},
		{"a slow node without recent samples drifts back", Load{TTFT: .5, Confidence: .01}, Load{TTFT: .1, Requests: 1}, 1, 1, "a"},
		{"with recent samples it stays slow", Load{TTFT: .5, Confidence: .99}, Load{TTFT: .1, Requests: 1}, 1, 1, "b"},
		{"both without recent samples: load decides, not swapped TTFTs", Load{TTFT: .5, Confidence: 1e-9}, Load{TTFT: .1, Confidence: 1e-9, Requests: 1}, 1, 1, "a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sure := func(l Load) Load { // fresh samples: fully trusted
				if l.TTFT > 0 && l.Confidence == 0 {
					l.Confidence = 1
				}
				return l
			}
			ca, cb := Cost(sure(tc.a), sure(tc.b), tc.weightA, tc.wB)
			got := "tie"
			switch {
			case ca < cb:
				got = "a"
			case cb < ca:
				got = "b"
			}
			require.Equal(t, tc.want, got, "costs %v and %v", ca, cb)
		})
	}
}

func TestLoadEngineFigures(t *testing.T) {
	tr := NewTracker(nil)
	n := tr.Node("a:1")
	n.Begin(t0, 0) // one request of this process in flight
	require.Equal(t, Load{Requests: 1, Capacity: 4}, n.Load(4, t0))

	n.SetEngineLoad(EngineLoad{Running: 6, Waiting: 3, MaxRunning: 8, At: t0})
	require.Equal(t, Load{Requests: 9, Capacity: 8}, n.Load(0, t0), "fresh figures: others' 8 requests count too")
	done := n.Begin(t0, 0)
	done.End(Succeeded, t0)
	require.Equal(t, 9.0, n.Load(0, t0).Requests, "this process's own requests count once, fresh")
	require.Equal(t, Load{Requests: 9, Capacity: 4}, n.Load(4, t0), "max_concurrency overrides the engine's capacity")

	n.SetEngineLoad(EngineLoad{Running: 1, At: t0.Add(-time.Second)})
	require.Equal(t, 9.0, n.Load(0, t0).Requests, "an older report does not replace a newer one")

	stale := t0.Add(LoadDefaults.Staleness + time.Millisecond)
	require.Equal(t, Load{Requests: 1}, n.Load(0, stale), "stale figures are unknown: this process's count, not zero")
}

func TestLoadPrefill(t *testing.T) {
	tr := NewTracker(nil)
	n := tr.Node("a:1")
	a := n.Begin(t0, 3*LoadDefaults.PrefillTokens)
	require.InDelta(t, 1+3, n.Load(0, t0).Requests, 1e-9, "a long prompt counts for more than a short one")
	a.FirstToken(true, t0.Add(100*time.Millisecond))
	require.InDelta(t, 1, n.Load(0, t0).Requests, 1e-9, "past its first token, its prompt is no longer prefill work")
	a.End(Succeeded, t0.Add(time.Second))
	require.Zero(t, n.Load(0, t0).Requests)

	b := n.Begin(t0, 2*LoadDefaults.PrefillTokens)
	b.End(Failed, t0) // never reached a token
	require.Zero(t, n.Load(0, t0).Requests)
}

func TestPeakEWMA(t *testing.T) {
	tr := NewTracker(nil)
	n := tr.Node("a:1")
	ttft := func() float64 { return n.Load(0, t0).TTFT }

	n.ObserveTTFT(time.Second, true, t0)
	require.InDelta(t, 1, ttft(), 1e-9, "a node that only lost races is at least that slow")
	n.ObserveTTFT(50*time.Millisecond, true, t0)
	require.InDelta(t, 1, ttft(), 1e-9, "a lower bound never lowers it")
	n = tr.Node("c:1")
	n.ObserveTTFT(100*time.Millisecond, false, t0)
	require.InDelta(t, .1, ttft(), 1e-9)

	n.ObserveTTFT(500*time.Millisecond, false, t0.Add(time.Second))
	require.InDelta(t, .5, ttft(), 1e-9, "a slow sample takes over at once")
	require.InDelta(t, .5, n.Load(0, t0.Add(time.Second+LoadDefaults.HalfLife)).Confidence, 1e-9,
		"confidence halves every half-life without a sample")

	// A fast sample one half-life later pulls it halfway down.
	n.ObserveTTFT(100*time.Millisecond, false, t0.Add(time.Second+LoadDefaults.HalfLife))
	require.InDelta(t, .3, ttft(), 1e-9)

	n.ObserveTTFT(200*time.Millisecond, true, t0.Add(20*time.Second))
	require.InDelta(t, .3, ttft(), 1e-9, "a lower bound below the average says nothing")
	n.ObserveTTFT(2*time.Second, true, t0.Add(21*time.Second))
	require.InDelta(t, 2, ttft(), 1e-9, "a loser that took longer raises it")

	// Only streamed first tokens are samples: a non-streamed answer's
	// first byte comes at its end.
	m := tr.Node("b:1")
	a := m.Begin(t0, 0)
	a.FirstToken(false, t0.Add(3*time.Second))
	require.Zero(t, m.Load(0, t0).TTFT)
}
