package simnode

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/ai-lb/ai-lb/internal/ollamaapi"
)

// Ollama's native API, as an Ollama server answers it:
//
//	POST /api/chat         chat, streamed as NDJSON unless "stream":false, with tool calls and thinking
//	POST /api/generate     text generation, likewise
//	POST /api/embed        embeddings of "input" (a string or strings)
//	POST /api/embeddings   the legacy embedding of "prompt"
//	POST /api/show         a model's details, context length and capabilities
//	GET  /api/tags         the served models
//	GET  /api/ps           the models that served a request in the last OllamaKeepAlive
//	GET  /api/version      {"version":OllamaVersion}
//
// Generation goes through the node's slots, queue, TTFT, tokens and
// failure injection like the OpenAI endpoints. Names are Ollama's: a name
// without a tag is its ":latest", and a model whose name contains "embed"
// only embeds. Errors are {"error":"..."}; an injected failure of a
// streamed request comes as an error record in a 200 NDJSON stream, before
// any content (as from an Ollama whose runner fails after the stream
// began), and as FailStatus otherwise.

// OllamaVersion is the Ollama release the simulated API follows.
const OllamaVersion = "0.12.0"

// OllamaKeepAlive is how long a model counts as loaded (in /api/ps) after a
// request: Ollama's default keep_alive.
const OllamaKeepAlive = 5 * time.Minute

// Simulated model facts.
const (
	ollamaContextLength = 32768
	ollamaNumCtx        = 8192
	ollamaModelSize     = 1 << 30
)

// ollamaFullName is a model name as Ollama reads it: without a tag it is
// its ":latest" (ai-lb matches names the same way, see request.ModelName).
func ollamaFullName(name string) string {
	if name == "" || strings.LastIndexByte(name, ':') > strings.LastIndexByte(name, '/') {
		return name
	}
	return name + ":latest"
}

// ollamaModel returns the served model a requested name means, if any.
func (s *snapshot) ollamaModel(name string) (string, bool) {
	full := ollamaFullName(name)
	for _, m := range s.cfg.Models {
		if ollamaFullName(m) == full {
			return m, true
		}
	}
	return "", false
}

// embeddingOnly reports whether a simulated model only embeds.
func embeddingOnly(model string) bool { return strings.Contains(model, "embed") }

// serveOllama serves /api/*.
func (n *Node) serveOllama(w http.ResponseWriter, r *http.Request, snap *snapshot) {
	switch r.URL.Path {
	case "/api/chat":
		n.serveOllamaGenerate(w, r, snap, kindChat)
	case "/api/generate":
		n.serveOllamaGenerate(w, r, snap, kindCompletion)
	case "/api/embed", "/api/embeddings":
		n.serveOllamaGenerate(w, r, snap, kindEmbedding)
	case "/api/show":
		if ollamaMethod(w, r, http.MethodPost) {
			n.serveOllamaShow(w, r, snap)
		}
	case "/api/tags":
		if ollamaMethod(w, r, http.MethodGet) {
			writeJSON(w, http.StatusOK, ollamaapi.List{Models: n.ollamaModels(snap, nil)})
		}
	case "/api/ps":
		if ollamaMethod(w, r, http.MethodGet) {
			writeJSON(w, http.StatusOK, ollamaapi.List{Models: n.ollamaModels(snap, n.loadedUntil())})
		}
	case "/api/version":
		if ollamaMethod(w, r, http.MethodGet) {
			writeJSON(w, http.StatusOK, map[string]string{"version": OllamaVersion})
		}
	default:
		writeOllamaError(w, http.StatusNotFound, "404 page not found")
	}
}

// ollamaMethod reports whether r uses method (GET includes HEAD), and
// answers 405 otherwise.
func ollamaMethod(w http.ResponseWriter, r *http.Request, method string) bool {
	if r.Method == method || method == http.MethodGet && r.Method == http.MethodHead {
		return true
	}
	w.Header().Set("Allow", method)
	writeOllamaError(w, http.StatusMethodNotAllowed, "405 method not allowed")
	return false
}

