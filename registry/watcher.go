package registry

import (
	"context"
	"encoding/json"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/ai-lb/ai-lb/health"
)

// WatcherOptions tune a Watcher. Zero values take the defaults.
type WatcherOptions struct {
	// Resync is the period of the full read that repairs missed events.
	// Default: 5s (1s with LegacyKeys, which are only polled).
	Resync time.Duration
	// LegacyKeys also reads the keys the original ai-lb's monitor writes.
	LegacyKeys bool
	// ExpiryCheck is how often liveness is judged. Default: 100ms.
	ExpiryCheck time.Duration
	// Health, when set, gets the engine load that the nodes' agents
	// publish: each node's figures go to Health.Node(dial).SetEngineLoad,
	// as they arrive and from the load hash at every resync. Without it
	// the watcher ignores load figures.
	Health *health.Tracker
	// Admit, when set, is asked whether a registered node may be routed
	// to at each of its heartbeats; a node it refuses is left out of the
	// snapshot as if it were not registered (not routed, not listed, its
	// models unknown).
	Admit func(*Node) bool
}

// Watcher keeps an in-memory Snapshot of the live nodes of one registry,
// following the events channel and resyncing periodically. It owns its
// goroutines; Close stops them.
type Watcher struct {
	client *Client
	logger *zap.Logger
	opts   WatcherOptions

	snap      atomic.Pointer[Snapshot]
	firstRead chan struct{} // closed after the first full read, done or failed
	resync    chan struct{}
	cancel    context.CancelFunc
	wg        sync.WaitGroup

	mu        sync.Mutex
	nodes     map[string]*tracked
	gone      map[string]int64  // id -> time of its deregistration, Redis ms
	badLogged map[string]string // id -> error already logged for it
	loadMs    map[string]int64  // id -> Redis time of the load figures applied last, Unix ms
	synced    bool
	up        bool      // the last Redis operation succeeded
	downSince time.Time // start of the current outage, zero when up
}

// tracked is the watcher's record of one registered node.
type tracked struct {
	member *Member
	// beat is the Redis time of the last heartbeat, Unix ms; 0 for a node
	// whose facts are not ordered (the legacy keys have no times).
	beat int64
	seen time.Time // local time of the last heartbeat
	// grace is the end of the last Redis outage during which the node was
	// live: its TTL counts from there, so its agent has one TTL to
	// heartbeat again. Zero when it has none.
	grace time.Time
	// refused: WatcherOptions.Admit refused the node.
	refused bool
}

