package health

import (
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

var t0 = time.Unix(1_800_000_000, 0)

// attempt runs one attempt on n with outcome o at now.
func attempt(n *Node, o Outcome, now time.Time) {
	n.Begin(now, 0).End(o, now)
}

func TestInFlight(t *testing.T) {
	tr := NewTracker(nil)
	n := tr.Node("a:1")
	require.Same(t, n, tr.Node("a:1"))
	require.Nil(t, tr.Lookup("b:1"))
	a1, a2 := n.Begin(t0, 0), n.Begin(t0, 0)
	require.Equal(t, 2, n.InFlight())
	require.True(t, n.Full(2))
	require.False(t, n.Full(3))
	require.False(t, n.Full(0), "0 is no limit")
	a1.End(Succeeded, t0)
	a1.End(Succeeded, t0) // a second End does nothing
	require.Equal(t, 1, n.InFlight())
	a2.End(Abandoned, t0)
	require.Zero(t, n.InFlight())
}

func TestConsecutiveFailuresEject(t *testing.T) {
	tr := NewTracker(nil)
	ejected, recovered := testutil.ToFloat64(ejections), testutil.ToFloat64(recoveries)
	n := tr.Node("a:1")
	for i := range Defaults.ConsecutiveFailures - 1 {
		attempt(n, Failed, t0)
		require.Equal(t, Ready, n.State(t0), "after %d failures", i+1)
	}
	attempt(n, Succeeded, t0) // a success resets the streak
	for range Defaults.ConsecutiveFailures - 1 {
		attempt(n, Failed, t0)
	}
	require.Equal(t, Ready, n.State(t0))
	attempt(n, Failed, t0)
	require.Equal(t, Ejected, n.State(t0))
	require.Equal(t, ejected+1, testutil.ToFloat64(ejections))

	// Abandoned and overloaded attempts say nothing.
	attempt(n, Abandoned, t0)
	attempt(n, Overloaded, t0)
	require.Equal(t, Ejected, n.State(t0))

	// After the backoff one probe decides.
	later := t0.Add(Defaults.BaseEjection)
	require.Equal(t, Probe, n.State(later))
	probe := n.Begin(later, 0)
	require.Equal(t, Ejected, n.State(later), "one probe at a time")
	probe.End(Succeeded, later)
	require.Equal(t, Ready, n.State(later))
	require.Equal(t, recovered+1, testutil.ToFloat64(recoveries))
}

func TestBackoffGrows(t *testing.T) {
	tr := NewTracker(nil)
	tr.SetOptions(Options{ConsecutiveFailures: 1, BaseEjection: time.Second, MaxEjection: 4 * time.Second})
	n := tr.Node("a:1")
	now := t0
	attempt(n, Failed, now)
	for _, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second} {
		require.Equal(t, Ejected, n.State(now.Add(want-time.Millisecond)))
		now = now.Add(want)
		require.Equal(t, Probe, n.State(now), "ejected for %v", want)
		attempt(n, Failed, now) // the probe fails: ejected again, longer
	}
	attempt(n, Succeeded, now.Add(4*time.Second))
	require.Equal(t, Ready, n.State(now.Add(4*time.Second)))
	// Recovered: the next ejection starts from the base again.
	now = now.Add(10 * time.Second)
	attempt(n, Failed, now)
	require.Equal(t, Probe, n.State(now.Add(time.Second)))
}

// alternate is Succeeded for even i, Failed for odd.
func alternate(i int) Outcome {
	if i%2 == 1 {
		return Failed
	}
	return Succeeded
}

func TestFailureRateEjects(t *testing.T) {
	tr := NewTracker(nil)
	n := tr.Node("a:1")
	// Alternating: never 5 in a row, but half of 10 attempts failed.
	for i := range Defaults.MinRequests - 1 {
		attempt(n, alternate(i), t0.Add(time.Duration(i)*100*time.Millisecond))
		require.Equal(t, Ready, n.State(t0))
	}
	attempt(n, Failed, t0.Add(time.Second))
	require.Equal(t, Ejected, n.State(t0.Add(time.Second)))

	// Outside the window old attempts no longer count.
	m := tr.Node("b:1")
	for i := range Defaults.MinRequests - 1 {
		attempt(m, alternate(i), t0)
	}
	later := t0.Add(Defaults.Window + time.Second)
	attempt(m, Failed, later)
	require.Equal(t, Ready, m.State(later))
}

func TestOff(t *testing.T) {
	tr := NewTracker(nil)
	tr.SetOptions(Options{Off: true})
	n := tr.Node("a:1")
	for range 100 {
		attempt(n, Failed, t0)
	}
	require.Equal(t, Ready, n.State(t0))
}

func TestForget(t *testing.T) {
	tr := NewTracker(nil)
	busy := tr.Node("busy:1").Begin(t0, 0)
	tr.Node("idle:1").Begin(t0, 0).End(Succeeded, t0)
	recent := t0.Add(2 * forgetAfter)
	tr.Node("recent:1").Begin(recent, 0).End(Succeeded, recent)
	tr.forget(recent.Add(time.Minute))
	require.NotNil(t, tr.Lookup("busy:1"), "kept while a request is in flight")
	require.Nil(t, tr.Lookup("idle:1"))
	require.NotNil(t, tr.Lookup("recent:1"))
	busy.End(Succeeded, t0)
}

func TestConcurrent(t *testing.T) {
	tr := NewTracker(nil)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				n := tr.Node([]string{"a:1", "b:1"}[(w+i)%2])
				o := Outcome(i % 4)
				now := t0.Add(time.Duration(i) * time.Millisecond)
				a := n.Begin(now, 0)
				_ = n.State(now)
				a.End(o, now)
			}
		}()
	}
	wg.Wait()
	require.Zero(t, tr.Node("a:1").InFlight())
	require.Zero(t, tr.Node("b:1").InFlight())
}

func BenchmarkBeginEnd(b *testing.B) {
	tr := NewTracker(nil)
	n := tr.Node("a:1")
	b.ReportAllocs()
	now := t0
	for b.Loop() {
		n.Begin(now, 0).End(Succeeded, now)
	}
}
