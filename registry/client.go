package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"sort"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// DefaultRedisURL is the Redis used when none is configured: $REDIS_URL, or
// else a local Redis on its standard port.
func DefaultRedisURL() string {
	if u := os.Getenv("REDIS_URL"); u != "" {
		return u
	}
	return "redis://127.0.0.1:6379"
}

// NewRedis connects to the Redis a URL names, without any I/O:
//
//	redis://[user:pass@]host:port[/db]                      one Redis
//	rediss://...                                           the same over TLS
//	redis://host:port?addr=host2:port2&addr=...            Redis Cluster
//	redis://host:port?master_name=NAME[&addr=...]          Sentinel (the addresses are sentinels)
func NewRedis(redisURL string) (redis.UniversalClient, error) {
	u, err := url.Parse(redisURL)
	if err != nil {
		return nil, fmt.Errorf("redis url: %v", err)
	}
	q := u.Query()
	// Redis before 8 answers the client-side maintenance handshake with an
	// error that go-redis would log on every new connection.
	noMaint := &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	switch {
	case q.Has("master_name"):
		o, err := redis.ParseFailoverURL(redisURL)
		if err != nil {
			return nil, fmt.Errorf("redis url: %v", err)
		}
		return newSentinelClient(o), nil
	case q.Has("addr"):
		o, err := redis.ParseClusterURL(redisURL)
		if err != nil {
			return nil, fmt.Errorf("redis url: %v", err)
		}
		o.MaintNotificationsConfig = noMaint
		return redis.NewClusterClient(o), nil
	default:
		o, err := redis.ParseURL(redisURL)
		if err != nil {
			return nil, fmt.Errorf("redis url: %v", err)
		}
		o.MaintNotificationsConfig = noMaint
		return redis.NewClient(o), nil
	}
}

// Client reads and writes one registry (one prefix) in Redis. It is safe for
// concurrent use.
type Client struct {
	rdb  redis.UniversalClient
	keys Keys
}

// NewClient returns a Client for the registry with the given prefix.
func NewClient(rdb redis.UniversalClient, prefix string) *Client {
	return &Client{rdb: rdb, keys: KeysFor(prefix)}
}

// Open connects to the Redis at redisURL ("" means DefaultRedisURL).
func Open(redisURL, prefix string) (*Client, error) {
	if redisURL == "" {
		redisURL = DefaultRedisURL()
	}
	rdb, err := NewRedis(redisURL)
	if err != nil {
		return nil, err
	}
	return NewClient(rdb, prefix), nil
}

// Close closes the connection to Redis.
func (c *Client) Close() error { return c.rdb.Close() }

// Keys returns the Redis keys of this registry.
func (c *Client) Keys() Keys { return c.keys }

// Register stores n and refreshes its heartbeat in one atomic step, and
// announces it to every ai-lb replica. Registering again is a heartbeat; it
// keeps a drain that Drain set.
func (c *Client) Register(ctx context.Context, n Node) error {
	return c.register(ctx, n, upKeep)
}

// register runs upScript for n in mode (upKeep or upFresh).
func (c *Client) register(ctx context.Context, n Node, mode string) error {
	if err := n.Validate(); err != nil {
		return fmt.Errorf("invalid node: %v", err)
	}
	nodeJSON, err := json.Marshal(n)
	if err != nil {
		return err
	}
	n.Draining = true
	drainingJSON, err := json.Marshal(n)
	if err != nil {
		return err
	}
	return upScript.Run(ctx, c.rdb, c.scriptKeys(), n.ID, nodeJSON, drainingJSON, c.keys.Events, mode).Err()
}

