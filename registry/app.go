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

	// Ejection tunes outlier ejection: a node that keeps failing is left
	// out of routing for a backoff that grows while it keeps failing,
	// then one probe request decides. On by default; see Ejection's
	// fields for the defaults.
	Ejection *Ejection `json:"ejection,omitempty"`

	// Load tunes the load model the p2c policy costs nodes by; see Load's
	// fields for the defaults.
	Load *Load `json:"load,omitempty"`

	// NodeAllowlist limits the addresses of the nodes ai-lb routes to: a
	// registry entry outside it is neither routed to nor listed, and is
	// logged once. Unset: every address but link-local and cloud metadata
	// ones. See NodeAllowlist.
	NodeAllowlist *NodeAllowlist `json:"node_allowlist,omitempty"`

	watcher *Watcher
	health  *health.Tracker
	poolKey string
}

// Ejection is the outlier ejection of the nodes, shared by every site of
// the process. Unset fields take their defaults.
type Ejection struct {
	// ConsecutiveFailures ejects a node after this many failed attempts
	// in a row (connection failures, 5xx, streams that broke, streamed
	// attempts without headers). Default: 5, as Envoy's consecutive_5xx.
	ConsecutiveFailures int `json:"consecutive_failures,omitempty"`

	// FailureRate ejects a node whose share of failed attempts within
	// Window reaches it, once it had MinRequests there. Default: 0.5.
	FailureRate float64 `json:"failure_rate,omitempty"`

	// MinRequests is the least attempts within Window for FailureRate to
	// count. Default: 10.
	MinRequests int `json:"min_requests,omitempty"`

	// Window is the period of FailureRate. Default: 10s.
	Window caddy.Duration `json:"window,omitempty"`

	// BaseDuration is the first ejection's length; it doubles with each
	// ejection in a row (a failed probe), up to MaxDuration. Default: 5s.
	BaseDuration caddy.Duration `json:"base_duration,omitempty"`

	// MaxDuration bounds an ejection's length. Default: 60s.
	MaxDuration caddy.Duration `json:"max_duration,omitempty"`

	// Off turns ejection off.
	Off bool `json:"off,omitempty"`
}

// Load tunes the load model. Unset fields take their defaults.
type Load struct {
	// TTFTHalfLife is how fast a node's time-to-first-token average
	// forgets: a sample's weight halves every TTFTHalfLife. Default: 10s.
	TTFTHalfLife caddy.Duration `json:"ttft_half_life,omitempty"`

	// Staleness is the age past which a node's published engine figures
	// count as unknown (never as zero load). Default: 3s.
	Staleness caddy.Duration `json:"staleness,omitempty"`

	// PrefillTokens is the prompt tokens in flight on a node that count as
	// one more request. Default: 1000.
	PrefillTokens float64 `json:"prefill_tokens,omitempty"`
}

// settings returns the load settings as node health takes them.
func (l *Load) settings() health.LoadSettings {
	if l == nil {
		return health.LoadSettings{}
	}
	return health.LoadSettings{HalfLife: time.Duration(l.TTFTHalfLife), Staleness: time.Duration(l.Staleness), PrefillTokens: l.PrefillTokens}
}

// validate checks the load settings.
func (l *Load) validate() error {
	if l != nil && (l.TTFTHalfLife < 0 || l.Staleness < 0 || l.PrefillTokens < 0) {
		return fmt.Errorf("load: ttft_half_life, staleness and prefill_tokens must not be negative")
	}
	return nil
}

// options returns the ejection settings as node health takes them.
func (e *Ejection) options() health.Options {
	if e == nil {
		return health.Options{}
	}
	return health.Options{
		ConsecutiveFailures: e.ConsecutiveFailures,
		FailureRate:         e.FailureRate,
		MinRequests:         e.MinRequests,
		Window:              time.Duration(e.Window),
		BaseEjection:        time.Duration(e.BaseDuration),
		MaxEjection:         time.Duration(e.MaxDuration),
		Off:                 e.Off,
	}
}

// validate checks the ejection settings.
func (e *Ejection) validate() error {
	switch {
	case e == nil:
		return nil
	case e.ConsecutiveFailures < 0:
		return fmt.Errorf("ejection: consecutive_failures: must not be negative")
	case e.FailureRate < 0 || e.FailureRate > 1:
		return fmt.Errorf("ejection: failure_rate: must be within 0-1, got %v", e.FailureRate)
	case e.MinRequests < 0:
		return fmt.Errorf("ejection: min_requests: must not be negative")
	case e.Window != 0 && e.Window < caddy.Duration(time.Second):
		return fmt.Errorf("ejection: window: must be at least 1s")
	case e.BaseDuration < 0 || e.MaxDuration < 0:
		return fmt.Errorf("ejection: base_duration and max_duration: must not be negative")
	case e.MaxDuration != 0 && e.BaseDuration > e.MaxDuration:
		return fmt.Errorf("ejection: base_duration %v exceeds max_duration %v", time.Duration(e.BaseDuration), time.Duration(e.MaxDuration))
	}
	return nil
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
	if err := a.Ejection.validate(); err != nil {
		return err
	}
	if err := a.Load.validate(); err != nil {
		return err
	}
	allowed, err := a.NodeAllowlist.compile()
	if err != nil {
		return err
	}
	opts := WatcherOptions{Resync: time.Duration(a.ResyncInterval), LegacyKeys: a.LegacyKeys}
	a.poolKey = fmt.Sprintf("%s|%s|%d|%t|%s", redisURL, a.Prefix, opts.Resync, opts.LegacyKeys, a.NodeAllowlist.key())
	logger := ctx.Logger()
	val, _, err := watchers.LoadOrNew(a.poolKey, func() (caddy.Destructor, error) {
		client, err := Open(redisURL, a.Prefix)
		if err != nil {
			return nil, err
		}
		logger.Info("watching node registry", zap.String("redis", redactURL(redisURL)), zap.String("prefix", client.Keys().Nodes))
		// The watcher feeds the engine load the agents publish to the
		// state of the nodes.
		tracker := health.NewTracker(logger)
		opts := opts
		opts.Health = tracker
		opts.Admit = newAdmission(allowed, logger).admit
		return &pooledWatcher{watcher: NewWatcher(client, opts, logger), client: client, health: tracker}, nil
	})
	if err != nil {
		a.poolKey = ""
		return fmt.Errorf("redis: %v", redactedError(err, redisURL))
	}
	pooled := val.(*pooledWatcher)
	a.watcher, a.health = pooled.watcher, pooled.health
	// The node state outlives configs: the newest config's settings
	// apply to it.
	a.health.SetOptions(a.Ejection.options())
	a.health.SetLoadSettings(a.Load.settings())
	a.health.SetLogger(logger)
	if err := health.RegisterMetrics(ctx.GetMetricsRegistry()); err != nil {
		return err
	}
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
