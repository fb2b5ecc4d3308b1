package health

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// takes counts how many of n takes at now the budget grants.
func takes(b *Budget, now time.Time, n int) int {
	granted := 0
	for range n {
		if b.Take(now) {
			granted++
		}
	}
	return granted
}

func TestBudgetRatioAndFloor(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	b := NewBudget(0.1, 1, 10*time.Second)

	// No requests yet: the floor alone.
	require.Equal(t, 1, takes(b, now, 5))

	// 50 requests: 10% of them plus the floor, minus the one taken.
	for range 50 {
		b.Request(now)
	}
	require.Equal(t, 5, takes(b, now, 100)) // 0.1*50 + 1 = 6 in all
	require.False(t, b.Take(now))

	// 10 more requests: one more hedge.
	for range 10 {
		b.Request(now.Add(time.Second))
	}
	require.Equal(t, 1, takes(b, now.Add(time.Second), 10))
}

func TestBudgetZeroFloor(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	b := NewBudget(0.5, 0, time.Minute)
	require.False(t, b.Take(now), "no requests and no floor: no hedge")
	b.Request(now)
	require.False(t, b.Take(now), "0.5 of one request is less than one hedge")
	b.Request(now)
	require.True(t, b.Take(now))
	require.False(t, b.Take(now))
}

func TestBudgetFullRatio(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	b := NewBudget(1, 1, 10*time.Second)
	for range 20 {
		b.Request(now)
	}
	require.Equal(t, 21, takes(b, now, 100))
}

func TestBudgetWindowExpiry(t *testing.T) {
	start := time.Unix(1_700_000_000, 0)
	b := NewBudget(0.1, 1, 10*time.Second) // 1s buckets
	for range 100 {
		b.Request(start)
	}
	require.Equal(t, 11, takes(b, start, 100))

	// Still within the window: spent.
	require.False(t, b.Take(start.Add(5*time.Second)))

	// Once the window has passed, both the requests and the hedges have
	// expired: the floor alone again.
	later := start.Add(11 * time.Second)
	require.Equal(t, 1, takes(b, later, 10))

	// Requests spread over time: only the recent ones count.
	b = NewBudget(0.1, 0, 10*time.Second)
	for s := range 30 {
		for range 10 {
			b.Request(start.Add(time.Duration(s) * time.Second))
		}
	}
	// At 29s the window holds the requests of roughly the last 10 s (one
	// bucket more or less), about 100 of the 300: 10 hedges, not 30.
	got := takes(b, start.Add(29*time.Second), 100)
	require.GreaterOrEqual(t, got, 9)
	require.LessOrEqual(t, got, 11)

	// A long gap wipes everything.
	require.False(t, b.Take(start.Add(time.Hour)))
}

func TestBudgetClockGoingBack(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	b := NewBudget(0.1, 1, 10*time.Second)
	b.Request(now)
	require.True(t, b.Take(now))
	// An earlier timestamp (another goroutine's time.Now) does not reset
	// the window.
	require.False(t, b.Take(now.Add(-3*time.Second)))
}