// Drain marks a registered node as draining: it stays live while its agent
// heartbeats, and its models stay known, but no replica offers it new
// requests, so the streams it serves finish undisturbed. The mark lasts
// until the node is deregistered or a new agent registers it; it counts as
// a heartbeat. Drain reports whether the node was registered.
func (c *Client) Drain(ctx context.Context, id string) (bool, error) {
	// The entry is rewritten only if no heartbeat changed it since it was
	// read, so that a concurrent change of models is not undone.
	for range 10 {
		raw, err := c.rdb.HGet(ctx, c.keys.Nodes, id).Result()
		if err == redis.Nil {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		n, err := decodeNode(raw)
		if err != nil {
			return false, fmt.Errorf("node %q: %v", id, err)
		}
		n.Draining = true
		drainingJSON, err := json.Marshal(n)
		if err != nil {
			return false, err
		}
		err = upScript.Run(ctx, c.rdb, c.scriptKeys(), id, drainingJSON, drainingJSON, c.keys.Events, upDrain, raw).Err()
		if err != redis.Nil {
			return err == nil, err
		}
	}
	return false, fmt.Errorf("node %q: its entry kept changing while it was being drained", id)
}

// Deregister removes a node, leaves its tombstone and announces it. It
// reports whether the node was registered.
func (c *Client) Deregister(ctx context.Context, id string) (bool, error) {
	n, err := downScript.Run(ctx, c.rdb, c.scriptKeys(), id, c.keys.Events).Int()
	return n > 0, err
}

// scriptKeys are the KEYS of the scripts that write facts about nodes.
func (c *Client) scriptKeys() []string {
	return []string{c.keys.Nodes, c.keys.Heartbeats, c.keys.Tombstones, c.keys.Load}
}

// Entry is one stored node entry as read from Redis.
type Entry struct {
	// ID is the hash field the entry is stored under.
	ID string `json:"id"`
	// Node is the decoded entry; nil when Err is set.
	Node *Node `json:"node,omitempty"`
	// Err says why the entry is unusable (malformed JSON, invalid fields).
	Err error `json:"-"`
	// Heartbeat is the time of the last heartbeat by the Redis clock; zero
	// when the entry has none.
	Heartbeat time.Time `json:"heartbeat"`
	// Age is how long ago that was, by the Redis clock.
	Age time.Duration `json:"age"`
	// Live reports whether Age is within the node's TTL.
	Live bool `json:"live"`
	// Load is the engine load the node's agent published last; nil when
	// there is none.
	Load *LoadFigures `json:"load,omitempty"`
	// LoadAge is how old Load is, by the Redis clock.
	LoadAge time.Duration `json:"load_age,omitempty"`
}

// List reads every entry of the registry in one consistent snapshot, sorted
// by ID. Malformed entries are returned with Err set.
func (c *Client) List(ctx context.Context) ([]Entry, error) {
	r, err := c.read(ctx, true)
	return r.entries, err
}

// registryRead is one consistent read of a registry.
type registryRead struct {
	entries []Entry
	// tombstones holds the deregistration time of the nodes deregistered
	// in the last TombstoneRetention, Unix ms by the Redis clock.
	tombstones map[string]int64
	// now is the Redis clock at the read.
	now time.Time
	// loads holds the load figures of the nodes, when they were read.
	loads []LoadFigures
}

// read reads the nodes, heartbeats and tombstones, and with withLoad the
// load figures, in one transaction.
func (c *Client) read(ctx context.Context, withLoad bool) (registryRead, error) {
	var nodes, loads *redis.MapStringStringCmd
	var beats, tombs *redis.ZSliceCmd
	var now *redis.TimeCmd
	_, err := c.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		nodes = p.HGetAll(ctx, c.keys.Nodes)
		beats = p.ZRangeWithScores(ctx, c.keys.Heartbeats, 0, -1)
		tombs = p.ZRangeWithScores(ctx, c.keys.Tombstones, 0, -1)
		if withLoad {
			loads = p.HGetAll(ctx, c.keys.Load)
		}
		now = p.Time(ctx)
		return nil
	})
	if err != nil {
		return registryRead{}, err
	}
	r := registryRead{tombstones: scores(tombs.Val()), now: now.Val()}
	load := make(map[string]*LoadFigures)
	if loads != nil {
		for id, raw := range loads.Val() {
			// A malformed value (no agent writes one) is skipped.
			if f, err := decodeLoad(raw); err == nil && f.ID == id {
				r.loads = append(r.loads, f)
				load[id] = &f
			}
		}
	}
	heartbeat := scores(beats.Val())
	r.entries = make([]Entry, 0, len(nodes.Val()))
	for id, raw := range nodes.Val() {
		e := Entry{ID: id}
		e.Node, e.Err = decodeNode(raw)
		if e.Err == nil && e.Node.ID != id {
			e.Node, e.Err = nil, fmt.Errorf("id %q does not match its hash field", e.Node.ID)
		}
		if ms, ok := heartbeat[id]; ok {
			e.Heartbeat = time.UnixMilli(ms)
			e.Age = r.now.Sub(e.Heartbeat)
			e.Live = e.Node != nil && e.Age <= e.Node.TTL()
		}
		if f := load[id]; f != nil {
			e.Load, e.LoadAge = f, r.now.Sub(time.UnixMilli(f.Millis))
		}
		r.entries = append(r.entries, e)
	}
	sort.Slice(r.entries, func(i, j int) bool { return r.entries[i].ID < r.entries[j].ID })
	return r, nil
}

