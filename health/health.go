// Package health is ai-lb's per-process view of each upstream node: the
// requests it has in flight from this process, the outcomes of recent
// attempts, and whether it is ejected. The source and the policy read it
// to offer only nodes that can take a request; whoever runs the attempts
// of a request (the ai_lb and hedge handlers) feeds it.
//
// One Tracker serves every site of a process and outlives config reloads
// (it sits next to the registry watcher). Nodes are keyed by the address
// reverse_proxy dials.
package health

import (
	"math"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Outcome is what one attempt on a node says about the node.
type Outcome int

const (
	// Abandoned: the attempt was cancelled (it lost a hedge race, or the
	// client left); it says nothing about the node.
	Abandoned Outcome = iota
	// Succeeded: the node answered (2xx, 3xx, or a client error that any
	// node would give).
	Succeeded
	// Overloaded: the node answered 429; it is alive but full. Retried
	// elsewhere, not held against the node.
	Overloaded
	// Failed: a connection failure, a 5xx answer, or a stream that broke.
	Failed
)

// Options tune outlier ejection. The zero value of a field means its
// default (see Defaults).
type Options struct {
	// ConsecutiveFailures ejects a node after this many failed attempts in
	// a row.
	ConsecutiveFailures int
	// FailureRate ejects a node whose share of failed attempts in Window
	// reaches it, once it has MinRequests attempts there.
	FailureRate float64
	// MinRequests is the least number of attempts in Window before the
	// failure rate counts.
	MinRequests int
	// Window is the period of the failure rate.
	Window time.Duration
	// BaseEjection is the first ejection's length; it doubles with every
	// ejection in a row, up to MaxEjection.
	BaseEjection time.Duration
	// MaxEjection bounds an ejection's length.
	MaxEjection time.Duration
	// Off turns ejection off: outcomes are still counted, no node is ever
	// ejected.
	Off bool
}

// Defaults are the ejection settings used for unset Options fields:
// Envoy's consecutive-5xx threshold (5), a failure rate of one half over
// 10 s with at least 10 attempts, and ejections from 5 s doubling to 60 s.
var Defaults = Options{
	ConsecutiveFailures: 5,
	FailureRate:         0.5,
	MinRequests:         10,
	Window:              10 * time.Second,
	BaseEjection:        5 * time.Second,
	MaxEjection:         60 * time.Second,
}

// withDefaults fills unset fields from Defaults.
func (o Options) withDefaults() Options {
	if o.ConsecutiveFailures == 0 {
		o.ConsecutiveFailures = Defaults.ConsecutiveFailures
	}
	if o.FailureRate == 0 {
		o.FailureRate = Defaults.FailureRate
	}
	if o.MinRequests == 0 {
		o.MinRequests = Defaults.MinRequests
	}
	if o.Window == 0 {
		o.Window = Defaults.Window
	}
	if o.BaseEjection == 0 {
		o.BaseEjection = Defaults.BaseEjection
	}
	if o.MaxEjection == 0 {
		o.MaxEjection = Defaults.MaxEjection
	}
	return o
}

// Tracker holds the state of every node this process has sent requests
// to. It is safe for concurrent use.
type Tracker struct {
	opts   atomic.Pointer[Options]
	logger atomic.Pointer[zap.Logger]
	nodes  sync.Map     // dial → *Node
	swept  atomic.Int64 // Unix time of the last forget

	loadSettings atomic.Pointer[LoadSettings]
}

// SetLoadSettings replaces the load model's settings (unset fields take
// their defaults).
func (t *Tracker) SetLoadSettings(s LoadSettings) {
	s = s.withDefaults()
	t.loadSettings.Store(&s)
}

// NewTracker returns a Tracker with the default options.
func NewTracker(logger *zap.Logger) *Tracker {
	t := new(Tracker)
	t.SetOptions(Options{})
	t.SetLoadSettings(LoadSettings{})
	t.SetLogger(logger)
	return t
}

// SetOptions replaces the ejection options (unset fields take their
// defaults), e.g. when a reload changes them.
func (t *Tracker) SetOptions(o Options) {
	o = o.withDefaults()
	t.opts.Store(&o)
}

// SetLogger replaces the logger of ejection and recovery messages.
func (t *Tracker) SetLogger(l *zap.Logger) {
	if l == nil {
		l = zap.NewNop()
	}
	t.logger.Store(l)
}

// Node returns the state of the node at dial, creating it on first use.
func (t *Tracker) Node(dial string) *Node {
	if n, ok := t.nodes.Load(dial); ok {
		return n.(*Node)
	}
	now := time.Now()
	t.forget(now)
	fresh := &Node{dial: dial, tracker: t}
	fresh.lastUsed.Store(now.Unix())
	n, _ := t.nodes.LoadOrStore(dial, fresh)
	return n.(*Node)
}

// Lookup returns the state of the node at dial, or nil if this process
// has not sent it a request.
func (t *Tracker) Lookup(dial string) *Node {
	if n, ok := t.nodes.Load(dial); ok {
		return n.(*Node)
	}
	return nil
}

// forgetAfter is how long a node's state is kept after its last attempt:
// nodes come and go, and a departed one must not be kept for ever.
const forgetAfter = time.Hour

// forget drops the state of nodes with no attempt for forgetAfter, at
// most once every forgetAfter/10, as new nodes appear.
func (t *Tracker) forget(now time.Time) {
	last := t.swept.Load()
	if now.Unix()-last < int64(forgetAfter/10/time.Second) || !t.swept.CompareAndSwap(last, now.Unix()) {
		return
	}
	t.nodes.Range(func(k, v any) bool {
		if n := v.(*Node); n.InFlight() == 0 && now.Unix()-n.lastUsed.Load() > int64(forgetAfter/time.Second) {
			t.nodes.Delete(k)
		}
		return true
	})
}

// Node is one upstream node's state in this process.
type Node struct {
	dial     string
	tracker  *Tracker
	inFlight atomic.Int64
	lastUsed atomic.Int64 // Unix time of the last attempt

	mu           sync.Mutex
	consecutive  int       // failed attempts in a row
	buckets      []bucket  // attempts per second over the failure-rate window
	ejectedUntil time.Time // zero when not ejected
	ejections    int       // ejections in a row, for the backoff
	probing      bool      // an attempt is probing an ejected node

	load load
}

// bucket counts attempts in one second.
type bucket struct {
	second        int64
	total, failed int
}

// Dial returns the node's address.
func (n *Node) Dial() string { return n.dial }

// InFlight returns the node's attempts in flight from this process.
func (n *Node) InFlight() int { return int(n.inFlight.Load()) }

// State is what the source needs to know of a node for one request.
type State int

const (
	// Ready: the node takes requests.
	Ready State = iota
	// Probe: the node is ejected but its backoff has passed and no probe
	// is in flight: one attempt may go to it, and decides.
	Probe
	// Ejected: the node is ejected.
	Ejected
)

// State returns the node's state at now.
func (n *Node) State(now time.Time) State {
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case n.ejectedUntil.IsZero():
		return Ready
	case now.Before(n.ejectedUntil) || n.probing:
		return Ejected
	default:
		return Probe
	}
}

