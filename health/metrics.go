package health

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Collectors of node health, created once per process so that counts
// survive config reloads, and registered in each config's registry.
var (
	ejections = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "ai_lb", Subsystem: "node", Name: "ejections_total",
		Help: "Nodes ejected for failing (a failed probe ejects again).",
	})
	recoveries = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "ai_lb", Subsystem: "node", Name: "recoveries_total",
		Help: "Ejected nodes that answered again.",
	})
	retries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "ai_lb", Name: "retries_total",
		Help: "Attempts started after a failure before the first byte, by whether it reached an engine (answer) or not (connect).",
	}, []string{"after"})
)

// CountRetry counts a retry; free is one after a connection failure.
func CountRetry(free bool) {
	after := "answer"
	if free {
		after = "connect"
	}
	retries.WithLabelValues(after).Inc()
}

// RegisterMetrics registers the node health collectors in reg.
func RegisterMetrics(reg *prometheus.Registry) error {
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{ejections, recoveries, retries} {
		if err := reg.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				return err
			}
		}
	}
	return nil
}
