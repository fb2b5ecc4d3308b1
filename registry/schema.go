package registry

import "github.com/redis/go-redis/v9"

// Keys names the Redis keys of one registry. Every key carries the hash tag
// {prefix}, so all of them live in one slot and the scripts and
// transactions below work on a single Redis, Sentinel and Redis Cluster.
//
//	{prefix}:nodes       HASH    node ID -> node JSON (see Node)
//	{prefix}:heartbeats  ZSET    node ID -> last heartbeat, Unix ms by the Redis clock
//	{prefix}:events      channel one JSON message per change (see Event)
//
// Liveness is per node: a node is live while its last heartbeat is younger
// than its own TTL. ai-lb judges that itself from the heartbeat times, so no
// key expiry (or keyspace notification) is involved.
type Keys struct {
	Nodes, Heartbeats, Events string
}

// DefaultPrefix is the registry prefix used when none is configured.
const DefaultPrefix = "ai-lb"

// KeysFor returns the keys of the registry with the given prefix.
func KeysFor(prefix string) Keys {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	tag := "{" + prefix + "}"
	return Keys{Nodes: tag + ":nodes", Heartbeats: tag + ":heartbeats", Events: tag + ":events"}
}

// Event is the message published on the events channel for every change.
// Op is "up" (registered or heartbeat; Node and HeartbeatMillis are set) or
// "down" (deregistered; ID is set).
type Event struct {
	Op              string `json:"op"`
	ID              string `json:"id,omitempty"`
	Node            *Node  `json:"node,omitempty"`
	HeartbeatMillis int64  `json:"heartbeat_ms,omitempty"`
}

// upScript stores a node and its heartbeat and announces it, atomically.
// The heartbeat time comes from the Redis clock, so ai-lb replicas and
// agents on machines with skewed clocks agree on a node's age.
// KEYS: nodes, heartbeats. ARGV: id, node JSON, events channel, event prefix.
var upScript = redis.NewScript(`
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ms, ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[4] .. ms .. '}')
return ms
`)

// downScript removes a node and announces it, atomically.
// KEYS: nodes, heartbeats. ARGV: id, events channel, event JSON.
var downScript = redis.NewScript(`
local n = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return n
`)

// Keys written by the original ai-lb's monitor, read when legacy keys are on.
// They carry no hash tag and are read one at a time.
const (
	legacyHealthySet = "nodes:healthy"   // SET of host:port
	legacyModelsFmt  = "node:%s:models"  // an OpenAI /v1/models body
	legacyMaxConnFmt = "node:%s:maxconn" // an integer
)