// Full reports whether the node has maxConcurrency attempts in flight
// from this process (0: no limit).
func (n *Node) Full(maxConcurrency int) bool {
	return maxConcurrency > 0 && n.InFlight() >= maxConcurrency
}

// Begin starts an attempt on the node, whose prompt is about promptTokens
// long. An attempt on an ejected node whose backoff has passed is its
// probe. The attempt must be ended with End.
func (n *Node) Begin(now time.Time, promptTokens float64) *Attempt {
	n.inFlight.Add(1)
	n.lastUsed.Store(now.Unix())
	n.addPrefill(promptTokens)
	a := &Attempt{node: n, start: now}
	a.prefill.Store(math.Float64bits(promptTokens))
	n.mu.Lock()
	if !n.ejectedUntil.IsZero() && !now.Before(n.ejectedUntil) && !n.probing {
		n.probing, a.probe = true, true
	}
	n.mu.Unlock()
	return a
}

// Attempt is one attempt in flight on a node.
type Attempt struct {
	node    *Node
	start   time.Time
	probe   bool
	ended   atomic.Bool
	prefill atomic.Uint64 // float64 bits of its prompt tokens until its first token
}

// FirstToken records the attempt's first token at now: its prompt is no
// longer prefill work in flight, and, for a streamed request (whose first
// body byte is a token, not the whole answer), the time to it is a
// sample of the node's time to first token.
func (a *Attempt) FirstToken(stream bool, now time.Time) {
	if a == nil {
		return
	}
	a.node.addPrefill(-math.Float64frombits(a.prefill.Swap(0)))
	if stream {
		a.node.ObserveTTFT(now.Sub(a.start), false, now)
	}
}

