package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/ai-lb/ai-lb/health"
)

// LoadFigures is one node's engine load as its agent publishes it: the
// message on the load channel and the value in the load hash (see Keys),
// one JSON object of 46 to about 62 bytes plus the node ID:
//
//	{"t":1717171717171,"id":"gpu-7","r":3,"w":1,"kv":0.42,"max":8}
//
// t is when Redis stored the figures (Unix ms by the Redis clock), r and w
// the engine's running and waiting requests, kv its KV-cache usage (0-1,
// three decimals) and max its capacity in requests (left out when the
// engine does not say).
type LoadFigures struct {
	Millis       int64   `json:"t,omitempty"`
	ID           string  `json:"id"`
	Running      float64 `json:"r"`
	Waiting      float64 `json:"w"`
	KVCacheUsage float64 `json:"kv"`
	MaxRunning   float64 `json:"max,omitempty"`
}

// same reports whether two figures say the same, whatever their times.
func (f LoadFigures) same(g LoadFigures) bool {
	f.Millis, g.Millis = 0, 0
	return f == g
}

// EngineLoad returns the figures as node health takes them, read at at
// (by the local clock).
func (f LoadFigures) EngineLoad(at time.Time) health.EngineLoad {
	return health.EngineLoad{Running: f.Running, Waiting: f.Waiting, KVCacheUsage: f.KVCacheUsage, MaxRunning: f.MaxRunning, At: at}
}

// decodeLoad parses one load message or hash value.
func decodeLoad(raw string) (LoadFigures, error) {
	var f LoadFigures
	if err := json.Unmarshal([]byte(raw), &f); err != nil {
		return f, err
	}
	if f.ID == "" || f.Millis <= 0 {
		return f, errors.New("no id or time")
	}
	return f, nil
}

// loadScript stores a node's load figures, stamped with the Redis clock,
// and publishes them, unless the node is not registered (deregistered or
// pruned since the agent scraped it): figures never outlive their node's
// entry. It returns the stamp, or nil when the node is not registered.
// KEYS: nodes, load. ARGV: id, the figures' JSON without "t", load channel.
var loadScript = redis.NewScript(luaNow + `
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
	return false
end
local ms = nowMillis()
local msg = '{"t":' .. ms .. ',' .. string.sub(ARGV[2], 2)
redis.call('HSET', KEYS[2], ARGV[1], msg)
redis.call('PUBLISH', ARGV[3], msg)
return ms
`)

// PublishLoad stores a registered node's engine load and announces it to
// every ai-lb replica. It reports whether the node was registered (else
// nothing is written).
func (c *Client) PublishLoad(ctx context.Context, f LoadFigures) (bool, error) {
	f.Millis = 0
	raw, err := json.Marshal(f)
	if err != nil {
		return false, err
	}
	err = loadScript.Run(ctx, c.rdb, []string{c.keys.Nodes, c.keys.Load}, f.ID, raw, c.keys.Load).Err()
	if err == redis.Nil {
		return false, nil
	}
	return err == nil, err
}

// DefaultLoadInterval is how often an agent reads its node's engine load.
const DefaultLoadInterval = time.Second

// LoadRefreshIntervals is how many load intervals an agent lets pass
// without publishing figures that did not change: fewer than the three
// intervals after which ai-lb counts them as stale (health.LoadDefaults).
const LoadRefreshIntervals = 2

// noMetricsRetry is how long an agent waits before it asks again a node
// that has no engine metrics (Ollama, llama.cpp without --metrics), so as
// not to fill its access log with 404s.
const noMetricsRetry = 30 * time.Second

// errNoMetrics is a node without engine load figures on /metrics.
var errNoMetrics = errors.New("no engine load figures on /metrics")

// publishLoad reads the node's /metrics every interval and publishes what
// changed (and unchanged figures every LoadRefreshIntervals), until ctx
// ends. A failed read publishes nothing, so that replicas see the figures
// go stale rather than drop to zero.
func (a *Agent) publishLoad(ctx context.Context, interval time.Duration, logger *zap.Logger) {
	var last LoadFigures
	unchanged := 0
	var lastErr string
	for {
		start, wait := time.Now(), interval
		f, err := a.scrapeLoad(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			if err.Error() != lastErr {
				logger.Info("not publishing engine load", zap.String("id", a.Node.ID), zap.Error(err))
				lastErr = err.Error()
			}
			if errors.Is(err, errNoMetrics) {
				wait = max(wait, noMetricsRetry)
			}
			last, unchanged = LoadFigures{}, 0
		default:
			if lastErr != "" {
				logger.Info("publishing engine load", zap.String("id", a.Node.ID))
				lastErr = ""
			}
			if f.same(last) && unchanged+1 < LoadRefreshIntervals {
				unchanged++
				break
			}
			// A Redis failure is the heartbeat's to report; the next
			// interval tries again.
			if ok, err := a.Client.PublishLoad(ctx, f); err == nil && ok {
				last, unchanged = f, 0
			}
		}
		next := time.NewTimer(time.Until(start.Add(wait)))
		select {
		case <-ctx.Done():
			next.Stop()
			return
		case <-next.C:
		}
	}
}

// scrapeLoad reads the node's engine load from its /metrics.
func (a *Agent) scrapeLoad(ctx context.Context) (LoadFigures, error) {
	ctx, cancel := context.WithTimeout(ctx, ProbeTimeout)
	defer cancel()
	u, err := nodeEndpoint(a.Node.URL, "/metrics")
	if err != nil {
		return LoadFigures{}, err
	}
	resp, err := get(ctx, u)
	if err != nil {
		return LoadFigures{}, err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusNotImplemented:
		return LoadFigures{}, fmt.Errorf("GET %s: %s: %w", u, resp.Status, errNoMetrics)
	case resp.StatusCode != http.StatusOK:
		return LoadFigures{}, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	m, found, err := ParseEngineMetrics(io.LimitReader(resp.Body, maxMetricsBody))
	if err != nil {
		return LoadFigures{}, fmt.Errorf("GET %s: %v", u, err)
	}
	if !found {
		return LoadFigures{}, fmt.Errorf("GET %s: %w", u, errNoMetrics)
	}
	return LoadFigures{ID: a.Node.ID, Running: m.Running, Waiting: m.Waiting,
		KVCacheUsage: math.Round(m.KVCacheUsage*1000) / 1000, MaxRunning: m.MaxRunning}, nil
}

// maxMetricsBody bounds how much of a /metrics body is read.
const maxMetricsBody = 16 << 20
