// Package simnode implements a simulated OpenAI-compatible LLM inference
// server. It exists so that the load balancer can be demonstrated, tested
// and benchmarked without GPUs: a Node answers chat completions, text
// completions and embeddings with deterministic content after configurable
// prefill (time to first token) and decode (inter-token) delays, and models
// the scheduling behaviour of a real server (a fixed number of concurrent
// generation slots plus a bounded FIFO queue).
//
// The generated text names the node (token i is TokenText(ID, i)), so a test
// can verify that a whole stream came from exactly one backend. Every
// response carries the header X-Sim-Node with the node's ID.
//
// A Node is an http.Handler; it can be mounted in an httptest.Server, an
// http.Server, or behind the load balancer itself.
package simnode

import (
	"encoding/json"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// NoDelay can be used as Config.TTFT or Config.InterTokenLatency to mean
// "no delay at all". It is needed because the zero value of those fields
// means "use the default" when passed to New. Any negative duration has the
// same effect.
const NoDelay time.Duration = -1

// Default values applied by New (and, where noted on Config, by Update).
const (
	DefaultID                = "sim"
	DefaultModel             = "sim-model"
	DefaultTTFT              = 50 * time.Millisecond
	DefaultSlowFactor        = 10.0
	DefaultInterTokenLatency = 10 * time.Millisecond
	DefaultTokens            = 16
	DefaultFailStatus        = 500
)

// maxRecords bounds the request log so that a long benchmark does not grow
// memory without limit.
const maxRecords = 10000

// Config describes how a Node behaves. The zero value is usable: New fills
// in defaults for zero fields.
//
// In New, a zero TTFT or InterTokenLatency means the default; use NoDelay
// (or any negative value) for no delay. In Update the config passed to the
// callback already has defaults applied, so a zero duration set there means
// no delay. For all other fields the same normalization applies in both:
// an empty ID or Models, Tokens <= 0, SlowFactor <= 0 and a FailStatus that
// is not a valid HTTP status revert to the defaults; fractions are clamped
// to [0,1] and negative Slots or QueueSize count as 0.
type Config struct {
	// ID is the node identity; it appears in the X-Sim-Node response
	// header, in response IDs and in the generated text. Default "sim".
	ID string `json:"id,omitempty"`

	// Models lists the served model IDs. Requests for other models get a
	// 404 model_not_found error. Requests without a model use the first
	// one, as vLLM does. Default ["sim-model"].
	Models []string `json:"models,omitempty"`

	// TTFT is the time to first token (prefill time), counted from the
	// moment the request gets a slot. Default 50ms.
	TTFT time.Duration `json:"ttft,omitempty"`

	// TTFTJitter varies TTFT uniformly by ± this fraction: 0.25 gives a
	// TTFT in [0.75*TTFT, 1.25*TTFT].
	TTFTJitter float64 `json:"ttft_jitter,omitempty"`

	// SlowFraction is the fraction of requests whose TTFT is multiplied by
	// SlowFactor, to simulate tail latency (for hedging benchmarks).
	SlowFraction float64 `json:"slow_fraction,omitempty"`

	// SlowFactor multiplies the TTFT of slow requests. Default 10.
	SlowFactor float64 `json:"slow_factor,omitempty"`

	// InterTokenLatency is the delay between consecutive tokens (decode
	// time per token). Unlike the other fields, a change made with Update
	// also affects streams already in progress, from their next token on.
	// Default 10ms.
	InterTokenLatency time.Duration `json:"inter_token_latency,omitempty"`

	// Tokens is the number of tokens per answer, capped by the request's
	// max_tokens or max_completion_tokens. Default 16.
	Tokens int `json:"tokens,omitempty"`

	// Slots is the number of concurrent generations; 0 means unlimited.
	Slots int `json:"slots,omitempty"`

	// QueueSize is how many requests may wait (FIFO) for a slot when all
	// Slots are busy. A request arriving at a full queue is rejected with
	// 429. With Slots > 0, 0 means no queue: requests beyond Slots are
	// rejected at once. Ignored when Slots is 0.
	QueueSize int `json:"queue_size,omitempty"`

	// FailRate is the fraction of requests answered with FailStatus and an
	// OpenAI-style error instead of a completion. A failing request goes
	// through the queue and takes a slot like any other, then fails after
	// half of its TTFT, before any token is produced, as a server crashing
	// during prefill would.
	FailRate float64 `json:"fail_rate,omitempty"`

	// FailStatus is the HTTP status of injected failures. Default 500.
	FailStatus int `json:"fail_status,omitempty"`

	// Seed seeds the random number generator behind jitter, slow requests
	// and failures; 0 means time-based. Changing it with Update reseeds.
	Seed int64 `json:"seed,omitempty"`
}

// normalize applies defaults and clamps. fresh is true in New, where zero
// durations mean "unset"; in Update they were set explicitly and mean no
// delay.
func (c *Config) normalize(fresh bool) {
	if c.ID == "" {
		c.ID = DefaultID
	}
	c.Models = slices.DeleteFunc(slices.Clone(c.Models), func(m string) bool { return m == "" })
	if len(c.Models) == 0 {
		c.Models = []string{DefaultModel}
	}
	if c.TTFT == 0 {
		if fresh {
			c.TTFT = DefaultTTFT
		} else {
			c.TTFT = NoDelay
		}
	}
	if c.InterTokenLatency == 0 {
		if fresh {
			c.InterTokenLatency = DefaultInterTokenLatency
		} else {
			c.InterTokenLatency = NoDelay
		}
	}
	c.TTFTJitter = clamp01(c.TTFTJitter)
	c.SlowFraction = clamp01(c.SlowFraction)
	c.FailRate = clamp01(c.FailRate)
	if !(c.SlowFactor > 0) { // also catches NaN
		c.SlowFactor = DefaultSlowFactor
	}
	if c.Tokens <= 0 {
		c.Tokens = DefaultTokens
	}
	c.Slots = max(c.Slots, 0)
	c.QueueSize = max(c.QueueSize, 0)
	if c.FailStatus < 100 || c.FailStatus > 599 {
		c.FailStatus = DefaultFailStatus
	}
}

func clamp01(f float64) float64 {
	if !(f > 0) { // also catches NaN
		return 0
	}
	return min(f, 1)
}

// snapshot is an immutable, normalized config plus values derived from it
// once, so that the per-request and per-token paths do not recompute them.
type snapshot struct {
	cfg Config
	// idJSON is cfg.ID escaped for use inside a JSON string literal.
	idJSON string
	// nodeHeader is the X-Sim-Node header value, shared by all responses
	// to avoid allocating a slice per request.
	nodeHeader []string
}

func newSnapshot(c Config) *snapshot {
	return &snapshot{cfg: c, idJSON: jsonEscape(c.ID), nodeHeader: []string{c.ID}}
}

// hasModel reports whether m is served. Model lists are short, so a linear
// scan beats a map and allocates nothing.
func (s *snapshot) hasModel(m string) bool {
	return slices.Contains(s.cfg.Models, m)
}

// jsonEscape returns s escaped for use between the quotes of a JSON string.
func jsonEscape(s string) string {
	b, _ := json.Marshal(s) // cannot fail for a string
	return string(b[1 : len(b)-1])
}

// Node is a simulated inference server. It is an http.Handler and is safe
// for concurrent use. Create it with New.
type Node struct {
	cfg      atomic.Pointer[snapshot]
	updateMu sync.Mutex // serializes Update so concurrent updates are not lost

	// rng is shared by all requests; each request draws all its random
	// numbers under a single lock, so contention stays low.
	rngMu sync.Mutex
	rng   *rand.Rand

	sched scheduler

	created int64 // unix time reported by /v1/models
	seq     atomic.Int64

	received, completed, aborted, failed, rejected atomic.Int64

	recMu   sync.Mutex
	records []*Record // ring buffer once it reaches maxRecords
	recNext int       // index of the oldest record when the ring is full
}

// New returns a Node with defaults applied to cfg (see Config).
func New(cfg Config) *Node {
	cfg.normalize(true)
	n := &Node{created: time.Now().Unix()}
	n.rng = newRand(cfg.Seed)
	n.sched.models = make(map[string]*gauge)
	n.cfg.Store(newSnapshot(cfg))
	return n
}

func newRand(seed int64) *rand.Rand {
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	return rand.New(rand.NewPCG(uint64(seed), 0x5eed))
}

// Config returns a copy of the current, normalized configuration.
func (n *Node) Config() Config {
	c := n.cfg.Load().cfg
	c.Models = slices.Clone(c.Models)
	return c
}

// Update changes the node's behaviour at runtime. f receives a copy of the
// current configuration and modifies it in place; the result is normalized
// (see Config) and takes effect for requests that have not started their
// prefill yet, and for InterTokenLatency also for streams in progress.
// Raising Slots immediately admits queued requests. Update is safe to call
// concurrently with requests and with other Updates.
func (n *Node) Update(f func(*Config)) {
	n.updateMu.Lock()
	defer n.updateMu.Unlock()
	old := n.cfg.Load().cfg
	c := old
	c.Models = slices.Clone(c.Models)
	f(&c)
	c.normalize(false)
	if c.Seed != old.Seed {
		r := newRand(c.Seed)
		n.rngMu.Lock()
		n.rng = r
		n.rngMu.Unlock()
	}
	n.cfg.Store(newSnapshot(c))
	// Slots may have grown (or become unlimited): admit waiters now rather
	// than on the next release.
	n.sched.mu.Lock()
	n.dispatchLocked()
	n.sched.mu.Unlock()
}

// Stats counts inference requests (chat completions, completions and
// embeddings); other endpoints are not counted.
type Stats struct {
	// Received counts requests that reached an inference endpoint with the
	// right method.
	Received int64 `json:"received"`
	// Completed counts requests answered successfully in full.
	Completed int64 `json:"completed"`
	// Aborted counts requests whose client went away before the answer was
	// complete (while queued, during prefill or mid-stream).
	Aborted int64 `json:"aborted"`
	// Failed counts requests answered with an error other than 429:
	// injected failures, malformed requests and unknown models.
	Failed int64 `json:"failed"`
	// Rejected counts requests answered 429 because the queue was full.
	Rejected int64 `json:"rejected"`
	// InFlight is the number of requests holding a slot right now
	// (prefilling or generating). It is a gauge and is not cleared by Reset.
	InFlight int64 `json:"in_flight"`
	// Waiting is the number of requests queued for a slot right now. It is
	// a gauge and is not cleared by Reset.
	Waiting int64 `json:"waiting"`
}

// Stats returns a snapshot of the counters and gauges. Each field is read
// atomically but not all at once, which is fine for tests that poll for a
// condition and for dashboards.
func (n *Node) Stats() Stats {
	n.sched.mu.Lock()
	inFlight, waiting := int64(n.sched.running), int64(n.sched.queue.Len())
	n.sched.mu.Unlock()
	return Stats{
		Received:  n.received.Load(),
		Completed: n.completed.Load(),
		Aborted:   n.aborted.Load(),
		Failed:    n.failed.Load(),
		Rejected:  n.rejected.Load(),
		InFlight:  inFlight,
		Waiting:   waiting,
	}
}

// Record describes one inference request. Records are created when the
// request body has been read and updated as it progresses, so Requests also
// shows requests still in progress (with a zero End).
type Record struct {
	// Seq numbers requests in arrival order, starting at 1. It keeps
	// increasing across Reset.
	Seq int64 `json:"seq"`
	// Path is the request path, e.g. /v1/chat/completions.
	Path string `json:"path"`
	// Model is the requested model (or the default one if none was given).
	Model string `json:"model,omitempty"`
	// Stream reports whether a streamed answer was requested.
	Stream bool `json:"stream,omitempty"`
	// Start is when the handler was entered.
	Start time.Time `json:"start"`
	// FirstToken is when the first token was ready (prefill done). For
	// streams this is when the first bytes were written; for non-streamed
	// answers it is internal, the body is written at End.
	FirstToken time.Time `json:"first_token,omitzero"`
	// End is when the request finished, failed or was aborted.
	End time.Time `json:"end,omitzero"`
	// Aborted reports that the client went away before the answer was
	// complete.
	Aborted bool `json:"aborted,omitempty"`
	// Status is the HTTP status sent; 499 (nginx's "client closed
	// request") for requests aborted before anything was sent. 0 while the
	// request is in progress.
	Status int `json:"status,omitempty"`
	// RequestID is the X-Request-Id request header, so tests can correlate
	// records with what a proxy sent.
	RequestID string `json:"request_id,omitempty"`
}

// Requests returns copies of the most recent request records (at most
// 10000), oldest first.
func (n *Node) Requests() []Record {
	n.recMu.Lock()
	defer n.recMu.Unlock()
	out := make([]Record, 0, len(n.records))
	for _, r := range n.records[n.recNext:] {
		out = append(out, *r)
	}
	for _, r := range n.records[:n.recNext] {
		out = append(out, *r)
	}
	return out
}

// Reset clears the counters and the request records. The InFlight and
// Waiting gauges reflect live requests and are unaffected; requests in
// progress during a Reset still update the counters when they finish.
func (n *Node) Reset() {
	n.recMu.Lock()
	n.records = nil
	n.recNext = 0
	n.recMu.Unlock()
	n.received.Store(0)
	n.completed.Store(0)
	n.aborted.Store(0)
	n.failed.Store(0)
	n.rejected.Store(0)
}

// addRecord appends a record to the ring and assigns its Seq; doing both
// under one lock keeps the ring ordered by Seq.
func (n *Node) addRecord(r *Record) {
	n.recMu.Lock()
	r.Seq = n.seq.Add(1)
	if len(n.records) < maxRecords {
		n.records = append(n.records, r)
	} else {
		n.records[n.recNext] = r
		n.recNext = (n.recNext + 1) % maxRecords
	}
	n.recMu.Unlock()
}

// markFirstToken records when the first token became ready.
func (n *Node) markFirstToken(r *Record, t time.Time) {
	n.recMu.Lock()
	r.FirstToken = t
	n.recMu.Unlock()
}

// endRecord finalizes a record. Fields are written under recMu because
// Requests may be copying the record concurrently.
func (n *Node) endRecord(r *Record, status int, aborted bool) {
	now := time.Now()
	n.recMu.Lock()
	r.End = now
	r.Status = status
	r.Aborted = aborted
	n.recMu.Unlock()
}
