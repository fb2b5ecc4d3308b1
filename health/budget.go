package health

import (
	"strconv"
	"strings"
	"sync"
	"time"
)

// ParseFraction reads a fraction of requests written as 0.1 or as 10%, as
// budgets and rates are configured.
func ParseFraction(s string) (float64, error) {
	if pct, ok := strings.CutSuffix(s, "%"); ok {
		f, err := strconv.ParseFloat(pct, 64)
		return f / 100, err
	}
	return strconv.ParseFloat(s, 64)
}

// Budget bounds the extra upstream load that retries or hedges add: over
// a sliding window, extra attempts may be at most ratio × requests +
// floor. It keeps per-bucket counts, like Finagle's and Linkerd's retry
// budgets, so a slow or failing cluster is not hit with multiplied
// traffic. A nil Budget allows everything.
type Budget struct {
	ratio  float64
	floor  int
	bucket time.Duration

	mu       sync.Mutex
	requests []int64 // per bucket, a ring
	extra    []int64
	epoch    int64 // index of the newest bucket
}

// NewBudget returns a budget of ratio × requests + floor extra attempts
// over window.
func NewBudget(ratio float64, floor int, window time.Duration) *Budget {
	buckets := 10
	return &Budget{
		ratio:    ratio,
		floor:    floor,
		bucket:   max(window/time.Duration(buckets), time.Millisecond),
		requests: make([]int64, buckets),
		extra:    make([]int64, buckets),
	}
}

// NewBudgetOr is NewBudget with configured settings, where an unset (nil)
// ratio or floor takes the given default and an explicit 0 is kept.
func NewBudgetOr(ratio *float64, floor *int, defaultRatio float64, defaultFloor int, window time.Duration) *Budget {
	if ratio != nil {
		defaultRatio = *ratio
	}
	if floor != nil {
		defaultFloor = *floor
	}
	return NewBudget(defaultRatio, defaultFloor, window)
}

// advance moves the ring to now, zeroing expired buckets. b.mu is held.
func (b *Budget) advance(now time.Time) int {
	e := now.UnixNano() / int64(b.bucket)
	n := int64(len(b.requests))
	if gap := e - b.epoch; gap > 0 {
		for i := int64(1); i <= min(gap, n); i++ {
			j := (b.epoch + i) % n
			b.requests[j], b.extra[j] = 0, 0
		}
		b.epoch = e
	}
	return int(b.epoch % n)
}

// Request records a request the budget is a share of.
func (b *Budget) Request(now time.Time) {
	if b == nil {
		return
	}
	b.mu.Lock()
	b.requests[b.advance(now)]++
	b.mu.Unlock()
}

// Take reports whether one more extra attempt fits the budget, and
// records it if so.
func (b *Budget) Take(now time.Time) bool {
	if b == nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	i := b.advance(now)
	var requests, extra int64
	for j := range b.requests {
		requests += b.requests[j]
		extra += b.extra[j]
	}
	if float64(extra+1) > b.ratio*float64(requests)+float64(b.floor) {
		return false
	}
	b.extra[i]++
	return true
}