func writeOllamaError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, ollamaapi.Error{Error: msg})
}

// ollamaRequest is the union of the request fields the simulator reads on
// Ollama's generation endpoints.
type ollamaRequest struct {
	Model    string `json:"model"`
	Stream   *bool  `json:"stream"`
	Messages []struct {
		Role    string `json:"role"`
		Content string `json:"content"`
	} `json:"messages"`
	Prompt  *string         `json:"prompt"`
	System  string          `json:"system"`
	Input   json.RawMessage `json:"input"`
	Tools   []toolIn        `json:"tools"`
	Think   json.RawMessage `json:"think"`
	Options struct {
		NumPredict *int `json:"num_predict"`
	} `json:"options"`
}

// ollamaCall is one request's Ollama dialect.
type ollamaCall struct {
	path    string
	model   string // as requested, which Ollama's answers repeat
	think   bool   // a thinking record comes first
	load    bool   // /api/generate without a prompt: load the model only
	created time.Time
}

// serveOllamaGenerate validates a generation request on Ollama's API and
// generates its answer.
func (n *Node) serveOllamaGenerate(w http.ResponseWriter, r *http.Request, snap *snapshot, k kind) {
	start := time.Now()
	if !ollamaMethod(w, r, http.MethodPost) {
		return
	}
	n.received.Add(1)
	var req ollamaRequest
	err := decodeBody(r, &req)
	model, served := snap.ollamaModel(req.Model)
	if !served {
		model = req.Model
	}
	stream := k != kindEmbedding && (req.Stream == nil || *req.Stream)
	rec := n.newRecord(r, start, model, stream)
	refuse := func(status int, msg string) {
		n.failed.Add(1)
		n.endRecord(rec, status, false)
		writeOllamaError(w, status, msg)
	}
	switch {
	case err != nil:
		refuse(http.StatusBadRequest, err.Error())
		return
	case req.Model == "":
		refuse(http.StatusBadRequest, "model is required")
		return
	case !served:
		refuse(http.StatusNotFound, "model \""+req.Model+"\" not found, try pulling it first")
		return
	case k != kindEmbedding && embeddingOnly(model):
		refuse(http.StatusBadRequest, "\""+req.Model+"\" does not support "+strings.TrimPrefix(r.URL.Path, "/api/"))
		return
	}
	p := plan{kind: k, model: model, stream: stream}
	call := &ollamaCall{path: r.URL.Path, model: req.Model, think: thinks(req.Think)}
	if msg := call.build(&p, &req); msg != "" {
		refuse(http.StatusBadRequest, msg)
		return
	}
	n.generate(w, r, rec, &p, call)
}

// thinks reports whether a "think" value asks for thinking: true, or a
// level ("low", "medium", "high").
func thinks(raw json.RawMessage) bool {
	var on bool
	if json.Unmarshal(raw, &on) == nil {
		return on
	}
	var level string
	return json.Unmarshal(raw, &level) == nil && level != ""
}

// build fills p from an Ollama request, or returns an error message.
func (c *ollamaCall) build(p *plan, req *ollamaRequest) string {
	if np := req.Options.NumPredict; np != nil && *np > 0 {
		p.maxTokens = *np // -1 and -2 mean no limit
	}
	switch {
	case p.kind == kindChat:
		chars := 0
		for _, m := range req.Messages {
			chars += len(m.Content)
		}
		p.promptTokens = tokensFor(chars)
		if len(req.Tools) > 0 && len(req.Messages) > 0 && req.Messages[len(req.Messages)-1].Role == "user" {
			p.toolName = cmpOr(req.Tools[0].Function.Name, "tool")
		}
	case p.kind == kindCompletion:
		prompt := ""
		if req.Prompt != nil {
			prompt = *req.Prompt
		}
		c.load = prompt == ""
		p.promptTokens = tokensFor(len(prompt) + len(req.System))
	case c.path == "/api/embeddings":
		if req.Prompt == nil {
			return "prompt is required"
		}
		p.inputs = [][]byte{[]byte(*req.Prompt)}
	default:
		inputs, err := embeddingInputs(req.Input)
		if err != nil {
			return "input " + err.Error()
		}
		p.inputs = inputs
	}
	if p.kind == kindEmbedding {
		chars := 0
		for _, in := range p.inputs {
			chars += len(in)
		}
		p.promptTokens = tokensFor(chars)
	}
	return ""
}

