package simnode

import (
	"encoding/json"
	"net/http"
	"sync"
	"time"
)

// Shared header values: assigning these slices directly avoids allocating
// a new one per response. Nothing in net/http mutates header slices in
// place.
var (
	hdrJSON        = []string{"application/json"}
	hdrEventStream = []string{"text/event-stream"}
	hdrNoCache     = []string{"no-cache"}
)

// bufPool recycles the byte buffers used to read request bodies and to
// build SSE events, which keeps the per-request allocation count low under
// thousands of concurrent streams.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

func getBuf() *[]byte { return bufPool.Get().(*[]byte) }

func putBuf(b *[]byte) {
	if cap(*b) > 1<<20 {
		return // do not pin memory from one huge request
	}
	*b = (*b)[:0]
	bufPool.Put(b)
}

// serveGenerate handles the chat completion, completion and embedding
// endpoints: validate, then generate.
func (n *Node) serveGenerate(w http.ResponseWriter, r *http.Request, snap *snapshot, k kind) {
	start := time.Now()
	if r.Method != http.MethodPost {
		methodNotAllowed(w, http.MethodPost)
		return
	}
	n.received.Add(1)

	var req genRequest
	err := decodeBody(r, &req)
	p := plan{kind: k, model: req.Model}
	if p.model == "" {
		p.model = snap.cfg.Models[0]
	}
	rec := n.newRecord(r, start, p.model, req.Stream && k != kindEmbedding)

	if err != nil {
		n.clientError(w, rec, http.StatusBadRequest, "", "", "Invalid request body: "+err.Error())
		return
	}
	if !snap.hasModel(p.model) {
		n.clientError(w, rec, http.StatusNotFound, "model_not_found", "model",
			"The model `"+p.model+"` does not exist.")
		return
	}
	if msg, param := p.build(&req); msg != "" {
		n.clientError(w, rec, http.StatusBadRequest, "", param, msg)
		return
	}
	n.generate(w, r, rec, &p, openAI{})
}

// decodeBody reads a JSON request body into v, through a pooled buffer.
func decodeBody(r *http.Request, v any) error {
	if r.Body == nil { // hand-built requests may have none
		return json.Unmarshal(nil, v)
	}
	bp := getBuf()
	defer putBuf(bp)
	body, err := readBody(r.Body, (*bp)[:0])
	*bp = body
	if err != nil {
		return err
	}
	return json.Unmarshal(body, v)
}

// newRecord starts the record of an inference request.
func (n *Node) newRecord(r *http.Request, start time.Time, model string, stream bool) *Record {
	rec := &Record{
		Path:      r.URL.Path,
		Model:     model,
		Stream:    stream,
		Start:     start,
		RequestID: r.Header.Get("X-Request-Id"),
	}
	n.addRecord(rec)
	return rec
}

// dialect is how one API (OpenAI's, Ollama's) answers what generate
// decides.
type dialect interface {
	// busy answers 429: every slot is busy and the queue is full.
	busy(w http.ResponseWriter, msg string)
	// fail answers an injected failure with status.
	fail(w http.ResponseWriter, p *plan, status int, msg string)
	// answer writes the answer once its first token is ready.
	answer(n *Node, w http.ResponseWriter, rec *Record, snap *snapshot, p *plan, sl *sleeper)
}

// openAI is the OpenAI API's dialect.
type openAI struct{}

func (openAI) busy(w http.ResponseWriter, msg string) {
	writeError(w, http.StatusTooManyRequests, "rate_limit_error", "rate_limit_exceeded", "", msg)
}

func (openAI) fail(w http.ResponseWriter, _ *plan, status int, msg string) {
	writeError(w, status, "server_error", "simulated_failure", "", msg)
}

func (openAI) answer(n *Node, w http.ResponseWriter, rec *Record, snap *snapshot, p *plan, sl *sleeper) {
	switch {
	case p.kind == kindEmbedding:
		n.writeEmbeddings(w, rec, p)
	case p.stream:
		n.writeStream(w, rec, snap, p, sl)
	default:
		n.writeFull(w, rec, snap, p, sl)
	}
}

// generate runs a validated request as an engine would: queue for a slot,
// prefill (the TTFT), fail as injected or answer in api's dialect.
func (n *Node) generate(w http.ResponseWriter, r *http.Request, rec *Record, p *plan, api dialect) {
	d := n.draw()

	ctx := r.Context()
	switch n.acquire(ctx, p.model) {
	case queueFull:
		n.rejected.Add(1)
		n.endRecord(rec, http.StatusTooManyRequests, false)
		w.Header().Set("Retry-After", "1")
		api.busy(w, "Node "+n.cfg.Load().cfg.ID+" is at capacity: all slots busy and the queue is full.")
		return
	case gaveUp:
		n.abort(rec, 499)
		return
	}
	defer n.release(p.model)

	// Use the config current at slot time: TTFT starts now, and a test
	// that slows the node down expects queued requests to be affected.
	snap := n.cfg.Load()
	cfg := &snap.cfg
	sl := sleeper{ctx: ctx}
	defer sl.stop()
	ttft := cfg.ttft(d)

	if d.fail < cfg.FailRate {
		if !sl.sleep(ttft / 2) {
			n.abort(rec, 499)
			return
		}
		n.failed.Add(1)
		n.endRecord(rec, cfg.FailStatus, false)
		api.fail(w, p, cfg.FailStatus, "Simulated failure on node "+cfg.ID+".")
		return
	}

	if !sl.sleep(ttft) {
		n.abort(rec, 499)
		return
	}
	n.markFirstToken(rec, time.Now())
	api.answer(n, w, rec, snap, p, &sl)
}
