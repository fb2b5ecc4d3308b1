package hedging

import (
	"errors"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the hedge's Prometheus collectors. They are created once per
// process, so counts survive config reloads, and registered in each
// config's registry (served by the admin API's /metrics and the metrics
// handler).
type metrics struct {
	attempts       *prometheus.CounterVec
	hedgesWon      prometheus.Counter
	cancelled      prometheus.Counter
	budgetRefusals prometheus.Counter
	ttft           *prometheus.HistogramVec
}

var (
	metricsOnce sync.Once
	shared      *metrics
)

func newMetrics() *metrics {
	const ns, sub = "ai_lb", "hedge"
	return &metrics{
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "attempts_total",
			Help: "Attempts started for hedgeable requests, by role (primary or hedge).",
		}, []string{"role"}),
		hedgesWon: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "won_total",
			Help: "Requests answered by a hedge (an attempt after the first).",
		}),
		cancelled: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "cancelled_total",
			Help: "Attempts cancelled because another attempt won.",
		}),
		budgetRefusals: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "budget_refusals_total",
			Help: "Attempts not started because the hedge budget was spent.",
		}),
		ttft: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Name: "time_to_first_token_seconds",
			Help:    "Time from an attempt's start to its first token, by model.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"model"}),
	}
}

// registerMetrics returns the shared collectors, registered in reg.
func registerMetrics(reg *prometheus.Registry) (*metrics, error) {
	metricsOnce.Do(func() { shared = newMetrics() })
	if reg == nil {
		return shared, nil
	}
	for _, c := range []prometheus.Collector{shared.attempts, shared.hedgesWon, shared.cancelled, shared.budgetRefusals, shared.ttft} {
		if err := reg.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				return nil, err
			}
		}
	}
	return shared, nil
}