func cmpOr(s, fallback string) string {
	if s == "" {
		return fallback
	}
	return s
}

func (c *ollamaCall) busy(w http.ResponseWriter, msg string) {
	writeOllamaError(w, http.StatusTooManyRequests, msg)
}

// fail answers an injected failure: in a streamed answer, as an error
// record before any content; otherwise with the status.
func (c *ollamaCall) fail(w http.ResponseWriter, p *plan, status int, msg string) {
	if !p.stream {
		writeOllamaError(w, status, msg)
		return
	}
	w.Header()["Content-Type"] = hdrNDJSON
	w.WriteHeader(http.StatusOK)
	b, _ := json.Marshal(ollamaapi.Error{Error: msg})
	_, _ = w.Write(append(b, '\n'))
}

var hdrNDJSON = []string{"application/x-ndjson"}

// Ollama's answer records.
type (
	ollamaChunk struct {
		Model     string            `json:"model"`
		CreatedAt time.Time         `json:"created_at"`
		Message   *ollamaMessageOut `json:"message,omitempty"`
		Response  *string           `json:"response,omitempty"`
		Thinking  string            `json:"thinking,omitempty"`
		Done      bool              `json:"done"`
		ollamaDone
	}
	ollamaDone struct {
		DoneReason         string `json:"done_reason,omitempty"`
		TotalDuration      int64  `json:"total_duration,omitempty"`
		LoadDuration       int64  `json:"load_duration,omitempty"`
		PromptEvalCount    int    `json:"prompt_eval_count,omitempty"`
		PromptEvalDuration int64  `json:"prompt_eval_duration,omitempty"`
		EvalCount          int    `json:"eval_count,omitempty"`
		EvalDuration       int64  `json:"eval_duration,omitempty"`
	}
	ollamaMessageOut struct {
		Role      string              `json:"role"`
		Content   string              `json:"content"`
		Thinking  string              `json:"thinking,omitempty"`
		ToolCalls []ollamaToolCallOut `json:"tool_calls,omitempty"`
	}
	ollamaToolCallOut struct {
		ID       string `json:"id"`
		Function struct {
			Index     int             `json:"index"`
			Name      string          `json:"name"`
			Arguments json.RawMessage `json:"arguments"`
		} `json:"function"`
	}
)

// ThinkingText is the thinking of an answer by the node with the given ID,
// when the request asked for thinking.
func ThinkingText(id string) string { return id + "-think " }

