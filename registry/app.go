package registry

import (
	"fmt"
	"net/url"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/ai-lb/ai-lb/health"
)

// App is the `ai_lb` app: the registry settings every ai-lb module of a
// config shares. It need not be configured; every field has a default.
//
// The Redis connection and the watcher behind it outlive config reloads:
// configs with the same settings share one, and it stops when the last
// config using it is unloaded.
type App struct {
	// Redis is the registry's Redis URL: redis://[user:pass@]host:port[/db],
	// rediss:// for TLS, `?addr=host:port&addr=...` for Redis Cluster, or
	// `?master_name=NAME` for Sentinel. Placeholders such as
	// {env.REDIS_URL} are expanded. Default: $REDIS_URL, else
	// redis://127.0.0.1:6379.
	Redis string `json:"redis,omitempty"`

	// Prefix names the registry: its keys are `{<prefix>}:...`. Several
	// independent clusters can share one Redis under different prefixes.
	// Default: ai-lb.
	Prefix string `json:"prefix,omitempty"`

	// ResyncInterval is the period of the full registry read that repairs
	// anything the change events missed. Default: 5s (1s with legacy_keys,
	// whose keys are only polled).
	ResyncInterval caddy.Duration `json:"resync_interval,omitempty"`

	// LegacyKeys also reads the nodes that the original ai-lb's monitor
	// writes (`nodes:healthy`, `node:{host:port}:models`,
	// `node:{host:port}:maxconn`), so a deployment of the original can
	// switch load balancer without changing its monitor.
	LegacyKeys bool `json:"legacy_keys,omitempty"`

	watcher *Watcher
	health  *health.Tracker
	poolKey string
}

// watchers holds the Redis watchers in use, keyed by their settings, so
// that a config reload reuses the running one.
var watchers = caddy.NewUsagePool()

// pooledWatcher owns a watcher and its Redis client, and the state of the
// nodes it lists as this process sees them, which outlives reloads with it.
type pooledWatcher struct {
	watcher *Watcher
	client  *Client
	health  *health.Tracker
}

// Destruct stops the watcher and closes its Redis connection.
func (p *pooledWatcher) Destruct() error {
	p.watcher.Close()
	return p.client.Close()
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "ai_lb",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision connects to the registry, or joins the watcher of an earlier
// config with the same settings, and waits for its first read. An
// unreachable Redis is logged by the watcher, never a load error.
func (a *App) Provision(ctx caddy.Context) error {
	redisURL := caddy.NewReplacer().ReplaceAll(a.Redis, "")
	if redisURL == "" {
		redisURL = DefaultRedisURL()
	}
	if a.ResyncInterval < 0 {
		return fmt.Errorf("resync_interval: must not be negative")
	}
	opts := WatcherOptions{Resync: time.Duration(a.ResyncInterval), LegacyKeys: a.LegacyKeys}
	a.poolKey = fmt.Sprintf("%s|%s|%d|%t", redisURL, a.Prefix, opts.Resync, opts.LegacyKeys)
	logger := ctx.Logger()
	val, _, err := watchers.LoadOrNew(a.poolKey, func() (caddy.Destructor, error) {
		client, err := Open(redisURL, a.Prefix)
		if err != nil {
			return nil, err
		}
		logger.Info("watching node registry", zap.String("redis", redactURL(redisURL)), zap.String("prefix", client.Keys().Nodes))
		return &pooledWatcher{watcher: NewWatcher(client, opts, logger), client: client,
			health: health.NewTracker(logger, health.Events{})}, nil
	})
	if err != nil {
		a.poolKey = ""
		return fmt.Errorf("redis: %v", err)
	}
	pooled := val.(*pooledWatcher)
	a.watcher, a.health = pooled.watcher, pooled.health
	// A new watcher (first start, or a reload that changed the registry
	// settings) must not serve an empty snapshot before it has read the
	// registry once. An unreachable Redis fails that read fast, or the
	// wait ends at the read's own timeout.
	select {
	case <-a.watcher.FirstRead():
	case <-time.After(firstReadWait):
	}
	return nil
}

// firstReadWait bounds how long Provision waits for a new watcher's first
// read of the registry.
const firstReadWait = 6 * time.Second

// Start is a no-op: the watcher starts in Provision so that handlers can
// use it as soon as they are provisioned.
func (a *App) Start() error { return nil }

// Stop is a no-op: Cleanup releases the watcher.
func (a *App) Stop() error { return nil }

// Cleanup releases this config's use of the watcher.
func (a *App) Cleanup() error {
	if a.poolKey == "" {
		return nil
	}
	_, err := watchers.Delete(a.poolKey)
	a.poolKey = ""
	return err
}

// Watcher returns the registry watcher.
func (a *App) Watcher() *Watcher { return a.watcher }

// Health returns this process's state of the registry's nodes.
func (a *App) Health() *health.Tracker { return a.health }

// Snapshot returns the current live nodes.
func (a *App) Snapshot() *Snapshot { return a.watcher.Snapshot() }

// FromContext returns the config's ai_lb app, loading it with its defaults
// if the config has none.
func FromContext(ctx caddy.Context) (*App, error) {
	app, err := ctx.App("ai_lb")
	if err != nil {
		return nil, err
	}
	return app.(*App), nil
}

// redactURL hides a password in a Redis URL for logging.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable)"
	}
	return u.Redacted()
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
	_ caddy.Destructor   = (*pooledWatcher)(nil)
)