// prunable returns the entries whose last heartbeat is more than
// PruneAfterTTLs TTLs old (the default TTL for a malformed entry), and
// whether any tombstone is older than TombstoneRetention.
func (r registryRead) prunable() (entries []Entry, staleTombstones bool) {
	for _, e := range r.entries {
		ttl := DefaultTTL
		if e.Node != nil {
			ttl = e.Node.TTL()
		}
		if !e.Heartbeat.IsZero() && e.Age > PruneAfterTTLs*ttl {
			entries = append(entries, e)
		}
	}
	oldest := r.now.Add(-TombstoneRetention).UnixMilli()
	for _, at := range r.tombstones {
		if at < oldest {
			staleTombstones = true
		}
	}
	return entries, staleTombstones
}

// prune removes the entries read as prunable, each unless it has
// heartbeated since, as deregistrations, and the tombstones older than
// TombstoneRetention. It returns how many entries it removed. It is
// idempotent: replicas may prune at the same time.
func (c *Client) prune(ctx context.Context, entries []Entry) (int, error) {
	args := []any{c.keys.Events, TombstoneRetention.Milliseconds()}
	for _, e := range entries {
		args = append(args, e.ID, e.Heartbeat.UnixMilli())
	}
	return pruneScript.Run(ctx, c.rdb, c.scriptKeys(), args...).Int()
}

// scores maps the members of a sorted set of Unix ms to their times.
func scores(zs []redis.Z) map[string]int64 {
	m := make(map[string]int64, len(zs))
	for _, z := range zs {
		if id, ok := z.Member.(string); ok {
			m[id] = int64(z.Score)
		}
	}
	return m
}

// legacyNodes reads the keys the original ai-lb's monitor writes, one key at
// a time (they are in different cluster slots). Members whose models cannot
// be read or parsed are returned as entries with Err set.
func (c *Client) legacyNodes(ctx context.Context) ([]Entry, error) {
	members, err := c.rdb.SMembers(ctx, legacyHealthySet).Result()
	if err != nil {
		return nil, err
	}
	sort.Strings(members)
	entries := make([]Entry, 0, len(members))
	for _, hostport := range members {
		e := Entry{ID: hostport, Live: true}
		e.Node, e.Err = c.legacyNode(ctx, hostport)
		entries = append(entries, e)
	}
	return entries, nil
}

func (c *Client) legacyNode(ctx context.Context, hostport string) (*Node, error) {
	raw, err := c.rdb.Get(ctx, fmt.Sprintf(legacyModelsFmt, hostport)).Result()
	if err != nil && err != redis.Nil {
		return nil, err
	}
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if raw != "" {
		if err := json.Unmarshal([]byte(raw), &list); err != nil {
			return nil, fmt.Errorf("%s: %v", fmt.Sprintf(legacyModelsFmt, hostport), err)
		}
	}
	n := &Node{ID: hostport, URL: "http://" + hostport}
	for _, m := range list.Data {
		if m.ID != "" {
			n.Models = append(n.Models, m.ID)
		}
	}
	maxConn, err := c.rdb.Get(ctx, fmt.Sprintf(legacyMaxConnFmt, hostport)).Result()
	if err != nil && err != redis.Nil {
		return nil, err
	}
	if maxConn != "" {
		if n.MaxConcurrency, err = strconv.Atoi(maxConn); err != nil {
			return nil, fmt.Errorf("%s: %v", fmt.Sprintf(legacyMaxConnFmt, hostport), err)
		}
	}
	return n, n.Validate()
}