// answer writes an Ollama answer: embeddings at once; for generation, the
// records of a stream (a thinking record first when asked for, one record
// per token or one with the tool call, then the final done:true record
// with the counts), or after the decode time the whole answer in one.
func (c *ollamaCall) answer(n *Node, w http.ResponseWriter, rec *Record, snap *snapshot, p *plan, sl *sleeper) {
	c.created = time.Now()
	if p.kind == kindEmbedding {
		c.writeEmbeddings(n, w, rec, p)
		return
	}
	cfg := &snap.cfg
	var parts []ollamaChunk
	if c.think && !c.load {
		parts = append(parts, c.part("", ThinkingText(cfg.ID), p))
	}
	_, completionTokens, finish := p.answerShape(cfg)
	switch {
	case c.load:
		completionTokens, finish = 0, "load"
	case p.toolName != "":
		part := c.part("", "", p)
		tc := ollamaToolCallOut{ID: "call_" + cfg.ID + "_" + strconv.FormatInt(rec.Seq, 10)}
		tc.Function.Name, tc.Function.Arguments = p.toolName, json.RawMessage(toolArgs)
		part.Message.ToolCalls = []ollamaToolCallOut{tc}
		parts = append(parts, part)
		finish = "stop"
	default:
		for i := range completionTokens {
			parts = append(parts, c.part(TokenText(cfg.ID, i), "", p))
		}
	}
	last := c.part("", "", p)
	last.Done = true
	last.ollamaDone = ollamaDone{DoneReason: finish, PromptEvalCount: p.promptTokens, EvalCount: completionTokens}
	if !p.stream {
		whole := merge(parts, last)
		if !sl.sleep(time.Duration(len(parts)) * max(n.cfg.Load().cfg.InterTokenLatency, 0)) {
			n.abort(rec, 499)
			return
		}
		c.timings(&whole, rec)
		writeJSON(w, http.StatusOK, whole)
		n.completed.Add(1)
		n.endRecord(rec, http.StatusOK, false)
		return
	}
	c.stream(n, w, rec, append(parts, last), sl)
}

// timings sets the durations of the final record, as it is sent.
func (c *ollamaCall) timings(last *ollamaChunk, rec *Record) {
	now := time.Now()
	last.TotalDuration = now.Sub(rec.Start).Nanoseconds()
	last.PromptEvalDuration = c.created.Sub(rec.Start).Nanoseconds()
	last.EvalDuration = now.Sub(c.created).Nanoseconds()
}

// part is a record of the answer carrying content or thinking.
func (c *ollamaCall) part(content, thinking string, p *plan) ollamaChunk {
	out := ollamaChunk{Model: c.model, CreatedAt: c.created}
	if p.kind == kindChat {
		out.Message = &ollamaMessageOut{Role: "assistant", Content: content, Thinking: thinking}
	} else {
		out.Response, out.Thinking = &content, thinking
	}
	return out
}

// merge is a non-streamed answer: the final record with the parts'
// content, thinking and tool calls.
func merge(parts []ollamaChunk, last ollamaChunk) ollamaChunk {
	var content, thinking strings.Builder
	var calls []ollamaToolCallOut
	for _, part := range parts {
		if m := part.Message; m != nil {
			content.WriteString(m.Content)
			thinking.WriteString(m.Thinking)
			calls = append(calls, m.ToolCalls...)
		} else {
			content.WriteString(*part.Response)
			thinking.WriteString(part.Thinking)
		}
	}
	if m := last.Message; m != nil {
		m.Content, m.Thinking, m.ToolCalls = content.String(), thinking.String(), calls
	} else {
		text := content.String()
		last.Response, last.Thinking = &text, thinking.String()
	}
	return last
}

// stream writes the records as NDJSON, one inter-token latency apart,
// each flushed, and stops when the client goes away.
func (c *ollamaCall) stream(n *Node, w http.ResponseWriter, rec *Record, records []ollamaChunk, sl *sleeper) {
	rc := http.NewResponseController(w)
	w.Header()["Content-Type"] = hdrNDJSON
	w.WriteHeader(http.StatusOK)
	for i, record := range records {
		if i > 0 && i < len(records)-1 && !sl.sleep(n.cfg.Load().cfg.InterTokenLatency) {
			n.abort(rec, http.StatusOK)
			return
		}
		if record.Done {
			c.timings(&record, rec)
		}
		b, _ := json.Marshal(record)
		_, err := w.Write(append(b, '\n'))
		if err == nil {
			if err = rc.Flush(); errors.Is(err, http.ErrNotSupported) {
				err = nil
			}
		}
		if err != nil {
			n.abort(rec, http.StatusOK)
			return
		}
	}
	n.completed.Add(1)
	n.endRecord(rec, http.StatusOK, false)
}

