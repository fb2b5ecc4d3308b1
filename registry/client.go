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
		return redis.NewFailoverClient(o), nil
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
// announces it to every ai-lb replica. Registering again is a heartbeat.
func (c *Client) Register(ctx context.Context, n Node) error {
	if err := n.Validate(); err != nil {
		return fmt.Errorf("invalid node: %v", err)
	}
	nodeJSON, err := json.Marshal(n)
	if err != nil {
		return err
	}
	// The script appends the heartbeat time and the closing brace.
	eventHead := `{"op":"up","node":` + string(nodeJSON) + `,"heartbeat_ms":`
	return upScript.Run(ctx, c.rdb, []string{c.keys.Nodes, c.keys.Heartbeats},
		n.ID, nodeJSON, c.keys.Events, eventHead).Err()
}

// Deregister removes a node and announces it. It reports whether the node
// was registered.
func (c *Client) Deregister(ctx context.Context, id string) (bool, error) {
	event, err := json.Marshal(Event{Op: "down", ID: id})
	if err != nil {
		return false, err
	}
	n, err := downScript.Run(ctx, c.rdb, []string{c.keys.Nodes, c.keys.Heartbeats},
		id, c.keys.Events, event).Int()
	return n > 0, err
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
}

// List reads every entry of the registry in one consistent snapshot, sorted
// by ID. Malformed entries are returned with Err set.
func (c *Client) List(ctx context.Context) ([]Entry, error) {
	var nodes *redis.MapStringStringCmd
	var beats *redis.ZSliceCmd
	var now *redis.TimeCmd
	_, err := c.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		nodes = p.HGetAll(ctx, c.keys.Nodes)
		beats = p.ZRangeWithScores(ctx, c.keys.Heartbeats, 0, -1)
		now = p.Time(ctx)
		return nil
	})
	if err != nil {
		return nil, err
	}
	heartbeat := make(map[string]int64, len(beats.Val()))
	for _, z := range beats.Val() {
		if id, ok := z.Member.(string); ok {
			heartbeat[id] = int64(z.Score)
		}
	}
	redisNow := now.Val()
	entries := make([]Entry, 0, len(nodes.Val()))
	for id, raw := range nodes.Val() {
		e := Entry{ID: id}
		e.Node, e.Err = decodeNode(raw)
		if e.Err == nil && e.Node.ID != id {
			e.Node, e.Err = nil, fmt.Errorf("id %q does not match its hash field", e.Node.ID)
		}
		if ms, ok := heartbeat[id]; ok {
			e.Heartbeat = time.UnixMilli(ms)
			e.Age = redisNow.Sub(e.Heartbeat)
			e.Live = e.Node != nil && e.Age <= e.Node.TTL()
		}
		entries = append(entries, e)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].ID < entries[j].ID })
	return entries, nil
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
