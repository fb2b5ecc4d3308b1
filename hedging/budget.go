package hedging

import (
	"sync"
	"time"
)

// budget bounds the extra upstream load hedges add: over a sliding window,
// hedges may be at most ratio × requests + floor. It keeps per-second
// buckets, like Finagle's and Linkerd's retry budgets, so a slow or failing
// cluster is not hit with double traffic.
type budget struct {
	ratio  float64
	floor  int
	bucket time.Duration

	mu       sync.Mutex
	requests []int64 // per bucket, a ring
	hedges   []int64
	epoch    int64 // index of the newest bucket
}

func newBudget(ratio float64, floor int, window time.Duration) *budget {
	buckets := 10
	return &budget{
		ratio:    ratio,
		floor:    floor,
		bucket:   max(window/time.Duration(buckets), time.Millisecond),
		requests: make([]int64, buckets),
		hedges:   make([]int64, buckets),
	}
}

// advance moves the ring to now, zeroing expired buckets. b.mu is held.
func (b *budget) advance(now time.Time) int {
	e := now.UnixNano() / int64(b.bucket)
	n := int64(len(b.requests))
	if gap := e - b.epoch; gap > 0 {
		for i := int64(1); i <= min(gap, n); i++ {
			j := (b.epoch + i) % n
			b.requests[j], b.hedges[j] = 0, 0
		}
		b.epoch = e
	}
	return int(b.epoch % n)
}

// request records a hedgeable request.
func (b *budget) request(now time.Time) {
	b.mu.Lock()
	b.requests[b.advance(now)]++
	b.mu.Unlock()
}

// take reports whether one more attempt fits the budget, and records it if
// so.
func (b *budget) take(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	i := b.advance(now)
	var requests, hedges int64
	for j := range b.requests {
		requests += b.requests[j]
		hedges += b.hedges[j]
	}
	if float64(hedges+1) > b.ratio*float64(requests)+float64(b.floor) {
		return false
	}
	b.hedges[i]++
	return true
}