// writeEmbeddings answers /api/embed, or the legacy /api/embeddings.
func (c *ollamaCall) writeEmbeddings(n *Node, w http.ResponseWriter, rec *Record, p *plan) {
	if c.path == "/api/embeddings" {
		writeJSON(w, http.StatusOK, map[string][]float32{"embedding": Embed(p.inputs[0])})
	} else {
		vectors := make([][]float32, len(p.inputs))
		for i, in := range p.inputs {
			vectors[i] = Embed(in)
		}
		writeJSON(w, http.StatusOK, struct {
			Model           string      `json:"model"`
			Embeddings      [][]float32 `json:"embeddings"`
			TotalDuration   int64       `json:"total_duration"`
			LoadDuration    int64       `json:"load_duration"`
			PromptEvalCount int         `json:"prompt_eval_count"`
		}{c.model, vectors, time.Since(rec.Start).Nanoseconds(), 0, p.promptTokens})
	}
	n.completed.Add(1)
	n.endRecord(rec, http.StatusOK, false)
}

func ollamaDetails() ollamaapi.Details {
	return ollamaapi.Details{Format: "gguf", Family: "sim", Families: []string{"sim"}, ParameterSize: "1B", QuantizationLevel: "Q4_K_M"}
}

// ollamaModels lists the served models; with loaded (for /api/ps) only
// those it has an expiry for, in /api/ps's form.
func (n *Node) ollamaModels(snap *snapshot, loaded map[string]time.Time) []ollamaapi.Model {
	out := []ollamaapi.Model{}
	for _, m := range snap.cfg.Models {
		name := ollamaFullName(m)
		model := ollamaapi.Model{Name: name, Model: name, ModifiedAt: time.Unix(n.created, 0).UTC(),
			Size: ollamaModelSize, Digest: ollamaapi.NameDigest(name), Details: ollamaDetails()}
		if loaded != nil {
			expires, ok := loaded[m]
			if !ok {
				continue
			}
			model.ExpiresAt, model.SizeVRAM, model.ContextLength = &expires, ollamaModelSize, ollamaNumCtx
		}
		out = append(out, model)
	}
	return out
}

// loadedUntil returns when each model that served a request within
// OllamaKeepAlive unloads, from the request records.
func (n *Node) loadedUntil() map[string]time.Time {
	loaded := make(map[string]time.Time)
	now := time.Now()
	for _, r := range n.Requests() {
		last := r.End
		if last.IsZero() {
			last = now // still running
		}
		if until := last.Add(OllamaKeepAlive); until.After(now) && until.After(loaded[r.Model]) {
			loaded[r.Model] = until
		}
	}
	return loaded
}

// serveOllamaShow answers /api/show {"model"} (or the legacy {"name"}).
func (n *Node) serveOllamaShow(w http.ResponseWriter, r *http.Request, snap *snapshot) {
	var req struct {
		Model string `json:"model"`
		Name  string `json:"name"`
	}
	if err := decodeBody(r, &req); err != nil {
		writeOllamaError(w, http.StatusBadRequest, err.Error())
		return
	}
	name := cmpOr(req.Model, req.Name)
	if name == "" {
		writeOllamaError(w, http.StatusBadRequest, "model is required")
		return
	}
	model, ok := snap.ollamaModel(name)
	if !ok {
		writeOllamaError(w, http.StatusNotFound, "model '"+name+"' not found")
		return
	}
	capabilities := []string{"completion", "tools", "thinking"}
	if embeddingOnly(model) {
		capabilities = []string{"embedding"}
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"license":    "",
		"modelfile":  "# Modelfile of a model simulated by simnode\nFROM " + ollamaFullName(model) + "\n",
		"parameters": "num_ctx " + strconv.Itoa(ollamaNumCtx),
		"template":   "{{ .Prompt }}",
		"details":    ollamaDetails(),
		"model_info": map[string]any{
			"general.architecture":    "sim",
			"general.parameter_count": 1_000_000_000,
			"sim.context_length":      ollamaContextLength,
			"sim.embedding_length":    EmbeddingDim,
		},
		"capabilities": capabilities,
		"modified_at":  time.Unix(n.created, 0).UTC(),
	})
}