// Lost records that the attempt lost a race at now, before its first
// token: the node took at least this long.
func (a *Attempt) Lost(stream bool, now time.Time) {
	if a != nil && stream {
		a.node.ObserveTTFT(now.Sub(a.start), true, now)
	}
}

// Node returns the attempt's node.
func (a *Attempt) Node() *Node { return a.node }

// End ends the attempt with its outcome; later calls do nothing.
func (a *Attempt) End(o Outcome, now time.Time) {
	if a == nil || !a.ended.CompareAndSwap(false, true) {
		return
	}
	n := a.node
	n.inFlight.Add(-1)
	n.addPrefill(-math.Float64frombits(a.prefill.Swap(0)))
	n.record(a.probe, o, now)
}

// record updates the node's outcome counts and ejection.
func (n *Node) record(probe bool, o Outcome, now time.Time) {
	t := n.tracker
	opts := t.opts.Load()
	var ejected, recovered bool
	var backoff time.Duration
	n.mu.Lock()
	if probe {
		n.probing = false
	}
	switch o {
	case Succeeded:
		n.consecutive = 0
		n.count(now, opts.Window, false)
		if !n.ejectedUntil.IsZero() && (probe || !now.Before(n.ejectedUntil)) {
			n.ejectedUntil, n.ejections, recovered = time.Time{}, 0, true
			n.buckets = n.buckets[:0]
		}
	case Failed:
		n.consecutive++
		total, failed := n.count(now, opts.Window, true)
		switch {
		case opts.Off:
		case probe:
			// The probe failed: eject again, for longer.
			ejected = true
		case !n.ejectedUntil.IsZero():
			// Already ejected (an attempt that began before the ejection).
		case n.consecutive >= opts.ConsecutiveFailures:
			ejected = true
		case total >= opts.MinRequests && float64(failed) >= opts.FailureRate*float64(total):
			ejected = true
		}
		if ejected {
			backoff = opts.BaseEjection << min(n.ejections, 16)
			backoff = min(backoff, opts.MaxEjection)
			n.ejections++
			n.ejectedUntil = now.Add(backoff)
		}
	}
	n.mu.Unlock()

	logger := t.logger.Load()
	switch {
	case ejected:
		logger.Warn("node ejected", zap.String("node", n.dial), zap.Duration("for", backoff))
		ejections.Inc()
	case recovered:
		logger.Info("node recovered", zap.String("node", n.dial))
		recoveries.Inc()
	}
}

// count adds an attempt to the failure-rate window and returns the
// attempts and failures within it. n.mu is held.
func (n *Node) count(now time.Time, window time.Duration, failed bool) (total, failures int) {
	sec := now.Unix()
	oldest := sec - int64(window/time.Second) + 1
	kept := n.buckets[:0]
	for _, b := range n.buckets {
		if b.second >= oldest {
			kept = append(kept, b)
		}
	}
	n.buckets = kept
	if len(n.buckets) == 0 || n.buckets[len(n.buckets)-1].second != sec {
		n.buckets = append(n.buckets, bucket{second: sec})
	}
	last := &n.buckets[len(n.buckets)-1]
	last.total++
	if failed {
		last.failed++
	}
	for _, b := range n.buckets {
		total += b.total
		failures += b.failed
	}
	return total, failures
}
