package registry

import (
	"context"
	"time"

	"go.uber.org/zap"
)

// Agent keeps one node registered: it heartbeats every TTL/3 and
// deregisters the node when its context ends.
type Agent struct {
	Client *Client
	Node   Node
	Logger *zap.Logger
}

// HeartbeatInterval is how often an agent re-registers its node: three
// heartbeats per TTL, so one lost heartbeat never expires a live node.
func HeartbeatInterval(ttl time.Duration) time.Duration { return ttl / 3 }

// Run registers the node and heartbeats until ctx ends, then deregisters
// it. Redis errors are logged (once per outage) and retried at the next
// heartbeat; Run returns only when ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	logger := a.Logger
	if logger == nil {
		logger = zap.NewNop()
	}
	if err := a.Node.Validate(); err != nil {
		return err
	}
	tick := time.NewTicker(HeartbeatInterval(a.Node.TTL()))
	defer tick.Stop()
	failing := false
	for {
		err := a.Client.Register(ctx, a.Node)
		switch {
		case ctx.Err() != nil:
		case err != nil && !failing:
			logger.Error("heartbeat failed; retrying", zap.String("id", a.Node.ID), zap.Error(err))
			failing = true
		case err == nil && failing:
			logger.Info("heartbeat restored", zap.String("id", a.Node.ID))
			failing = false
		}
		select {
		case <-ctx.Done():
			dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := a.Client.Deregister(dctx, a.Node.ID)
			return err
		case <-tick.C:
		}
	}
}
