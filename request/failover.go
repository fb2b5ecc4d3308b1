package request

import (
	"time"

	"github.com/ai-lb/ai-lb/health"
)

// Failover is how the attempts of a request may be retried after a failure
// before the first byte reached the client. The ai_lb handler sets it on
// each request; whoever runs the attempts follows it.
type Failover struct {
	// Retries bounds the attempts started after failures (0: none).
	Retries int
	// TryDuration is how long after the request began a retry may still
	// start (0: no limit).
	TryDuration time.Duration
	// StreamHeaderTimeout is how long an attempt of a streamed request may
	// wait for the node's response headers, which streaming servers send
	// at once, before the attempt counts as a failure of its node and is
	// retried (0: no limit).
	StreamHeaderTimeout time.Duration
	// Budget bounds the retries of answers that reached an engine (429,
	// 5xx) over all requests; retries after connection failures do not
	// draw on it. Nil: unbounded.
	Budget *health.Budget
}