// NewWatcher starts watching the registry client serves. The watcher never
// fails to start: while Redis is unreachable it serves an empty (or the last
// known) snapshot and keeps reconnecting.
func NewWatcher(client *Client, opts WatcherOptions, logger *zap.Logger) *Watcher {
	if opts.Resync <= 0 {
		opts.Resync = 5 * time.Second
		if opts.LegacyKeys {
			opts.Resync = time.Second
		}
	}
	if opts.ExpiryCheck <= 0 {
		opts.ExpiryCheck = 100 * time.Millisecond
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &Watcher{
		client:    client,
		logger:    logger,
		opts:      opts,
		firstRead: make(chan struct{}),
		resync:    make(chan struct{}, 1),
		cancel:    cancel,
		nodes:     make(map[string]*tracked),
		gone:      make(map[string]int64),
		badLogged: make(map[string]string),
		loadMs:    make(map[string]int64),
	}
	w.snap.Store(NewSnapshot(nil, nil, false))
	w.wg.Add(2)
	go w.subscribe(ctx)
	go w.loop(ctx)
	return w
}

// Snapshot returns the current view of the live nodes.
func (w *Watcher) Snapshot() *Snapshot { return w.snap.Load() }

// FirstRead is closed once the watcher's first full read of the registry
// has succeeded or failed.
func (w *Watcher) FirstRead() <-chan struct{} { return w.firstRead }

// Close stops the watcher's goroutines and waits for them.
func (w *Watcher) Close() {
	w.cancel()
	w.wg.Wait()
}

// Resync asks for a full read of the registry soon.
func (w *Watcher) Resync() {
	select {
	case w.resync <- struct{}{}:
	default:
	}
}

// subscribe follows the events channel, reconnecting with backoff.
func (w *Watcher) subscribe(ctx context.Context) {
	defer w.wg.Done()
	channels := []string{w.client.keys.Events}
	if w.opts.Health != nil {
		channels = append(channels, w.client.keys.Load)
	}
	ps := w.client.rdb.Subscribe(ctx, channels...)
	defer ps.Close()
	// Receive blocks in a socket read that ctx does not interrupt: closing
	// the connection does, so that Close returns while Redis is quiet.
	defer context.AfterFunc(ctx, func() { _ = ps.Close() })()
	backoff := newBackoff()
	for {
		msg, err := ps.Receive(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			w.checkCommands(ctx, err)
			if !backoff.wait(ctx) {
				return
			}
			continue
		}
		backoff.reset()
		switch m := msg.(type) {
		case *redis.Subscription:
			// (Re)subscribed: events may have been missed meanwhile.
			if m.Channel == w.client.keys.Events {
				w.Resync()
			}
		case *redis.Message:
			w.receive(m.Channel, m.Payload)
		}
	}
}

// loop runs resyncs and liveness checks.
func (w *Watcher) loop(ctx context.Context) {
	defer w.wg.Done()
	resync := time.NewTicker(w.opts.Resync)
	defer resync.Stop()
	expiry := time.NewTicker(w.opts.ExpiryCheck)
	defer expiry.Stop()
	w.readAll(ctx)
	close(w.firstRead)
	for {
		select {
		case <-ctx.Done():
			return
		case <-resync.C:
			w.readAll(ctx)
		case <-w.resync:
			w.readAll(ctx)
		case <-expiry.C:
			w.mu.Lock()
			if w.up && w.livenessChanged(time.Now()) {
				w.rebuild(time.Now())
			}
			w.mu.Unlock()
		}
	}
}

// readAll brings the watcher's state up to date with a full read of the
// registry.
func (w *Watcher) readAll(ctx context.Context) {
	readCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	read, err := w.client.read(readCtx, w.opts.Health != nil)
	if err == nil && w.opts.LegacyKeys {
		var legacy []Entry
		legacy, err = w.client.legacyNodes(readCtx)
		read.entries = append(read.entries, legacy...)
	}
	if ctx.Err() != nil {
		return // shutting down
	}
	if err != nil {
		w.markDown(err)
		return
	}
	now := time.Now()
	w.mu.Lock()
	w.setUp(now)
	w.applyRead(read, now)
	w.applyLoads(read, now)
	prunable, staleTombstones := read.prunable()
	// A node in its outage grace is old in Redis only because its agent
	// could not heartbeat: it has until the grace ends to do so.
	prunable = slices.DeleteFunc(prunable, func(e Entry) bool {
		t, ok := w.nodes[e.ID]
		return ok && inGrace(t, now)
	})
	w.mu.Unlock()
	if len(prunable) > 0 || staleTombstones {
		w.prune(readCtx, prunable)
	}
}

// prune removes long-expired entries from Redis, so that their models stop
// being known.
func (w *Watcher) prune(ctx context.Context, entries []Entry) {
	n, err := w.client.prune(ctx, entries)
	switch {
	case err != nil && ctx.Err() == nil:
		w.logger.Warn("pruning long-expired registry entries failed", zap.Error(err))
	case n > 0:
		w.logger.Info("pruned long-expired registry entries", zap.Int("pruned", n))
	}
}

// applyRead merges a full read into the watcher's state. The read may be
// older than events already applied: of two facts about a node, the newer
// wins. w.mu must be held.
func (w *Watcher) applyRead(read registryRead, now time.Time) {
	for id, at := range read.tombstones {
		w.deregistered(id, at)
	}
	present := make(map[string]bool, len(read.entries))
	for _, e := range read.entries {
		present[e.ID] = true
		if e.Err != nil {
			w.logBad(e.ID, e.Err)
			continue
		}
		delete(w.badLogged, e.ID)
		if e.Heartbeat.IsZero() && !e.Live {
			continue // stored but never heartbeated: not routable
		}
		m, err := newMember(e.Node)
		if err != nil {
			w.logBad(e.ID, err)
			continue
		}
		var beat int64
		if !e.Heartbeat.IsZero() {
			beat = e.Heartbeat.UnixMilli()
		}
		w.heartbeat(m, beat, now.Add(-e.Age))
	}
	readMillis := read.now.UnixMilli()
	for id, t := range w.nodes {
		// A node absent from the read was deregistered, pruned or lost by
		// Redis, unless an event newer than the read registered it. After
		// an outage, a Redis that came back empty must not wipe the
		// routing table before the nodes have had one TTL to re-register.
		if !present[id] && t.beat < readMillis && !inGrace(t, now) {
			delete(w.nodes, id)
		}
	}
	for id, at := range w.gone {
		// Redis dropped the tombstone (a later heartbeat superseded it, or
		// it was older than TombstoneRetention): so can the watcher, unless
		// it is newer than the read.
		if _, ok := read.tombstones[id]; !ok && at < readMillis {
			delete(w.gone, id)
		}
	}
	for id := range w.badLogged {
		if !present[id] {
			delete(w.badLogged, id)
		}
	}
	w.synced = true
	w.rebuild(now)
}

// receive handles one message from the events or the load channel.
func (w *Watcher) receive(channel, payload string) {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.setUp(now)
	if channel == w.client.keys.Load {
		w.applyLoad(payload, now)
	} else {
		w.apply(payload, now)
	}
}

// apply handles one message from the events channel, received at now.
// w.mu must be held.
func (w *Watcher) apply(payload string, now time.Time) {
	var ev Event
	if err := json.Unmarshal([]byte(payload), &ev); err != nil {
		w.logger.Warn("skipping malformed registry event", zap.String("payload", truncate(payload)), zap.Error(err))
		return
	}
	switch ev.Op {
	case "up":
		if ev.Node == nil {
			w.logger.Warn("skipping registry event without node", zap.String("payload", truncate(payload)))
			return
		}
		if err := ev.Node.Validate(); err != nil {
			w.logBad(ev.Node.ID, err)
			return
		}
		m, err := newMember(ev.Node)
		if err != nil {
			w.logBad(ev.Node.ID, err)
			return
		}
		before := w.nodes[m.ID]
		if !w.heartbeat(m, ev.HeartbeatMillis, now) {
			return
		}
		// A heartbeat of an unchanged node rebuilds only if it revives it.
		t := w.nodes[m.ID]
		if before == nil || before.member != t.member || routable(t, now) != w.Snapshot().has(t.member) {
			w.rebuild(now)
		}
	case "down":
		if w.deregistered(ev.ID, ev.AtMillis) {
			w.rebuild(now)
		}
	default:
		w.logger.Warn("skipping registry event with unknown op", zap.String("op", ev.Op))
	}
}

// applyLoad handles one message from the load channel, received at now:
// the figures count from their receipt, so that no two hosts' clocks are
// compared. w.mu must be held.
func (w *Watcher) applyLoad(payload string, now time.Time) {
	f, err := decodeLoad(payload)
	if err != nil {
		w.logger.Debug("skipping malformed load figures", zap.String("payload", truncate(payload)), zap.Error(err))
		return
	}
	w.load(f, now)
}

// applyLoads applies the load figures of a full read: each counts from
// now less its age by the Redis clock. w.mu must be held.
func (w *Watcher) applyLoads(read registryRead, now time.Time) {
	for _, f := range read.loads {
		w.load(f, now.Add(-read.now.Sub(time.UnixMilli(f.Millis))))
	}
	for id := range w.loadMs {
		if w.nodes[id] == nil {
			delete(w.loadMs, id)
		}
	}
}

// load gives a node's figures, read at at by the local clock, to node
// health, unless the node is unknown or newer figures were applied. The
// snapshot is left alone: figures change every second on every node.
// w.mu must be held.
func (w *Watcher) load(f LoadFigures, at time.Time) {
	t := w.nodes[f.ID]
	if w.opts.Health == nil || t == nil || f.Millis <= w.loadMs[f.ID] {
		return
	}
	w.loadMs[f.ID] = f.Millis
	w.opts.Health.Node(t.member.Dial).SetEngineLoad(f.EngineLoad(at))
}

// heartbeat applies a heartbeat of m at Redis time beat (Unix ms, 0 if unknown),
// seen locally at seen, unless a newer fact about the node is known. It
// reports whether it was applied. w.mu must be held.
func (w *Watcher) heartbeat(m *Member, beat int64, seen time.Time) bool {
	old, ok := w.nodes[m.ID]
	if beat != 0 && (beat <= w.gone[m.ID] || ok && beat <= old.beat) {
		return false // deregistered since, or this heartbeat is already known
	}
	delete(w.gone, m.ID)
	next := &tracked{member: m, beat: beat, seen: seen}
	if ok {
		if reflect.DeepEqual(old.member.Node, m.Node) {
			next.member = old.member
		}
		next.grace = old.grace
	}
	next.refused = w.opts.Admit != nil && !w.opts.Admit(next.member.Node)
	w.nodes[m.ID] = next
	return true
}

// deregistered applies the deregistration of id at Redis time at (Unix ms, 0 if
// unknown), unless the node has heartbeated since, and remembers it. It
// reports whether a tracked node was removed. w.mu must be held.
func (w *Watcher) deregistered(id string, at int64) bool {
	t, ok := w.nodes[id]
	if ok && at != 0 && t.beat > at {
		return false // registered again since
	}
	if at > w.gone[id] {
		w.gone[id] = at
	}
	delete(w.nodes, id)
	delete(w.loadMs, id)
	return ok
}

// live reports whether a tracked node is live at now. A node that was live
// when a Redis outage began gets one TTL from the outage's end.
func live(t *tracked, now time.Time) bool {
	seen := t.seen
	if t.grace.After(seen) {
		seen = t.grace
	}
	return now.Sub(seen) <= t.member.TTL()
}

// routable reports whether a tracked node is offered requests at now: it is
// live, and neither its agent nor an operator took it out.
func routable(t *tracked, now time.Time) bool {
	return live(t, now) && t.member.Routable() && !t.refused
}

// inGrace reports whether a tracked node is within the TTL it was granted
// at the end of an outage.
func inGrace(t *tracked, now time.Time) bool {
	return !t.grace.IsZero() && now.Sub(t.grace) <= t.member.TTL()
}

// livenessChanged reports whether the snapshot's live set is stale.
func (w *Watcher) livenessChanged(now time.Time) bool {
	s := w.Snapshot()
	for _, t := range w.nodes {
		if routable(t, now) != s.has(t.member) {
			return true
		}
	}
	return false
}

// rebuild publishes a new snapshot. w.mu must be held.
func (w *Watcher) rebuild(now time.Time) {
	var members []*Member
	dormant := make(map[string]bool)
	for _, t := range w.nodes {
		if routable(t, now) {
			members = append(members, t.member)
			continue
		}
		if t.refused {
			continue // as if not registered: its models stay unknown
		}
		for _, model := range t.member.Models {
			dormant[model] = true
		}
	}
	before := w.Snapshot()
	after := NewSnapshot(members, dormant, w.synced)
	w.snap.Store(after)
	if len(before.Members) != len(after.Members) {
		w.logger.Info("registry changed", zap.Int("live_nodes", len(after.Members)), zap.Int("models", len(after.Models())))
	}
}

// setUp records a successful Redis operation. w.mu must be held.
func (w *Watcher) setUp(now time.Time) {
	if w.up {
		return
	}
	w.up = true
	if !w.downSince.IsZero() {
		// Time without Redis does not count against the TTLs of the nodes
		// that were live when the outage began: their agents could not
		// heartbeat either. A node that had expired by then stays expired.
		for _, t := range w.nodes {
			if live(t, w.downSince) {
				t.grace = now
			}
		}
		w.logger.Info("redis reachable again", zap.Duration("outage", now.Sub(w.downSince)))
		w.downSince = time.Time{}
	}
}

// checkCommands handles a broken subscription. That alone is no outage (a
// killed pub/sub connection, a proxy's idle timeout): the resync on
// resubscription repairs the events missed meanwhile. Only when Redis does
// not answer commands either is the outage recorded, which stops the TTLs.
func (w *Watcher) checkCommands(ctx context.Context, cause error) {
	pingCtx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	if err := w.client.rdb.Ping(pingCtx).Err(); err != nil && ctx.Err() == nil {
		w.markDown(cause)
	}
}

// pingTimeout bounds the PING that tells a broken subscription from an
// unreachable Redis: a Redis that does not answer within it is down.
const pingTimeout = time.Second

// markDown records a failed Redis operation, logging once per outage.
func (w *Watcher) markDown(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.up && !w.downSince.IsZero() {
		return
	}
	w.up = false
	w.downSince = time.Now()
	w.logger.Error("redis unreachable; serving the last known nodes until it is back",
		zap.Int("live_nodes", len(w.Snapshot().Members)), zap.Error(err))
}

// logBad logs a malformed entry once until it changes. w.mu must be held.
func (w *Watcher) logBad(id string, err error) {
	if w.badLogged[id] == err.Error() {
		return
	}
	w.badLogged[id] = err.Error()
	w.logger.Warn("skipping malformed registry entry", zap.String("id", id), zap.Error(err))
}

func newMember(n *Node) (*Member, error) {
	dial, err := n.Dial()
	if err != nil {
		return nil, err
	}
	return &Member{Node: n, Dial: dial}, nil
}

func truncate(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

// backoff is a capped exponential delay between reconnection attempts.
type backoff struct{ next time.Duration }

func newBackoff() *backoff { return &backoff{next: 50 * time.Millisecond} }

func (b *backoff) reset() { b.next = 50 * time.Millisecond }

// wait sleeps for the current delay; false if ctx ended first.
func (b *backoff) wait(ctx context.Context) bool {
	t := time.NewTimer(b.next)
	defer t.Stop()
	b.next = min(2*b.next, 2*time.Second)
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
