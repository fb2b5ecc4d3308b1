package simnode

import (
	"context"
	"time"
)

// draws are one request's random numbers, taken under a single lock.
type draws struct {
	jitter, slow, fail float64
}

func (n *Node) draw() draws {
	n.rngMu.Lock()
	d := draws{n.rng.Float64(), n.rng.Float64(), n.rng.Float64()}
	n.rngMu.Unlock()
	return d
}

// ttft returns the prefill time for a request given its random draws.
func (c *Config) ttft(d draws) time.Duration {
	if c.TTFT <= 0 {
		return 0
	}
	t := float64(c.TTFT) * (1 + c.TTFTJitter*(2*d.jitter-1))
	if d.slow < c.SlowFraction {
		t *= c.SlowFactor
	}
	return time.Duration(t)
}

// sleeper waits on a reusable timer while watching the request context, so
// that a client going away is noticed at once rather than after the delay.
type sleeper struct {
	ctx context.Context
	t   *time.Timer
}

// sleep waits for d and reports whether the client is still there.
func (s *sleeper) sleep(d time.Duration) bool {
	if d <= 0 {
		return s.ctx.Err() == nil
	}
	if s.t == nil {
		s.t = time.NewTimer(d)
	} else {
		s.t.Reset(d)
	}
	select {
	case <-s.ctx.Done():
		return false
	case <-s.t.C:
		return true
	}
}

func (s *sleeper) stop() {
	if s.t != nil {
		s.t.Stop()
	}
}
