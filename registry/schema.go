package registry

import (
	"time"

	"github.com/redis/go-redis/v9"
)

// Keys names the Redis keys of one registry. Every key carries the hash tag
// {prefix}, so all of them live in one slot and the scripts and
// transactions below work on a single Redis, Sentinel and Redis Cluster.
//
//	{prefix}:nodes       HASH    node ID -> node JSON (see Node)
//	{prefix}:heartbeats  ZSET    node ID -> last heartbeat, Unix ms by the Redis clock
//	{prefix}:tombstones  ZSET    node ID -> time of its deregistration, Unix ms by the Redis clock
//	{prefix}:events      channel one JSON message per change (see Event)
//	{prefix}:load        HASH    node ID -> its engine's latest load (see LoadFigures)
//	{prefix}:load        channel one message per node per load interval, the same JSON
//
// Liveness is per node: a node is live while its last heartbeat is younger
// than its own TTL. ai-lb judges that itself from the heartbeat times, so no
// key expiry (or keyspace notification) is involved.
//
// The times of the facts about one node (heartbeats, deregistrations) are
// strictly increasing, even within one millisecond, so a watcher that sees
// them out of order (a full read that raced an event) keeps the newest. A
// tombstone lasts until the node registers again or TombstoneRetention has
// passed.
type Keys struct {
	Nodes, Heartbeats, Tombstones, Events string
	// Load names both the hash of the latest load figures and the channel
	// they are published on (Redis keeps channels and keys apart).
	Load string
}

// DefaultPrefix is the registry prefix used when none is configured.
const DefaultPrefix = "ai-lb"

// TombstoneRetention is how long a deregistration is remembered. It only
// has to outlive the facts still in flight when it happened (a full read
// takes at most a few seconds).
const TombstoneRetention = time.Minute

// KeysFor returns the keys of the registry with the given prefix.
func KeysFor(prefix string) Keys {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	tag := "{" + prefix + "}"
	return Keys{Nodes: tag + ":nodes", Heartbeats: tag + ":heartbeats", Tombstones: tag + ":tombstones",
		Events: tag + ":events", Load: tag + ":load"}
}

// Event is the message published on the events channel for every change.
// Op is "up" (registered or heartbeat; Node and HeartbeatMillis are set) or
// "down" (deregistered; ID and AtMillis are set).
type Event struct {
	Op              string `json:"op"`
	ID              string `json:"id,omitempty"`
	Node            *Node  `json:"node,omitempty"`
	HeartbeatMillis int64  `json:"heartbeat_ms,omitempty"`
	AtMillis        int64  `json:"at_ms,omitempty"`
}

// luaNow defines nowMillis(), the Redis clock in Unix ms.
const luaNow = `
local function nowMillis()
	local t = redis.call('TIME')
	return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
`

// luaFacts starts every script that writes facts about nodes.
// KEYS: nodes, heartbeats, tombstones, load.
//
// factTime(id) is the Redis clock (nowMillis) in ms, moved past the
// node's last heartbeat and tombstone, so that the facts about one node
// are strictly ordered. The Redis clock, not the writer's, so that ai-lb replicas and
// agents on machines with skewed clocks agree on a node's age.
//
// down(id, channel) removes a node and its load figures, leaves its
// tombstone and announces it.
const luaFacts = luaNow + `
local function factTime(id)
	local ms = nowMillis()
	local last = math.max(tonumber(redis.call('ZSCORE', KEYS[2], id) or 0),
		tonumber(redis.call('ZSCORE', KEYS[3], id) or 0))
	return math.max(ms, last + 1)
end

local function down(id, channel)
	local ms = factTime(id)
	local n = redis.call('HDEL', KEYS[1], id)
	redis.call('HDEL', KEYS[4], id)
	redis.call('ZREM', KEYS[2], id)
	redis.call('ZADD', KEYS[3], ms, id)
	redis.call('PUBLISH', channel, cjson.encode({op = 'down', id = id, at_ms = ms}))
	return n
end
`

// upScript stores a node and its heartbeat and announces it, atomically; a
// tombstone of the node is superseded. A drain is sticky: how the stored
// entry's drain carries over depends on the mode.
//
//	keep   a heartbeat: if the stored entry is draining, the draining variant is stored
//	fresh  a new agent: the node is stored as given, ending an earlier drain
//	drain  the draining variant is stored, only if the stored entry is still
//	       the expected JSON (else nothing is written and nil is returned)
//
// KEYS: nodes, heartbeats, tombstones, load. ARGV: id, node JSON, its draining
// variant, events channel, mode, expected JSON (drain).
var upScript = redis.NewScript(luaFacts + `
local old = redis.call('HGET', KEYS[1], ARGV[1])
local node = ARGV[2]
if ARGV[5] == 'drain' then
	if old ~= ARGV[6] then
		return false
	end
	node = ARGV[3]
elseif ARGV[5] == 'keep' and old then
	local ok, stored = pcall(cjson.decode, old)
	if ok and type(stored) == 'table' and stored.draining == true then
		node = ARGV[3]
	end
end
local ms = factTime(ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], node)
redis.call('ZADD', KEYS[2], ms, ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('PUBLISH', ARGV[4], '{"op":"up","node":' .. node .. ',"heartbeat_ms":' .. ms .. '}')
return ms
`)

// Modes of upScript.
const (
	upKeep  = "keep"
	upFresh = "fresh"
	upDrain = "drain"
)

// downScript removes a node and announces it, atomically.
// KEYS: nodes, heartbeats, tombstones, load. ARGV: id, events channel.
var downScript = redis.NewScript(luaFacts + `
return down(ARGV[1], ARGV[2])
`)

// pruneScript removes the entries of nodes long expired, unless they have
// heartbeated since they were read, and the tombstones older than the
// retention.
// KEYS: nodes, heartbeats, tombstones, load. ARGV: events channel, tombstone
// retention in ms, then pairs of node ID and the heartbeat it was read with.
var pruneScript = redis.NewScript(luaFacts + `
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. (nowMillis() - tonumber(ARGV[2])))
local n = 0
for i = 3, #ARGV, 2 do
	if tonumber(redis.call('ZSCORE', KEYS[2], ARGV[i]) or -1) == tonumber(ARGV[i + 1]) then
		down(ARGV[i], ARGV[1])
		n = n + 1
	end
end
return n
`)

// PruneAfterTTLs is how old, in TTLs of its node, a heartbeat must be before
// the watchers remove the node's entry from Redis. Until then an expired
// node's models stay known (a request for them is answered 503, not 404),
// so that a node that is only briefly gone does not look unknown.
const PruneAfterTTLs = 3

// Keys written by the original ai-lb's monitor, read when legacy keys are on.
// They carry no hash tag and are read one at a time.
const (
	legacyHealthySet = "nodes:healthy"   // SET of host:port
	legacyModelsFmt  = "node:%s:models"  // an OpenAI /v1/models body
	legacyMaxConnFmt = "node:%s:maxconn" // an integer
)
