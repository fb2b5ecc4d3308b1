package simnode

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ServeHTTP serves the simulated API:
//
//	POST /v1/chat/completions   chat completions, streamed or not, with tool calls
//	POST /v1/completions        text completions, streamed or not
//	POST /v1/embeddings         deterministic embeddings (see Embed)
//	GET  /v1/models             the served models
//	GET  /health                {"status":"ok"}
//	GET  /metrics               vLLM-named Prometheus gauges
//	GET  /sim/stats             Stats as JSON
//	GET  /sim/requests          Requests as JSON
//	GET  /sim/config            the current Config (durations as strings)
//	POST /sim/config            partial Config update, e.g. {"ttft":"250ms"}
//	POST /sim/reset             Reset
//	     /api/...               Ollama's API (see serveOllama)
//
// Every response has the header X-Sim-Node set to the node's ID.
func (n *Node) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	snap := n.cfg.Load()
	w.Header()["X-Sim-Node"] = snap.nodeHeader
	if strings.HasPrefix(r.URL.Path, "/api/") {
		n.serveOllama(w, r, snap)
		return
	}
	switch r.URL.Path {
	case "/v1/chat/completions":
		n.serveGenerate(w, r, snap, kindChat)
	case "/v1/completions":
		n.serveGenerate(w, r, snap, kindCompletion)
	case "/v1/embeddings":
		n.serveGenerate(w, r, snap, kindEmbedding)
	case "/v1/models":
		if get(w, r) {
			n.serveModels(w, snap)
		}
	case "/health":
		if get(w, r) {
			writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
		}
	case "/metrics":
		if get(w, r) {
			n.serveMetrics(w, snap)
		}
	case "/sim/stats":
		if get(w, r) {
			writeJSON(w, http.StatusOK, n.Stats())
		}
	case "/sim/requests":
		if get(w, r) {
			writeJSON(w, http.StatusOK, n.Requests())
		}
	case "/sim/config":
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			writeJSON(w, http.StatusOK, configToJSON(n.Config()))
		case http.MethodPost:
			n.serveConfigUpdate(w, r)
		default:
			methodNotAllowed(w, "GET, POST")
		}
	case "/sim/reset":
		if r.Method != http.MethodPost {
			methodNotAllowed(w, http.MethodPost)
			return
		}
		n.Reset()
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	default:
		writeError(w, http.StatusNotFound, "invalid_request_error", "not_found", "",
			"Unknown request URL: "+r.Method+" "+r.URL.Path)
	}
}

// get reports whether r is a GET (or HEAD) and answers 405 otherwise.
func get(w http.ResponseWriter, r *http.Request) bool {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return true
	}
	methodNotAllowed(w, "GET")
	return false
}

func methodNotAllowed(w http.ResponseWriter, allow string) {
	w.Header().Set("Allow", allow)
	writeError(w, http.StatusMethodNotAllowed, "invalid_request_error", "method_not_allowed", "",
		"Method not allowed; use "+allow+".")
}

type modelOut struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

func (n *Node) serveModels(w http.ResponseWriter, snap *snapshot) {
	data := make([]modelOut, len(snap.cfg.Models))
	for i, m := range snap.cfg.Models {
		data[i] = modelOut{ID: m, Object: "model", Created: n.created, OwnedBy: "simnode"}
	}
	writeJSON(w, http.StatusOK, struct {
		Object string     `json:"object"`
		Data   []modelOut `json:"data"`
	}{"list", data})
}

// serveMetrics exposes the gauges a vLLM server exports under the same
// names, so that load-aware balancing can be exercised against the
// simulator exactly as against vLLM: running and waiting requests per
// model from the slots and the queue, and KV-cache usage as busy slots over
// slots. With a slot limit it also states it as
// vllm:scheduler_config_info{max_num_seqs="<slots>"}, a gauge vLLM does not
// have (see registry.ParseEngineMetrics).
func (n *Node) serveMetrics(w http.ResponseWriter, snap *snapshot) {
	type row struct {
		model            string
		running, waiting int
	}
	var rows []row
	n.sched.mu.Lock()
	running := n.sched.running
	for _, m := range snap.cfg.Models {
		r := row{model: m}
		if g := n.sched.models[m]; g != nil {
			r.running, r.waiting = g.running, g.waiting
		}
		rows = append(rows, r)
	}
	// Requests for a model removed by Update are still running; report them.
	for m, g := range n.sched.models {
		if (g.running != 0 || g.waiting != 0) && !snap.hasModel(m) {
			rows = append(rows, row{m, g.running, g.waiting})
		}
	}
	n.sched.mu.Unlock()
	slices.SortStableFunc(rows[len(snap.cfg.Models):], func(a, b row) int { return strings.Compare(a.model, b.model) })

	kv := 0.0
	if slots := snap.cfg.Slots; slots > 0 {
		kv = min(1, float64(running)/float64(slots))
	}

	var b bytes.Buffer
	metric := func(name, help string, value func(r row) string) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name)
		for _, r := range rows {
			fmt.Fprintf(&b, "%s{model_name=\"%s\"} %s\n", name, escapeLabel(r.model), value(r))
		}
	}
	metric("vllm:num_requests_running", "Number of requests in model execution batches.",
		func(r row) string { return strconv.Itoa(r.running) })
	metric("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
		func(r row) string { return strconv.Itoa(r.waiting) })
	metric("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
		func(row) string { return strconv.FormatFloat(kv, 'g', -1, 64) })
	if slots := snap.cfg.Slots; slots > 0 {
		// vLLM itself does not export max_num_seqs; this is the form an
		// info gauge of its scheduler config would take, which the
		// registration agent reads as the node's capacity.
		fmt.Fprintf(&b, "# HELP %[1]s Scheduler configuration (simnode: its slots).\n# TYPE %[1]s gauge\n%[1]s{max_num_seqs=\"%d\"} 1\n",
			"vllm:scheduler_config_info", slots)
	}

	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	_, _ = w.Write(b.Bytes())
}

