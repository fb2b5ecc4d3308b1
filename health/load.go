package health

import (
	"math"
	"sync"
	"time"
)

// The load model: what makes an LLM request slow on a node, as this
// process sees it. The policy compares two nodes by Cost.

// EngineLoad is what a node's inference engine reports of its own load
// (vLLM's and SGLang's /metrics), as its registration agent publishes it.
type EngineLoad struct {
	// Running is the requests in the engine's batch.
	Running float64 `json:"running"`
	// Waiting is the requests queued for the batch.
	Waiting float64 `json:"waiting"`
	// KVCacheUsage is the KV-cache occupancy, 0-1.
	KVCacheUsage float64 `json:"kv,omitempty"`
	// MaxRunning is how many requests the engine runs at once, when it
	// says (vLLM's max_num_seqs); 0 when unknown.
	MaxRunning float64 `json:"max_running,omitempty"`
	// At is when the figures were read, as a local time of this process
	// (the registry dates them without comparing clocks across hosts).
	At time.Time `json:"at"`
}

// LoadSettings weigh the parts of Cost. The zero value of a field means
// its default (LoadDefaults).
type LoadSettings struct {
	// HalfLife is how fast the time-to-first-token average forgets: a
	// sample's weight halves every HalfLife.
	HalfLife time.Duration
	// Staleness is the age past which engine figures count as unknown,
	// never as zero load.
	Staleness time.Duration
	// PrefillTokens is the prompt tokens in flight that count as one more
	// request: a long prompt's prefill is work a short one does not bring.
	PrefillTokens float64
}

// LoadDefaults are the load settings used for unset fields: a 10 s
// half-life (a node that slows down is seen within a few seconds of
// traffic; Linkerd's peak-EWMA uses the same order), figures older than
// 3 s unknown (three publishing intervals of the agent), and 1,000 prompt
// tokens in flight worth one request (about the prefill of an agent turn
// on a mid-size model, the order of a short request's whole time).
var LoadDefaults = LoadSettings{
	HalfLife:      10 * time.Second,
	Staleness:     3 * time.Second,
	PrefillTokens: 1000,
}

func (s LoadSettings) withDefaults() LoadSettings {
	if s.HalfLife <= 0 {
		s.HalfLife = LoadDefaults.HalfLife
	}
	if s.Staleness <= 0 {
		s.Staleness = LoadDefaults.Staleness
	}
	if s.PrefillTokens <= 0 {
		s.PrefillTokens = LoadDefaults.PrefillTokens
	}
	return s
}

// load is a node's load state.
type load struct {
	mu      sync.Mutex
	ttft    float64   // peak-EWMA of the time to first token, seconds; 0: no sample
	ttftAt  time.Time // of the last sample
	engine  EngineLoad
	others  float64 // the engine's requests not from this process, when it reported
	prefill float64 // prompt tokens of attempts in flight not yet past their first token
}

// ObserveTTFT adds a time-to-first-token sample. The average is a peak
// EWMA: a sample above it replaces it at once, one below pulls it down
// with the half-life. lowerBound marks a sample the node took at least
// (an attempt that lost the race), which can start or raise the average
// but never lower it.
func (n *Node) ObserveTTFT(d time.Duration, lowerBound bool, now time.Time) {
	s := n.tracker.loadSettings.Load().withDefaults()
	l := &n.load
	l.mu.Lock()
	defer l.mu.Unlock()
	sample := d.Seconds()
	switch {
	case l.ttft == 0 || sample >= l.ttft:
		// A bound may start the average too: a node that has only ever
		// lost races (one that never answers) is at least that slow.
		l.ttft = sample
	case !lowerBound:
		w := math.Exp2(-now.Sub(l.ttftAt).Seconds() / s.HalfLife.Seconds())
		l.ttft = w*l.ttft + (1-w)*sample
	}
	l.ttftAt = now
}

