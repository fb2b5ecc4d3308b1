package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
)

// Agent keeps one node registered while it runs, and says whether the node
// can take requests: before every heartbeat (every TTL/3) it probes the
// node, registers it as Unhealthy as soon as a probe fails, and as healthy
// again as soon as one passes. It deregisters the node when its context
// ends. Its first registration ends a drain left by an earlier agent; a
// drain set while it runs (Client.Drain, or Drain) lasts.
//
// A probe is healthy when GET <url>/health answers 2xx (vLLM, SGLang,
// llama.cpp, TGI), or, for a server without /health (Ollama), when /health
// answers 404 and its models can be read (FetchModels). Any other answer, a
// connection error, or no answer within ProbeTimeout (a hung node) fails it.
// Unless KeepModels is set, every probe also reads /v1/models, and the
// registered models follow the node's. A node without /v1/models (404) is
// read through Ollama's /api/tags instead (see FetchModels).
//
// Every LoadInterval it also reads the engine's load from the node's
// Prometheus /metrics (see ParseEngineMetrics) and publishes it to every
// ai-lb replica (Client.PublishLoad): when it changed, and at least every
// LoadRefreshIntervals. A node without engine metrics publishes nothing.
type Agent struct {
	Client *Client
	Node   Node
	Logger *zap.Logger
	// KeepModels registers Node.Models as given (an operator named them)
	// instead of the models the node's /v1/models lists.
	KeepModels bool
	// Drain, when it delivers a signal (`caddy ai-lb register` wires
	// SIGUSR1 to it), makes the agent register the node as draining at
	// once, and keep heartbeating it so until its context ends.
	Drain <-chan os.Signal
	// LoadInterval is how often the node's engine load is read and
	// published: 0 means DefaultLoadInterval, a negative value never.
	LoadInterval time.Duration
}

// HeartbeatInterval is how often an agent re-registers its node: three
// heartbeats per TTL, so one lost heartbeat never expires a live node.
func HeartbeatInterval(ttl time.Duration) time.Duration { return ttl / 3 }

// ProbeTimeout bounds an agent's probe of its node; a node that has not
// answered by then is unhealthy. A probe never takes more than half the
// heartbeat interval, so that a hung node cannot delay the heartbeat that
// reports it past its TTL.
const ProbeTimeout = 2 * time.Second

// Run registers the node and heartbeats until ctx ends, then deregisters
// it. Redis errors are logged (once per outage) and retried at the next
// heartbeat, as are the node's failures; Run returns only when ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	logger := a.Logger
	if logger == nil {
		logger = zap.NewNop()
	}
	if err := a.Node.Validate(); err != nil {
		return err
	}
	node := a.Node
	interval := HeartbeatInterval(node.TTL())
	tick := time.NewTicker(interval)
	defer tick.Stop()
	failing := false
	mode := upFresh // until a registration succeeds
	var loadDone chan struct{}
	for {
		models, probeErr := a.probe(ctx, min(ProbeTimeout, interval/2))
		switch {
		case ctx.Err() != nil:
		case probeErr != nil:
			if !node.Unhealthy {
				logger.Warn("node failed its probe; registering it unhealthy", zap.String("id", node.ID), zap.Error(probeErr))
			}
			node.Unhealthy = true
		default:
			if node.Unhealthy {
				logger.Info("node healthy again", zap.String("id", node.ID))
			}
			node.Unhealthy = false
			if !slices.Equal(models, node.Models) {
				logger.Info("node's models changed", zap.String("id", node.ID), zap.Strings("models", models))
				node.Models = models
			}
		}
		err := a.Client.register(ctx, node, mode)
		if err == nil {
			mode = upKeep
		}
		if loadDone == nil && a.loadInterval() > 0 {
			// After the first registration: figures are only stored
			// for a registered node.
			loadDone = make(chan struct{})
			go func() {
				defer close(loadDone)
				a.publishLoad(ctx, a.loadInterval(), logger)
			}()
		}
		switch {
		case ctx.Err() != nil:
		case err != nil && !failing:
			logger.Error("heartbeat failed; retrying", zap.String("id", node.ID), zap.Error(err))
			failing = true
		case err == nil && failing:
			logger.Info("heartbeat restored", zap.String("id", node.ID))
			failing = false
		}
		select {
		case <-ctx.Done():
			if loadDone != nil {
				<-loadDone // no figures after the deregistration
			}
			dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := a.Client.Deregister(dctx, node.ID)
			return err
		case <-a.Drain:
			if !node.Draining {
				logger.Info("draining: the node gets no new requests", zap.String("id", node.ID))
			}
			node.Draining = true
		case <-tick.C:
		}
	}
}

func (a *Agent) loadInterval() time.Duration {
	if a.LoadInterval == 0 {
		return DefaultLoadInterval
	}
	return a.LoadInterval
}

// probe checks the node (see Agent) within timeout, and returns the models
// to register.
func (a *Agent) probe(ctx context.Context, timeout time.Duration) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	healthURL, err := nodeEndpoint(a.Node.URL, "/health")
	if err != nil {
		return nil, err
	}
	resp, err := get(ctx, healthURL)
	if err != nil {
		return nil, err
	}
	resp.Body.Close()
	healthy := resp.StatusCode/100 == 2
	if !healthy && resp.StatusCode != http.StatusNotFound {
		return nil, fmt.Errorf("GET %s: %s", healthURL, resp.Status)
	}
	if healthy && a.KeepModels {
		return a.Node.Models, nil
	}
	// /v1/models: the models to register, and the health of a node
	// without /health.
	models, err := FetchModels(ctx, a.Node.URL)
	if err != nil {
		return nil, err
	}
	if a.KeepModels {
		return a.Node.Models, nil
	}
	return models, nil
}

// FetchModels reads the models a node lists: its GET /v1/models, or for a
// server without that (404) its Ollama GET /api/tags.
func FetchModels(ctx context.Context, nodeURL string) ([]string, error) {
	models, status, err := fetchModels(ctx, nodeURL, "/v1/models")
	if status == http.StatusNotFound {
		models, _, err = fetchModels(ctx, nodeURL, "/api/tags")
	}
	return models, err
}

// fetchModels reads the models of a list at path, in OpenAI's form
// ({"data":[{"id"}]}) or Ollama's ({"models":[{"name"}]}), and returns
// the answer's status too.
func fetchModels(ctx context.Context, nodeURL, path string) ([]string, int, error) {
	u, err := nodeEndpoint(nodeURL, path)
	if err != nil {
		return nil, 0, err
	}
	resp, err := get(ctx, u)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, resp.StatusCode, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
		Models []struct {
			Name string `json:"name"`
		} `json:"models"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		return nil, resp.StatusCode, fmt.Errorf("GET %s: %v", u, err)
	}
	var models []string
	for _, m := range list.Data {
		models = append(models, m.ID)
	}
	for _, m := range list.Models {
		models = append(models, m.Name)
	}
	if len(models) == 0 {
		return nil, resp.StatusCode, fmt.Errorf("GET %s: no models listed", u)
	}
	return models, resp.StatusCode, nil
}

// nodeEndpoint returns the URL of path on a node whose registered URL may
// end in /v1.
func nodeEndpoint(nodeURL, path string) (string, error) {
	u, err := url.Parse(nodeURL)
	if err != nil {
		return "", err
	}
	u.Path = strings.TrimSuffix(strings.TrimSuffix(u.Path, "/"), "/v1") + path
	return u.String(), nil
}

// get sends a GET whose lifetime ctx bounds.
func get(ctx context.Context, u string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	return http.DefaultClient.Do(req)
}