// escapeLabel escapes a Prometheus label value.
var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

func escapeLabel(s string) string { return labelEscaper.Replace(s) }

// configJSON is the wire form of Config for /sim/config, with durations as
// Go duration strings ("250ms") so that curl users can read and write them.
type configJSON struct {
	ID                string   `json:"id"`
	Models            []string `json:"models"`
	TTFT              string   `json:"ttft"`
	TTFTJitter        float64  `json:"ttft_jitter"`
	SlowFraction      float64  `json:"slow_fraction"`
	SlowFactor        float64  `json:"slow_factor"`
	InterTokenLatency string   `json:"inter_token_latency"`
	Tokens            int      `json:"tokens"`
	Slots             int      `json:"slots"`
	QueueSize         int      `json:"queue_size"`
	FailRate          float64  `json:"fail_rate"`
	FailStatus        int      `json:"fail_status"`
	Seed              int64    `json:"seed"`
}

func configToJSON(c Config) configJSON {
	return configJSON{
		ID:                c.ID,
		Models:            c.Models,
		TTFT:              max(c.TTFT, 0).String(),
		TTFTJitter:        c.TTFTJitter,
		SlowFraction:      c.SlowFraction,
		SlowFactor:        c.SlowFactor,
		InterTokenLatency: max(c.InterTokenLatency, 0).String(),
		Tokens:            c.Tokens,
		Slots:             c.Slots,
		QueueSize:         c.QueueSize,
		FailRate:          c.FailRate,
		FailStatus:        c.FailStatus,
		Seed:              c.Seed,
	}
}

// configPatch is a partial update: only the fields present are changed.
// "itl" and "queue" are accepted as aliases matching the command-line flags.
type configPatch struct {
	ID                *string       `json:"id"`
	Models            *[]string     `json:"models"`
	TTFT              *jsonDuration `json:"ttft"`
	TTFTJitter        *float64      `json:"ttft_jitter"`
	SlowFraction      *float64      `json:"slow_fraction"`
	SlowFactor        *float64      `json:"slow_factor"`
	InterTokenLatency *jsonDuration `json:"inter_token_latency"`
	ITL               *jsonDuration `json:"itl"`
	Tokens            *int          `json:"tokens"`
	Slots             *int          `json:"slots"`
	QueueSize         *int          `json:"queue_size"`
	Queue             *int          `json:"queue"`
	FailRate          *float64      `json:"fail_rate"`
	FailStatus        *int          `json:"fail_status"`
	Seed              *int64        `json:"seed"`
}

// jsonDuration accepts a Go duration string ("250ms") or, for symmetry with
// how encoding/json writes a time.Duration, integer nanoseconds.
type jsonDuration time.Duration

// UnmarshalJSON implements json.Unmarshaler.
func (d *jsonDuration) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		v, err := time.ParseDuration(s)
		if err != nil {
			return err
		}
		*d = jsonDuration(v)
		return nil
	}
	var ns int64
	if err := json.Unmarshal(b, &ns); err != nil {
		return errors.New(`duration must be a string like "250ms" or integer nanoseconds`)
	}
	*d = jsonDuration(ns)
	return nil
}

func (p *configPatch) apply(c *Config) {
	setIf(&c.ID, p.ID)
	setIf(&c.Models, p.Models)
	setIf(&c.TTFTJitter, p.TTFTJitter)
	setIf(&c.SlowFraction, p.SlowFraction)
	setIf(&c.SlowFactor, p.SlowFactor)
	setIf(&c.Tokens, p.Tokens)
	setIf(&c.Slots, p.Slots)
	setIf(&c.QueueSize, p.Queue)
	setIf(&c.QueueSize, p.QueueSize)
	setIf(&c.FailRate, p.FailRate)
	setIf(&c.FailStatus, p.FailStatus)
	setIf(&c.Seed, p.Seed)
	if p.TTFT != nil {
		c.TTFT = time.Duration(*p.TTFT)
	}
	if p.ITL != nil {
		c.InterTokenLatency = time.Duration(*p.ITL)
	}
	if p.InterTokenLatency != nil {
		c.InterTokenLatency = time.Duration(*p.InterTokenLatency)
	}
}

func setIf[T any](dst *T, src *T) {
	if src != nil {
		*dst = *src
	}
}

// serveConfigUpdate applies a partial JSON config. Unknown fields are an
// error, so that a typo does not silently leave the node unchanged.
func (n *Node) serveConfigUpdate(w http.ResponseWriter, r *http.Request) {
	var p configPatch
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "", "", "Invalid config: "+err.Error())
		return
	}
	n.Update(p.apply)
	writeJSON(w, http.StatusOK, configToJSON(n.Config()))
}