// SetEngineLoad records the engine's own figures. What they add to this
// process's own count is the load of others (other replicas, other
// clients): the engine's requests less this process's in flight when the
// figures arrive. Taking the figures as the load itself would keep a node
// looking busy for up to a publishing interval after its requests ended,
// and every replica would herd away from it and back.
func (n *Node) SetEngineLoad(e EngineLoad) {
	local := float64(n.InFlight())
	n.load.mu.Lock()
	if e.At.After(n.load.engine.At) {
		n.load.engine = e
		n.load.others = max(e.Running+e.Waiting-local, 0)
	}
	n.load.mu.Unlock()
}

// addPrefill counts prompt tokens in flight on the node before their first
// token (negative to remove them).
func (n *Node) addPrefill(tokens float64) {
	n.load.mu.Lock()
	n.load.prefill += tokens
	n.load.mu.Unlock()
}

// Load is a snapshot of what the cost of a node is made of.
type Load struct {
	// TTFT is the peak-EWMA time to first token, seconds; 0 when unknown.
	TTFT float64
	// Confidence is how much TTFT still says, 0-1: it halves every
	// half-life without a sample, so that a node the policy stopped
	// sending to drifts back towards its peers and is tried again.
	Confidence float64
	// Requests is the node's load in requests: this process's in-flight
	// attempts, plus the engine's requests from others (fresh figures
	// only), plus the prompt tokens in flight in units of PrefillTokens.
	Requests float64
	// Capacity is how many requests the node runs at once (max_concurrency,
	// else the engine's own figure); 0 when unknown.
	Capacity float64
}

// Load returns the node's load at now; maxConcurrency is the registry's
// override of its capacity (0: none).
func (n *Node) Load(maxConcurrency int, now time.Time) Load {
	s := n.tracker.loadSettings.Load().withDefaults()
	l := &n.load
	l.mu.Lock()
	defer l.mu.Unlock()
	out := Load{TTFT: l.ttft, Requests: float64(n.InFlight()), Capacity: float64(maxConcurrency)}
	if l.ttft > 0 {
		out.Confidence = math.Exp2(-max(now.Sub(l.ttftAt).Seconds(), 0) / s.HalfLife.Seconds())
	}
	if e := l.engine; !e.At.IsZero() && now.Sub(e.At) <= s.Staleness {
		out.Requests += l.others
		if out.Capacity == 0 {
			out.Capacity = e.MaxRunning
		}
	}
	out.Requests += max(l.prefill, 0) / s.PrefillTokens
	return out
}

// Cost compares two nodes' loads: the estimated wait for a first token on
// each. With no capacity known it is Linkerd's peak-EWMA cost with LLM
// load, TTFT × (load + 1); when both nodes' capacities are known it is
// TTFT × (1 + utilisation once this request is placed), so an idle node
// that runs eight requests at once beats an idle one that runs one. A
// node with no TTFT sample yet gets the other's (a neutral prior, not
// zero), and one without recent samples drifts towards it. Weights divide
// the cost.
func Cost(a, b Load, weightA, weightB float64) (costA, costB float64) {
	ttftA, ttftB := a.TTFT, b.TTFT
	switch {
	case ttftA == 0 && ttftB == 0:
		ttftA, ttftB = 1, 1
	case ttftA == 0:
		ttftA = ttftB
	case ttftB == 0:
		ttftB = ttftA
	default:
		// Estimates without recent samples drift towards what both say,
		// weighted by how much each still says.
		prior := (ttftA + ttftB) / 2
		if c := a.Confidence + b.Confidence; c > 0 {
			prior = (ttftA*a.Confidence + ttftB*b.Confidence) / c
		}
		ttftA, ttftB = drift(ttftA, a.Confidence, prior), drift(ttftB, b.Confidence, prior)
	}
	if a.Capacity > 0 && b.Capacity > 0 {
		return ttftA * (1 + (a.Requests+1)/a.Capacity) / weightA, ttftB * (1 + (b.Requests+1)/b.Capacity) / weightB
	}
	return ttftA * (a.Requests + 1) / weightA, ttftB * (b.Requests + 1) / weightB
}

// drift is ttft as far as confidence trusts it, the rest prior.
func drift(ttft, confidence, prior float64) float64 {
	return confidence*ttft + (1-confidence)*prior
}
